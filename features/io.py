"""Load and validate the three input tables (``contacts``, ``events``, ``stages``).

Two kinds of problems are told apart:

* **Table-level** problems stop the run with :class:`DataError`, whose message names
  the table, the column and the problem (never a personal value): a missing table or
  required column, an unreadable file or malformed CSV line, a required column empty
  in every row, a column whose values are mostly of the wrong type
  (``contacts.employees`` holding text, ``contacts.created_at`` holding numbers).
  "Mostly" means more than half of the non-missing values cannot be coerced; below
  that, the bad values are row-level problems.
* **Row-level** problems drop the row from its table and record it in
  ``Tables.rejects`` (``table, row, contact_id, reason``):

  ==================== ===========================================================
  reason               rows
  ==================== ===========================================================
  missing_contact_id   no ``contact_id`` (any table)
  invalid_timestamp    ``created_at`` / ``ts`` missing or not an ISO-8601 timestamp
  unknown_stage        ``stages.stage`` not one of :data:`schema.STAGES`
  ==================== ===========================================================

  A row gets one reason, the first in that order.

Values that are repaired rather than rejected, in rows that are kept:

* an unknown ``event_type`` becomes :data:`schema.OTHER_EVENT`; the original values are
  counted in ``Tables.unknown_event_types`` (``{original value: rows}``; a missing
  type is counted under ``"(missing)"``);
* an unparseable optional number becomes NaN and an unparseable ``do_not_email``
  becomes False. These rows are *not* rejects (nothing was dropped); they are counted
  in ``Tables.coercions`` (``table, column, problem, rows``), as are the unknown
  event types.

Coercion: ids and strings to the ``str`` dtype, stripped, ``""`` → missing (integral
float ids lose their ``.0``); numbers to float64; ``do_not_email`` to bool
(true/false/yes/no/y/n/t/f/1/0, any case; missing → False); timestamps to tz-naive
``datetime64[us]`` in UTC (strings parsed as ISO-8601, naive values taken as UTC,
tz-aware values converted to UTC); ``event_type`` and ``stage`` lower-cased. CSV cells
``NULL``, ``NaN``, ``N/A``, ``None`` ... are missing, but ``NA`` is not (Namibia).
Missing optional columns are added, all missing, so downstream code can rely on every
schema column being there; columns outside the schema are passed through untouched.

Each validated frame keeps the input's row number (0-based position in the table as
read; for a CSV file, line = row + 2) as its index, named ``row``, so later stages
(hygiene) can report rejects against the original rows.

A table larger than memory is read in slices (:func:`plan_slices`, :func:`read_slice`:
whole Parquet row groups, batch by batch) and validated batch by batch with
``validate_tables(..., checks=TableChecks(), row_offset=...)``: the rows, the row numbers and
the rejects are those of the whole table, and the table-level checks are counted across the
batches and decided once (:meth:`TableChecks.raise_errors`), with the whole table's message.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds
import pyarrow.parquet as pq

from features import schema
from features.schema import Kind, TableSchema

REJECT_COLUMNS: tuple[str, ...] = ("table", "row", "contact_id", "reason")
COERCION_COLUMNS: tuple[str, ...] = ("table", "column", "problem", "rows")

MISSING_CONTACT_ID = "missing_contact_id"
INVALID_TIMESTAMP = "invalid_timestamp"
UNKNOWN_STAGE = "unknown_stage"

# Row-level reject reasons of this module, in order of precedence (one reason per row).
_REASONS: tuple[str, ...] = ("", MISSING_CONTACT_ID, INVALID_TIMESTAMP, UNKNOWN_STAGE)
_REASON_CODES: dict[str, int] = {r: i for i, r in enumerate(_REASONS)}

MISSING_EVENT_TYPE = "(missing)"  # key in Tables.unknown_event_types for a missing type

#: Cell values read as missing in CSV files. "NA" is deliberately absent: it is
#: Namibia's ISO-2 country code.
CSV_NULL_VALUES: tuple[str, ...] = (
    "",
    "NULL",
    "null",
    "Null",
    "NaN",
    "nan",
    "N/A",
    "n/a",
    "#N/A",
    "None",
    "none",
)

_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})
_MAJORITY = 0.5  # more than this share of bad values makes it a table-level error
_MAX_KEY_LEN = 64
_STR_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas 3 "str"
_TS_DTYPE = "datetime64[us]"
_SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".csv.gz")


class DataError(ValueError):
    """Bad input that stops the run; message names table, column and problem."""


def empty_rejects() -> pd.DataFrame:
    """An empty rejects table with the right columns and dtypes."""
    return pd.DataFrame(
        {
            "table": pd.Series([], dtype=_STR_DTYPE),
            "row": pd.Series([], dtype="int64"),
            "contact_id": pd.Series([], dtype=_STR_DTYPE),
            "reason": pd.Series([], dtype=_STR_DTYPE),
        }
    )


def empty_coercions() -> pd.DataFrame:
    """An empty coercions report with the right columns and dtypes."""
    return pd.DataFrame(
        {
            "table": pd.Series([], dtype=_STR_DTYPE),
            "column": pd.Series([], dtype=_STR_DTYPE),
            "problem": pd.Series([], dtype=_STR_DTYPE),
            "rows": pd.Series([], dtype="int64"),
        }
    )


@dataclass
class Tables:
    """The three validated input tables and what validation set aside.

    Attributes
    ----------
    contacts, events, stages
        Validated frames, index = original row number (``row``).
    rejects
        Dropped rows: ``table, row, contact_id, reason`` (never emails, names, phones).
    unknown_event_types
        ``{original event_type: rows}`` of event types mapped to ``"other"``.
    coercions
        Values repaired in kept rows: ``table, column, problem, rows``.
    """

    contacts: pd.DataFrame
    events: pd.DataFrame
    stages: pd.DataFrame
    rejects: pd.DataFrame = field(default_factory=empty_rejects)
    unknown_event_types: dict[str, int] = field(default_factory=dict)
    coercions: pd.DataFrame = field(default_factory=empty_coercions)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_tables(data_dir: Path, *, columns: Mapping[str, Sequence[str]] | None = None) -> Tables:
    """Read ``contacts``, ``events`` and ``stages`` from a directory and validate them.

    Each table is ``<name>.parquet`` (a file or a directory of Parquet files),
    ``<name>.csv`` or ``<name>.csv.gz``; Parquet wins when several exist. Other files
    (e.g. ``truth``) are ignored.

    Parameters
    ----------
    data_dir
        The data directory.
    columns
        Optional ``{table: [column, ...]}``: read only these columns of that table
        (its required columns are always read). Tables not named are read whole.

    Returns
    -------
    Tables
        See :func:`validate_tables`.

    Raises
    ------
    DataError
        A table is missing or unreadable, or a column is missing or of the wrong type.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    columns = dict(columns or {})
    unknown = set(columns) - set(schema.TABLES)
    if unknown:
        raise DataError(f"columns= names unknown tables: {sorted(unknown)}")
    frames = {
        name: read_table(data_dir, spec, columns.get(name)) for name, spec in schema.TABLES.items()
    }
    tables = validate_tables(frames["contacts"], frames["events"], frames["stages"])
    for name, wanted in columns.items():
        keep = list(dict.fromkeys([*schema.TABLES[name].required, *wanted]))
        frame = getattr(tables, name)
        setattr(tables, name, frame[[c for c in keep if c in frame.columns]])
    return tables


def find_table(data_dir: Path, name: str) -> Path:
    """The file (or Parquet directory) holding table ``name``: Parquet wins over CSV.

    Raises
    ------
    DataError
        No ``<name>.parquet``, ``<name>.csv`` or ``<name>.csv.gz`` in ``data_dir``.
    """
    data_dir = Path(data_dir)
    for suffix in _SUFFIXES:
        path = data_dir / f"{name}{suffix}"
        if path.exists():
            return path
    expected = " or ".join(f"{name}{s}" for s in _SUFFIXES)
    raise DataError(f"{name}: table is missing: no {expected} in {data_dir}")


def read_table(
    data_dir: Path, spec: TableSchema, wanted: Sequence[str] | None = None
) -> pd.DataFrame:
    """One raw table, whole, as :func:`read_tables` hands it to validation (ids as text).

    ``wanted``: the columns to read besides the required ones (None: all).
    """
    path = find_table(data_dir, spec.name)
    try:
        if path.name.endswith(".parquet"):
            table = _read_parquet(path, spec, wanted)
        else:
            table = _read_csv(path, spec, wanted)
    except DataError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{spec.name}: cannot read {path.name}: {safe_reason(exc)}") from None
    return _ids_as_text(table, spec).to_pandas(split_blocks=True, self_destruct=True)


def _ids_as_text(table: pa.Table | pa.RecordBatch, spec: TableSchema) -> pa.Table:
    """Integer (or all-null) id and text columns as text in Arrow: exact, no float detour."""
    cols = {}
    for name, col in zip(table.schema.names, table.columns, strict=True):
        kind = spec.columns.get(name)
        if kind in ("id", "str") and (pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
            col = pc.cast(col, pa.large_string())
        cols[name] = col
    return pa.table(cols)


def _select(available: Sequence[str], spec: TableSchema, wanted: Sequence[str] | None) -> list[str]:
    if wanted is None:
        return list(available)
    missing = [c for c in wanted if c not in available and c not in spec.columns]
    if missing:
        raise DataError(f"{spec.name}: requested column {missing[0]!r} is missing")
    keep = set(spec.required) | set(wanted)
    return [c for c in available if c in keep]


def _read_parquet(path: Path, spec: TableSchema, wanted: Sequence[str] | None) -> pa.Table:
    dataset = pa_ds.dataset(path, format="parquet")
    cols = _select(dataset.schema.names, spec, wanted)
    return dataset.to_table(columns=cols)


def _read_csv(path: Path, spec: TableSchema, wanted: Sequence[str] | None) -> pa.Table:
    header = csv_header(path)
    if not header:
        raise DataError(f"{spec.name}: cannot read {path.name}: the file is empty (no header)")
    cols = _select(header, spec, wanted)
    convert = pa_csv.ConvertOptions(
        column_types={c: pa.large_string() for c in header},
        include_columns=cols,
        null_values=list(CSV_NULL_VALUES),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    bad_rows: list[pa_csv.InvalidRow] = []
    try:
        return pa_csv.read_csv(
            path,
            convert_options=convert,
            parse_options=_csv_parse_options(bad_rows),
        )
    except pa.ArrowInvalid as exc:
        raise _csv_error(path, spec.name, exc, bad_rows) from None


def _csv_parse_options(bad_rows: list[pa_csv.InvalidRow]) -> pa_csv.ParseOptions:
    """Parse options that record a row with the wrong number of fields (and fail on it):
    Arrow's own message for such a row quotes the whole row, personal data included."""

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    return pa_csv.ParseOptions(invalid_row_handler=on_invalid)


def _csv_error(
    path: Path, table: str, exc: BaseException, bad_rows: Sequence[pa_csv.InvalidRow]
) -> DataError:
    """A CSV parse error naming the file, the line and the field counts, never a value."""
    if not bad_rows:
        reason = _CSV_ROW_TEXT.sub(r"\1", safe_reason(exc))
        return DataError(f"{table}: cannot read {path.name}: {reason}")
    row = bad_rows[0]
    line = (
        row.number
        if row.number is not None and row.number >= 0
        else _first_bad_line(path, row.expected_columns)
    )
    where = f"line {line}" if line else "a row"
    return DataError(
        f"{table}: cannot read {path.name}: {where} has {row.actual_columns} "
        f"columns, the header {row.expected_columns}"
    )


#: Arrow's "Expected 13 columns, got 15: <the row's text>": the text after the counts is cut.
_CSV_ROW_TEXT = re.compile(r"(columns, got \d+)\s*:.*$")


def _open_text(path: Path) -> TextIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (plain or gzipped); ``[]`` for an empty file."""
    with _open_text(path) as handle:
        return next(csv.reader(handle), [])


def _first_bad_line(path: Path, expected: int) -> int | None:
    """Line number of the first record whose field count differs from the header's."""
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        for record in reader:
            if len(record) != expected:
                return reader.line_num
    return None


def safe_reason(exc: BaseException) -> str:
    """The first line of an I/O error, with quoted text (file names, cell values) removed."""
    if isinstance(exc, UnicodeDecodeError):
        return "the file is not valid UTF-8"
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", text)
    return text[:200]


# ---------------------------------------------------------------------------
# Reading in slices: tables larger than memory
# ---------------------------------------------------------------------------

#: Read buffer of a streamed Parquet file: a row group is decoded page by page, so reading a
#: slice holds about one batch, not a whole row group.
_STREAM_BUFFER = 1 << 20


def table_files(path: Path) -> list[Path]:
    """The data files of a table, in the order the loader concatenates them.

    A file is itself; a Parquet directory lists its files as :mod:`pyarrow.dataset` does
    (sorted paths, anything under a name starting with ``.`` or ``_`` skipped).
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    try:
        return [Path(f) for f in pa_ds.dataset(path, format="parquet").files]
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{_table_name(path)}: cannot read {path.name}: {safe_reason(exc)}") from None


def _table_name(path: Path) -> str:
    name = Path(path).name
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name


@dataclass(frozen=True)
class TableSlice:
    """Consecutive rows of one table: whole row groups of one Parquet file, or a whole CSV file.

    ``row_offset`` is the row number (as :func:`read_tables` counts them) of the slice's first
    row; ``rows`` is -1 when unknown before reading (CSV).
    """

    table: str
    index: int
    path: str
    kind: str  # "parquet" or "csv"
    row_groups: tuple[int, ...]
    row_offset: int
    rows: int


def plan_slices(path: Path, table: str, *, rows_per_slice: int) -> list[TableSlice]:
    """Split a table into slices of whole Parquet row groups, about ``rows_per_slice`` rows each
    (a larger row group is a slice of its own). A CSV file is one slice."""
    path = Path(path)
    if not path.name.endswith(".parquet"):
        return [TableSlice(table, 0, str(path), "csv", (), 0, -1)]
    slices: list[TableSlice] = []
    offset = 0
    for f in table_files(path):
        try:
            meta = pq.ParquetFile(f).metadata
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{table}: cannot read {f.name}: {safe_reason(exc)}") from None
        groups: list[int] = []
        start, rows = offset, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if groups and rows + n > rows_per_slice:
                slices.append(TableSlice(table, len(slices), str(f), "parquet", tuple(groups), start, rows))
                groups, start, rows = [], offset, 0
            groups.append(g)
            rows += n
            offset += n
        if groups:
            slices.append(TableSlice(table, len(slices), str(f), "parquet", tuple(groups), start, rows))
    return slices


def table_columns(path: Path, spec: TableSchema, wanted: Sequence[str] | None = None) -> list[str]:
    """The columns to read from a table's file(s): its required columns (which must be there,
    else :class:`DataError`) and those of ``wanted`` present (None: every column)."""
    path = Path(path)
    try:
        if path.name.endswith(".parquet"):
            files = table_files(path)
            names = pq.read_schema(files[0]).names if files else []
        else:
            names = csv_header(path)
            if not names:
                raise DataError(f"{spec.name}: cannot read {path.name}: the file is empty (no header)")
    except DataError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{spec.name}: cannot read {path.name}: {safe_reason(exc)}") from None
    for col in spec.required:
        if col not in names:
            raise DataError(f"{spec.name}: required column {col!r} is missing")
    if wanted is None:
        return list(names)
    keep = set(spec.required) | set(wanted)
    return [c for c in names if c in keep]


def read_slice(
    sl: TableSlice, columns: Sequence[str], *, batch_rows: int = 1 << 20
) -> Iterator[pd.DataFrame]:
    """The raw rows of a slice, batch by batch, as :func:`read_tables` hands a table to
    :func:`validate_tables` (ids as text). Holds about one batch in memory.

    Raises
    ------
    DataError
        The file cannot be read (the message names the table and the file, not the cause's
        quoted text).
    """
    spec = schema.TABLES[sl.table]
    name = Path(sl.path).name
    bad_rows: list[pa_csv.InvalidRow] = []  # a row with the wrong number of fields (CSV)
    try:
        if sl.kind == "parquet":
            f = pq.ParquetFile(sl.path, buffer_size=_STREAM_BUFFER, pre_buffer=False)
            batches = f.iter_batches(batch_size=batch_rows, row_groups=list(sl.row_groups),
                                     columns=list(columns), use_threads=False)
        else:
            header = csv_header(Path(sl.path))
            convert = pa_csv.ConvertOptions(
                column_types={c: pa.large_string() for c in header}, include_columns=list(columns),
                null_values=list(CSV_NULL_VALUES), strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            )
            batches = pa_csv.open_csv(sl.path, convert_options=convert,
                                      read_options=pa_csv.ReadOptions(block_size=64 << 20),
                                      parse_options=_csv_parse_options(bad_rows))
        for batch in batches:
            yield _ids_as_text(batch, spec).to_pandas()
    except DataError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as exc:
        if sl.kind == "csv" and isinstance(exc, pa.ArrowInvalid):
            raise _csv_error(Path(sl.path), sl.table, exc, bad_rows) from None
        raise DataError(f"{sl.table}: cannot read {name}: {safe_reason(exc)}") from None


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def validate_tables(
    contacts: pd.DataFrame,
    events: pd.DataFrame,
    stages: pd.DataFrame,
    *,
    checks: TableChecks | None = None,
    row_offset: int = 0,
) -> Tables:
    """Coerce the three tables to their schema and split off rejected rows.

    Pure: no I/O. Used by :func:`read_tables`, the HTTP service and batch rescoring.
    Events are not checked against contacts here (that is hygiene's job).

    Parameters
    ----------
    contacts, events, stages
        Raw frames. A frame with no rows and no columns counts as an empty table.
    checks
        For a table validated slice by slice (:func:`read_slice`): the table-level checks
        (a required column empty everywhere, a column mostly of the wrong type) are counted
        into ``checks`` instead of raising, to be decided once for the whole table by
        :meth:`TableChecks.raise_errors`. None: decided on these frames, raising here.
    row_offset
        Row number of the frames' first row (a slice's place in its table): the validated
        frames' index and the rejects count rows from it.

    Returns
    -------
    Tables
        Validated frames (index = original row number), rejects, unknown event
        types and coercions.

    Raises
    ------
    DataError
        A required column is missing or empty, or a column is mostly of the wrong type.

    Examples
    --------
    >>> import pandas as pd
    >>> t = validate_tables(
    ...     pd.DataFrame({"contact_id": [1], "created_at": ["2024-01-01"]}),
    ...     pd.DataFrame({"contact_id": ["1"], "ts": ["2024-01-02"], "event_type": ["visit"]}),
    ...     pd.DataFrame(),
    ... )
    >>> t.events["event_type"].tolist(), t.unknown_event_types
    (['other'], {'visit': 1})
    """
    rejects: list[pd.DataFrame] = []
    coercions: list[tuple[str, str, str, int]] = []
    out: dict[str, pd.DataFrame] = {}
    unknown_types: dict[str, int] = {}
    for spec, raw in (
        (schema.CONTACTS, contacts),
        (schema.EVENTS, events),
        (schema.STAGE_CHANGES, stages),
    ):
        check: _Check = _Deferred(checks, row_offset) if checks is not None else _Immediate()
        frame, reasons = _coerce_table(raw, spec, coercions, check, row_offset)
        if spec is schema.EVENTS:
            frame, unknown_types = _map_event_types(frame, reasons)
            if unknown_types:
                coercions.append(
                    ("events", "event_type", "unknown_mapped_to_other", sum(unknown_types.values()))
                )
        if spec is schema.STAGE_CHANGES:
            stage = frame["stage"].str.lower()
            frame = frame.assign(stage=stage)
            bad = ~stage.isin(schema.STAGES).to_numpy() & (reasons == 0)
            reasons[bad] = _REASON_CODES[UNKNOWN_STAGE]
        frame, rej = _split_rejects(frame, reasons, spec.name)
        out[spec.name] = frame
        rejects.append(rej)
    return Tables(
        contacts=out["contacts"],
        events=out["events"],
        stages=out["stages"],
        rejects=concat_rejects(rejects),
        unknown_event_types=unknown_types,
        coercions=_coercion_frame(coercions),
    )


def concat_rejects(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate rejects tables, keeping the columns and dtypes of an empty one."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_rejects()
    out = pd.concat(parts, ignore_index=True)[list(REJECT_COLUMNS)]
    return out.astype(
        {"table": _STR_DTYPE, "row": "int64", "contact_id": _STR_DTYPE, "reason": _STR_DTYPE}
    )


def rejects_summary(rejects: pd.DataFrame) -> pd.DataFrame:
    """Count rejected rows by table and reason.

    Parameters
    ----------
    rejects
        A rejects table (``table, row, contact_id, reason``).

    Returns
    -------
    pd.DataFrame
        ``table, reason, rows``, tables in schema order, most frequent reason first.
    """
    if rejects.empty:
        return pd.DataFrame(
            {
                "table": pd.Series([], dtype=_STR_DTYPE),
                "reason": pd.Series([], dtype=_STR_DTYPE),
                "rows": pd.Series([], dtype="int64"),
            }
        )
    counts = rejects.groupby(["table", "reason"], sort=False).size().rename("rows").reset_index()
    order = {name: i for i, name in enumerate(schema.TABLES)}
    counts["_order"] = counts["table"].map(order).fillna(len(order))
    counts = counts.sort_values(["_order", "rows", "reason"], ascending=[True, False, True])
    return counts.drop(columns="_order").reset_index(drop=True).astype({"rows": "int64"})


def _coercion_frame(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    if not rows:
        return empty_coercions()
    out = pd.DataFrame(rows, columns=list(COERCION_COLUMNS))
    return out.astype(
        {"table": _STR_DTYPE, "column": _STR_DTYPE, "problem": _STR_DTYPE, "rows": "int64"}
    )


def _coerce_table(
    raw: pd.DataFrame,
    spec: TableSchema,
    coercions: list[tuple[str, str, str, int]],
    check: _Check,
    row_offset: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Coerce every schema column; return the frame and per-row reject codes (0 = keep)."""
    if not isinstance(raw, pd.DataFrame):
        raise DataError(f"{spec.name}: expected a table (DataFrame), got {type(raw).__name__}")
    n = len(raw)
    if n == 0 and len(raw.columns) == 0:
        raw = pd.DataFrame({c: [] for c in spec.columns})
    for col in spec.required:
        if col not in raw.columns:
            raise DataError(f"{spec.name}: required column {col!r} is missing")
    dup = raw.columns[raw.columns.duplicated()]
    if len(dup):
        raise DataError(f"{spec.name}: column {str(dup[0])!r} appears more than once")
    raw = raw.set_axis(pd.RangeIndex(row_offset, row_offset + n, name="row"), axis=0)
    reasons = np.zeros(n, dtype=np.int8)  # 0 = keep, else _REASON_CODES
    data: dict[str, pd.Series] = {}
    for col in raw.columns:
        kind = spec.columns.get(col)
        if kind is None:
            data[col] = raw[col]  # pass-through
            continue
        values, bad = _coerce_column(raw[col], kind, spec.name, col, check)
        if col in spec.required:
            missing = values.isna().to_numpy()
            check.required(spec.name, col, int(missing.sum()), n)
            # missing event_type / stage are handled by their own rules (other, unknown_stage)
            reason = {"id": MISSING_CONTACT_ID, "timestamp": INVALID_TIMESTAMP}.get(kind)
            if reason is not None:
                reasons[missing & (reasons == 0)] = _REASON_CODES[reason]
        elif bad.any():
            problem = {
                "float": "unparseable_number",
                "int": "unparseable_number",
                "bool": "unparseable_bool",
            }.get(kind, "unparseable_value")
            coercions.append((spec.name, col, problem, int(bad.sum())))
        data[col] = values
    for col, kind in spec.optional.items():
        if col not in data:
            data[col] = _all_missing(kind, n).set_axis(raw.index)
    order = [c for c in spec.columns] + [c for c in raw.columns if c not in spec.columns]
    frame = pd.DataFrame({c: data[c] for c in order}, index=raw.index)
    return frame, reasons


def _split_rejects(
    frame: pd.DataFrame, reasons: np.ndarray, table: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    drop = reasons != 0
    if not drop.any():
        return frame, empty_rejects()
    rej = make_rejects(frame, drop, table, np.array(_REASONS, dtype=object)[reasons[drop]])
    return filter_rows(frame, ~drop), rej


def make_rejects(
    frame: pd.DataFrame, drop: np.ndarray, table: str, reasons: np.ndarray | str
) -> pd.DataFrame:
    """Rejects rows (``table, row, contact_id, reason``) for ``frame``'s rows where ``drop``.

    ``row`` is ``frame``'s index (the original row number); nothing else is copied.
    """
    idx = np.flatnonzero(drop)
    return pd.DataFrame(
        {
            "table": pd.Series(np.full(len(idx), table, dtype=object), dtype=_STR_DTYPE),
            "row": frame.index.to_numpy()[idx].astype("int64"),
            "contact_id": frame["contact_id"].iloc[idx].astype(_STR_DTYPE).reset_index(drop=True),
            "reason": pd.Series(
                np.broadcast_to(np.asarray(reasons, dtype=object), len(idx)), dtype=_STR_DTYPE
            ),
        }
    )


def filter_rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``frame[keep]`` for a boolean mask, column by column.

    Arrow-backed columns are filtered by Arrow (pandas would gather them by index, ~10x
    slower on tens of millions of strings), NumPy columns by NumPy.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return frame
    mask = pa.array(keep)
    data = {}
    for name, col in frame.items():
        if isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "pyarrow":
            data[name] = _str_series(_arrow(col).filter(mask), pd.RangeIndex(int(keep.sum())))
        elif isinstance(col.dtype, np.dtype):
            data[name] = col.to_numpy()[keep]
        else:
            data[name] = col[keep].reset_index(drop=True)
    index = frame.index[keep]
    out = pd.DataFrame(data, index=pd.RangeIndex(len(index)), columns=frame.columns)
    return out.set_axis(index)


def _map_event_types(
    frame: pd.DataFrame, reasons: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Lower-case event types; unknown ones become "other", counted over kept rows.

    One dictionary encoding (a hash pass) of the column; the mapping itself works on the
    distinct values.
    """
    known = frozenset(schema.ENGAGEMENT_TYPES)
    encoded = pc.dictionary_encode(_arrow(frame["event_type"]).combine_chunks(),
                                   null_encoding="encode")
    values = encoded.dictionary.to_pylist()
    if all(v in known for v in values):
        return frame, {}
    lowered = [None if v is None else v.lower() for v in values]
    mapped = [v if v in known else schema.OTHER_EVENT for v in lowered]
    unknown_value = np.array([v not in known for v in lowered], dtype=bool)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp)
    rows = unknown_value[codes] & (reasons == 0)
    per_value = np.bincount(codes[rows], minlength=len(values))
    unknown = {
        (MISSING_EVENT_TYPE if values[i] is None else values[i][:_MAX_KEY_LEN]): int(per_value[i])
        for i in np.argsort(-per_value, kind="stable")
        if per_value[i] > 0
    }
    new = pa.array(mapped, type=pa.large_string()).take(encoded.indices)
    return frame.assign(event_type=_str_series(new, frame.index)), unknown


# ---------------------------------------------------------------------------
# Column coercion
# ---------------------------------------------------------------------------


def _all_missing(kind: Kind, n: int) -> pd.Series:
    if kind in ("id", "str"):
        return _str_series(pa.nulls(n, pa.large_string()), pd.RangeIndex(n))
    if kind == "timestamp":
        return pd.Series(np.full(n, np.datetime64("NaT"), dtype=_TS_DTYPE))
    if kind == "bool":
        return pd.Series(np.zeros(n, dtype=bool))
    return pd.Series(np.full(n, np.nan))


def _coerce_column(
    s: pd.Series, kind: Kind, table: str, col: str, check: _Check | None = None
) -> tuple[pd.Series, np.ndarray]:
    """Coerce one column; return values and a mask of present-but-unparseable cells."""
    check = check if check is not None else _Immediate()
    if kind in ("id", "str"):
        text = to_text(s)
        return text, np.zeros(len(s), dtype=bool)
    if kind == "timestamp":
        return _to_timestamp(s, table, col, check)
    if kind == "bool":
        return _to_bool(s, table, col, check)
    return _to_float(s, table, col, check)


# ---------------------------------------------------------------------------
# Table-level checks: at once, or counted slice by slice and decided at the end
# ---------------------------------------------------------------------------

_GOT = {"a number": "text", "true/false": "other values"}


def _majority_message(
    table: str, col: str, expected: str, bad: int, present: int, numeric: int, first: int
) -> str | None:
    """The error when more than half of the present values are bad, else None.

    ``numeric``: how many of the bad values are numbers (decides what timestamps "got").
    """
    if not present or bad / present <= _MAJORITY:
        return None
    got = _GOT.get(expected) or (
        "a number" if numeric / bad > _MAJORITY else "text that is not an ISO-8601 timestamp"
    )
    pct = f"{100 * bad / present:.0f}%"
    return f"{table}.{col}: expected {expected}, got {got} in {pct} of rows (e.g. row {first})"


def _required_message(table: str, col: str, missing: int, n: int) -> str | None:
    if n and missing == n:
        return f"{table}.{col}: required column is empty in all {n} rows"
    return None


class _Check:
    """Where a column's table-level facts go: :class:`_Immediate` or :class:`_Deferred`."""

    def majority(
        self, table: str, col: str, expected: str, bad: np.ndarray, present: int, numeric: int
    ) -> None:
        raise NotImplementedError

    def required(self, table: str, col: str, missing: int, n: int) -> None:
        raise NotImplementedError


class _Immediate(_Check):
    """Whole-table validation: raise at once."""

    def majority(
        self, table: str, col: str, expected: str, bad: np.ndarray, present: int, numeric: int
    ) -> None:
        n_bad = int(bad.sum())
        if n_bad:
            first = int(np.flatnonzero(bad)[0])
            msg = _majority_message(table, col, expected, n_bad, present, numeric, first)
            if msg:
                raise DataError(msg)

    def required(self, table: str, col: str, missing: int, n: int) -> None:
        msg = _required_message(table, col, missing, n)
        if msg:
            raise DataError(msg)


class _Deferred(_Check):
    """A slice of a table: count into a :class:`TableChecks`."""

    def __init__(self, checks: TableChecks, row_offset: int) -> None:
        self.checks, self.row_offset = checks, row_offset

    def majority(
        self, table: str, col: str, expected: str, bad: np.ndarray, present: int, numeric: int
    ) -> None:
        t = self.checks.tally(table, col, "majority", expected)
        n_bad = int(bad.sum())
        if n_bad and t["first"] < 0:
            t["first"] = self.row_offset + int(np.flatnonzero(bad)[0])
        t["bad"] += n_bad
        t["present"] += int(present)
        t["numeric"] += int(numeric)

    def required(self, table: str, col: str, missing: int, n: int) -> None:
        t = self.checks.tally(table, col, "required")
        t["bad"] += int(missing)
        t["present"] += int(n)


class TableChecks:
    """Table-level checks of tables validated slice by slice, decided once per table.

    :func:`validate_tables` (``checks=``) counts, for each column, its unparseable and present
    values and the first bad row; :meth:`raise_errors` then raises the :class:`DataError` that
    validating each table whole would have raised (same message, same row). Tallies of slices
    validated in other processes are combined with :meth:`update` (``to_dict`` is JSON).
    """

    def __init__(self, tallies: dict[str, dict] | None = None) -> None:
        self.tallies: dict[str, dict] = dict(tallies or {})

    def tally(self, table: str, col: str, what: str, expected: str = "") -> dict:
        key = f"{table}.{col}.{what}"
        t = self.tallies.get(key)
        if t is None:
            t = self.tallies[key] = {"table": table, "column": col, "what": what,
                                     "expected": expected, "bad": 0, "present": 0,
                                     "numeric": 0, "first": -1}
        return t

    def update(self, other: TableChecks | dict) -> None:
        """Add another slice's counts (a :class:`TableChecks` or its ``to_dict()``)."""
        tallies = other.tallies if isinstance(other, TableChecks) else other
        for t in tallies.values():
            mine = self.tally(t["table"], t["column"], t["what"], t["expected"])
            for k in ("bad", "present", "numeric"):
                mine[k] += t[k]
            if t["first"] >= 0 and (mine["first"] < 0 or t["first"] < mine["first"]):
                mine["first"] = t["first"]

    def to_dict(self) -> dict[str, dict]:
        return {k: dict(v) for k, v in self.tallies.items()}

    def errors(self) -> list[str]:
        """Messages of the failed checks: tables in schema order, columns in reading order."""
        order = {name: i for i, name in enumerate(schema.TABLES)}
        out = []
        for t in sorted(self.tallies.values(), key=lambda t: order.get(t["table"], len(order))):
            if t["what"] == "required":
                msg = _required_message(t["table"], t["column"], t["bad"], t["present"])
            else:
                msg = _majority_message(t["table"], t["column"], t["expected"], t["bad"],
                                        t["present"], t["numeric"], t["first"])
            if msg:
                out.append(msg)
        return out

    def raise_errors(self) -> None:
        """Raise the first failed check as :class:`DataError` (nothing when all pass)."""
        errors = self.errors()
        if errors:
            raise DataError(errors[0])


def to_text(s: pd.Series) -> pd.Series:
    """Any column as ``str`` dtype: stripped, ``""`` → missing, integral floats without ``.0``.

    Vectorised (Arrow) for string, integer and float columns; object columns are
    converted value by value.

    Examples
    --------
    >>> import pandas as pd
    >>> to_text(pd.Series([" a ", "", None, 3.0], dtype=object)).tolist()
    ['a', nan, nan, '3']
    """
    index = s.index
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":
        arr = _arrow(s)
    elif pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype="float64", na_value=np.nan)
        finite = np.isfinite(v)
        if np.all(v[finite] == np.round(v[finite])) and np.all(np.abs(v[finite]) < 2**53):
            arr = pc.cast(
                pa.array(v, mask=~finite, type=pa.float64()).cast(pa.int64()), pa.large_string()
            )
        else:
            arr = pc.cast(pa.array(v, mask=np.isnan(v)), pa.large_string())
    elif pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        arr = pc.cast(pa.array(s), pa.large_string())
    else:
        obj = s.astype(object)
        values = [
            None
            if _isna_scalar(v)
            else (
                _num_text(v)
                if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                else str(v)
            )
            for v in obj
        ]
        arr = pa.array(values, type=pa.large_string())
    arr = pc.utf8_trim_whitespace(arr)
    blank = pc.equal(arr, "")
    if pc.any(blank).as_py():
        arr = pc.if_else(blank, pa.scalar(None, pa.large_string()), arr)
    return _str_series(arr, index, s.name)


def _arrow(s: pd.Series) -> pa.ChunkedArray:
    """The Arrow data behind a pyarrow-backed ``str`` Series (no copy)."""
    arr = pa.array(s.array)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr], type=arr.type)


def _str_series(arr: pa.Array | pa.ChunkedArray, index: pd.Index, name: object = None) -> pd.Series:
    """Wrap an Arrow string array as a pandas ``str`` Series without copying."""
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], type=arr.type)
    out = arr.to_pandas()  # pandas 3 maps Arrow strings to "str" without copying
    if out.dtype != _STR_DTYPE:
        out = out.astype(_STR_DTYPE)
    return out.set_axis(index).rename(name)


def _isna_scalar(v: object) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _num_text(v: float) -> str:
    f = float(v)
    if np.isfinite(f) and f == round(f) and abs(f) < 2**53:
        return str(int(f))
    return str(v)


def _to_timestamp(
    s: pd.Series, table: str, col: str, check: _Check
) -> tuple[pd.Series, np.ndarray]:
    index, n = s.index, len(s)
    dtype = s.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC").dt.tz_localize(None).astype(_TS_DTYPE)
        return out, np.zeros(n, dtype=bool)
    if pd.api.types.is_datetime64_dtype(dtype):
        return s.astype(_TS_DTYPE), np.zeros(n, dtype=bool)
    if not isinstance(dtype, pd.StringDtype) and (
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    ):
        present = s.notna().to_numpy()
        n_present = int(present.sum())
        check.majority(table, col, "a timestamp", present, n_present, n_present)
        return _all_missing("timestamp", n).set_axis(index), np.zeros(n, dtype=bool)
    if isinstance(dtype, pd.StringDtype) or pd.api.types.infer_dtype(s) in ("string", "empty"):
        text = to_text(s)
        out = _parse_iso_strings(text)
        present = text.notna().to_numpy()
        bad = present & out.isna().to_numpy()
        numeric = pd.to_numeric(text[bad], errors="coerce").notna().to_numpy()
    else:  # object or category holding datetimes, strings, numbers, ...
        cleaned, present_l, numeric_l = [], [], []
        for v in s.astype(object):
            if isinstance(v, str):
                v = v.strip() or None
            kind = "missing" if v is None or _isna_scalar(v) else _scalar_kind(v)
            cleaned.append(v if kind == "keep" else None)
            present_l.append(kind != "missing")
            numeric_l.append(kind == "number")
        parsed = pd.to_datetime(
            pd.Series(cleaned, index=index, dtype=object),
            format="ISO8601",
            utc=True,
            errors="coerce",
        )
        out = parsed.dt.tz_localize(None).astype(_TS_DTYPE)
        present = np.array(present_l, dtype=bool)
        bad = present & out.isna().to_numpy()
        numeric = np.array(numeric_l, dtype=bool)[bad]
    check.majority(table, col, "a timestamp", bad, int(present.sum()), int(numeric.sum()))
    return out.rename(s.name), bad


def _scalar_kind(v: object) -> str:
    if isinstance(v, bool):
        return "other"
    if isinstance(v, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(v, (str, pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat"):
        return "keep"
    return "other"


def _parse_iso_strings(s: pd.Series) -> pd.Series:
    """ISO-8601 strings → naive UTC ``datetime64[us]``; NaT when unparseable.

    Arrow parses uniform columns fast; mixed or partly bad columns fall back to pandas.
    """
    arr = _arrow(s)
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            parsed = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if target.tz is not None:
            parsed = parsed.cast(pa.timestamp("us"))  # UTC wall time, tz dropped
        return pd.Series(parsed.to_numpy(), index=s.index).astype(_TS_DTYPE)
    out = pd.to_datetime(s, format="ISO8601", utc=True, errors="coerce")
    return out.dt.tz_localize(None).astype(_TS_DTYPE)


def _to_float(s: pd.Series, table: str, col: str, check: _Check) -> tuple[pd.Series, np.ndarray]:
    n = len(s)
    if pd.api.types.is_bool_dtype(s.dtype) or (
        pd.api.types.is_numeric_dtype(s.dtype) and not isinstance(s.dtype, pd.StringDtype)
    ):
        v = s.to_numpy(dtype="float64", na_value=np.nan, copy=True)
        bad = np.isinf(v)
        v[bad] = np.nan
        return pd.Series(v, index=s.index, name=s.name), bad
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        present = int(s.notna().sum())
        if present:
            raise DataError(f"{table}.{col}: expected a number, got timestamps")
        return pd.Series(np.full(n, np.nan), index=s.index, name=s.name), np.zeros(n, bool)
    text = to_text(s)
    v = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan, copy=True)
    v[np.isinf(v)] = np.nan
    present_mask = text.notna().to_numpy()
    bad = present_mask & np.isnan(v)
    check.majority(table, col, "a number", bad, int(present_mask.sum()), 0)
    return pd.Series(v, index=s.index, name=s.name), bad


def _to_bool(s: pd.Series, table: str, col: str, check: _Check) -> tuple[pd.Series, np.ndarray]:
    n = len(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        v = s.to_numpy(dtype=bool, na_value=False)
        return pd.Series(v, index=s.index, name=s.name), np.zeros(n, dtype=bool)
    text = to_text(s).str.lower()
    present = text.notna().to_numpy()
    true = text.isin(_TRUE).to_numpy()
    false = text.isin(_FALSE).to_numpy()
    bad = present & ~true & ~false
    check.majority(table, col, "true/false", bad, int(present.sum()), 0)
    return pd.Series(true, index=s.index, name=s.name), bad


# ---------------------------------------------------------------------------
# Atomic writes: a reader sees the whole file or none of it
# ---------------------------------------------------------------------------


def tmp_name(path: Path) -> Path:
    # unique per process: an orphaned worker of a killed run may still be finishing a chunk
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = tmp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: Path, **kwargs: Any) -> None:
    tmp = tmp_name(path)
    pq.write_table(table, tmp, **kwargs)
    fsync_path(tmp)
    os.replace(tmp, path)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

