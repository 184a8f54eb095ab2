"""Batch rescoring of the whole contact base: ``leadscore score``.

Every night operations rescore every eligible contact (created by the as-of date, not
converted, not disqualified: :meth:`features.build.Snapshotter.features_at`) with the
champion model, or the rule scorer when there is none, exactly as the HTTP service does
(:func:`training.registry.load_scorer`).

How a run goes (``engine="local"``)
-----------------------------------
1. **Link the base** from its key columns only: ``contact_id``, ``created_at`` and ``email``
   of every contact, in batches (emails normalised batch by batch), and the stage changes'
   timestamps for the data's end. :func:`features.hygiene.canonical_rows` links duplicates
   (same id or same valid email, transitively) exactly as :func:`~features.hygiene.clean`
   does, and every contact row gets the **bucket** of its canonical contact (a stable hash of
   the canonical id: ``n_buckets = ceil(contacts / chunk_size)``; a bucket is a chunk of
   work). This runs in a child process whose memory is returned before the next steps: the
   key columns and their links, about 0.2 GB per million contacts (the step's peak, libraries
   included: 0.6 GB for 1M contacts, 1.2 GB for 4M), never the contact rows.
2. **Every table is read in slices** (whole Parquet row groups; a CSV file is one slice),
   batch by batch, by a pool of processes: each batch is validated with the loader's own
   :func:`~features.io.validate_tables` (its table-level checks counted across slices and
   decided once, as for the whole table), then contacts take their bucket from step 1, events
   and stage changes are attached to their contact with hygiene's rule (unknown contact /
   future timestamp -> rejects, duplicates -> canonical id); every slice writes one
   temporary Parquet file per bucket. A chunk then reads only its own rows: memory is
   bounded by the slice and chunk sizes, not by the size of the base.
3. **Chunks are cleaned**: a bucket holds every duplicate of its contacts, so
   :func:`~features.hygiene.clean_contacts` (merging duplicates' values, email quality,
   phone validity) gives, chunk by chunk, exactly the contacts hygiene gives on the whole base.
4. **Chunks are scored** by a pool of processes (LightGBM with one thread each: two
   processes on two cores beat one process with two threads, since feature building and
   Parquet I/O are single-threaded). Each chunk builds its point-in-time features with
   :class:`~features.build.Snapshotter` (the code path of training and of the service)
   and scores them; the result is committed atomically (write to ``*.tmp``, rename).
5. **Assembly**: the chunk files are concatenated in bucket order into a temporary file
   next to ``out``, which is renamed into place only when complete. The rejects file and
   the movers file (``--previous``) are written first; the output's rename is the commit.

The Spark engine (:mod:`serving.spark_engine`) runs the same steps with the slices and the
chunks as Spark tasks (:func:`execute` with another :data:`Runner`).

Nothing lost, nothing doubled
-----------------------------
The work lives in ``.<out name>.work/`` next to the output (same file system, so the
final rename is atomic). Its ``manifest.json`` records the inputs (path, size, mtime of
every file), the resolved as-of date, the run's ``scored_at``, the exact model version
(``models:/lead-scoring/7``, not the alias: the champion may move overnight), the chunking
and the reasons mode. ``--resume`` after a crash or a SIGKILL checks the manifest against
the current inputs and options, keeps what was committed (step 1, every slice of step 2,
every chunk) and redoes the rest. Slices and chunks are pure functions of the inputs, so the
final output is byte-for-byte the same as an uninterrupted run's. Without ``--resume`` an
interrupted run's work directory is an error (``--overwrite`` starts again); an existing
output is never replaced without ``--overwrite``; a lock file stops two runs on the same
output.

Outputs
-------
``out`` (Parquet): :data:`OUTPUT_SCHEMA`, i.e. the design brief's columns plus ``as_of``,
one row per eligible contact, ordered by bucket and then by the contact's row in the
input. ``reasons`` is a **JSON string** (``[{"feature", "value", "effect"}, ...]``,
the format of the MLflow pyfunc flavour): ``value`` is a number, a string or null, which a
Parquet struct cannot hold without turning everything into text, and every engine reads
JSON (Spark ``from_json``, DuckDB ``json_extract``, ``json.loads``). It is null where
reasons were not computed: with ``reasons="top"`` (default) only bands A and B get them
(LightGBM's ``pred_contrib`` costs about ten predictions per row; the benchmark measures
it), ``"all"`` for every row, ``"none"`` for none.

``<stem>.rejects.parquet``: every row that could not be scored, ``table, row, contact_id,
reason`` (the loader's and hygiene's reasons, plus ``not_scorable`` for a contact whose
probability came out non-finite), counted in the summary.

``<stem>.movers.parquet`` (with ``previous``): contacts whose band changed since the
previous scores, ``up`` (``into_a`` first: sales call them today) then ``down``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import schema
from features.build import Snapshotter
from features.config import FeatureConfig
from features.io import (
    DataError,
    TableChecks,
    TableSlice,
    concat_rejects,
    empty_rejects,
    find_table,
    make_rejects,
    plan_slices,
    read_slice,
    safe_reason,
    table_columns,
    table_files,
    validate_tables,
)
from features.loading import data_end

log = logging.getLogger(__name__)

REASON_MODES: tuple[str, ...] = ("top", "all", "none")
TOP_BANDS: tuple[str, ...] = ("A", "B")
NOT_SCORABLE = "not_scorable"
MANIFEST_VERSION = 2  # 2: work directory of the sliced preparation
EVENT_COLUMNS: tuple[str, ...] = ("contact_id", "ts", "event_type", "campaign_id")
STAGE_COLUMNS: tuple[str, ...] = ("contact_id", "ts", "stage")
CONTACT_COLUMNS: tuple[str, ...] = (*schema.CONTACTS.columns, "email_quality", "has_phone")
_BAND_RANK = {b: i for i, b in enumerate(schema.BANDS)}  # A=0 best
# step 2 reads each table in slices of whole row groups (about this many rows; a slice holds its
# rows of every bucket until it writes them) and a slice in batches of this many rows
_SLICE_ROWS = {"contacts": 1_000_000, "events": 4_000_000, "stages": 4_000_000}
_SLICE_BATCH_ROWS = {"contacts": 1 << 18, "events": 1 << 20, "stages": 1 << 20}
_KEY_BATCH_ROWS = 1 << 20  # step 1: rows of key columns per batch
_TASK_DIRS = "t[0-9][0-9][0-9][0-9][0-9]"  # committed slice directories (not *.tmp)
_STR = pd.StringDtype("pyarrow", na_value=np.nan)

OUTPUT_SCHEMA = pa.schema(
    [
        ("contact_id", pa.string()),
        ("probability", pa.float64()),
        ("score", pa.int64()),
        ("band", pa.string()),
        ("reasons", pa.string()),
        ("scorer", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("scored_at", pa.timestamp("us")),
        ("as_of", pa.timestamp("us")),
    ]
)
_ARROW_TYPES = {"id": pa.large_string(), "str": pa.large_string(), "float": pa.float64(),
                "int": pa.float64(), "bool": pa.bool_(), "timestamp": pa.timestamp("us")}
EVENT_FILE_SCHEMA = pa.schema([("contact_id", pa.large_string()), ("ts", pa.timestamp("us")),
                               ("event_type", pa.large_string()), ("campaign_id", pa.large_string())])
STAGE_FILE_SCHEMA = pa.schema([("contact_id", pa.large_string()), ("ts", pa.timestamp("us")),
                               ("stage", pa.large_string())])
#: a contacts slice: every valid row (duplicates too), validated, with its input row
CONTACT_SLICE_SCHEMA = pa.schema([(c, _ARROW_TYPES[k]) for c, k in schema.CONTACTS.columns.items()]
                                 + [("row", pa.int64())])
#: a chunk's clean contacts, as the feature code gets them
CHUNK_CONTACT_SCHEMA = pa.schema([*CONTACT_SLICE_SCHEMA.remove(len(CONTACT_SLICE_SCHEMA) - 1),
                                  ("email_quality", pa.large_string()), ("has_phone", pa.int8()),
                                  ("row", pa.int64())])
SLICE_SCHEMAS: dict[str, pa.Schema] = {"contacts": CONTACT_SLICE_SCHEMA, "events": EVENT_FILE_SCHEMA,
                                       "stages": STAGE_FILE_SCHEMA}
SLICE_COLUMNS: dict[str, tuple[str, ...]] = {"contacts": tuple(schema.CONTACTS.columns),
                                             "events": EVENT_COLUMNS, "stages": STAGE_COLUMNS}
REJECT_SCHEMA = pa.schema(
    [("table", pa.string()), ("row", pa.int64()), ("contact_id", pa.string()), ("reason", pa.string())]
)
MOVER_COLUMNS: tuple[str, ...] = (
    "contact_id", "direction", "into_a", "band_before", "band_after",
    "score_before", "score_after", "probability_before", "probability_after",
)


# ---------------------------------------------------------------------------
# Options and summary
# ---------------------------------------------------------------------------


@dataclass
class BatchOptions:
    """What ``leadscore score`` was asked to do (the CLI's options, unchanged)."""

    data: Path | None
    table: Path | None
    out: Path
    as_of: str | None = None
    model_uri: str | None = None
    engine: str = "local"
    master: str | None = None
    resume: bool = False
    overwrite: bool = False
    previous: Path | None = None
    chunk_size: int = 50_000
    reasons: str = "top"


@dataclass
class BatchSummary:
    """What a run did, for the console and for tests."""

    out: Path
    rejects_path: Path
    movers_path: Path | None
    engine: str
    scorer: dict[str, Any]
    as_of: pd.Timestamp
    scored_at: pd.Timestamp
    contacts_read: int = 0
    contacts: int = 0  # after deduplication
    eligible: int = 0
    not_eligible: dict[str, int] = field(default_factory=dict)
    bands: dict[str, int] = field(default_factory=dict)
    scorers: dict[str, int] = field(default_factory=dict)
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["table", "reason", "rows"]))
    unknown_event_types: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    chunks_resumed: int = 0
    fallback_chunks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    previous: dict[str, Any] | None = None

    @property
    def rejected(self) -> int:
        return int(self.rejects["rows"].sum()) if len(self.rejects) else 0

    @property
    def rows_per_second(self) -> float:
        total = self.seconds.get("total", 0.0)
        return self.contacts / total if total else float("nan")

    def print(self, console: Any) -> None:
        """Print the summary (rich console)."""
        from rich.table import Table

        s = self.scorer
        who = (f"model {s.get('name')} v{s.get('version')}" if s.get("scorer") == "model"
               else f"[yellow]rule scorer[/] ({s.get('reason', 'no model')})")
        console.print(f"scored {self.eligible:,} eligible contacts of {self.contacts:,} "
                      f"(read {self.contacts_read:,}) at {self.as_of.date()} with {who} "
                      f"[{self.engine} engine, {self.chunks} chunks"
                      + (f", {self.chunks_resumed} resumed" if self.chunks_resumed else "")
                      + f", {self.seconds.get('total', 0):.1f} s]")
        if self.fallback_chunks:
            console.print(f"[bold yellow]warning:[/] the model failed on {self.fallback_chunks} "
                          "chunk(s); they were scored by the rule scorer (column scorer='rules')")
        if self.not_eligible:
            console.print("not scored (not eligible): " + ", ".join(
                f"{k.replace('_', ' ')} {v:,}" for k, v in self.not_eligible.items() if v))
        table = Table(title="bands")
        table.add_column("band")
        table.add_column("contacts", justify="right")
        if self.previous:
            table.add_column("previous", justify="right")
        for b in schema.BANDS:
            row = [b, f"{self.bands.get(b, 0):,}"]
            if self.previous:
                row.append(f"{self.previous['bands_before'].get(b, 0):,}")
            table.add_row(*row)
        console.print(table)
        if self.previous:
            p = self.previous
            console.print(
                f"since previous: [bold green]{p['into_a']:,} moved up into A[/] "
                f"({p['up']:,} up in all, {p['down']:,} down, {p['new']:,} new, "
                f"{p['gone']:,} no longer scored) -> {self.movers_path}")
        if self.rejected:
            console.print(f"[yellow]{self.rejected:,} rows rejected[/] -> {self.rejects_path}")
            rej = Table()
            for c in ("table", "reason", "rows"):
                rej.add_column(c, justify="right" if c == "rows" else "left")
            for r in self.rejects.itertuples(index=False):
                rej.add_row(str(r.table), str(r.reason), f"{int(r.rows):,}")
            console.print(rej)
        if self.unknown_event_types:
            top = ", ".join(f"{k} ({v:,})" for k, v in list(self.unknown_event_types.items())[:5])
            console.print(f"unknown event types counted as 'other': {top}")
        if self.seconds:
            console.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
                          highlight=False)
        console.print(f"scores -> {self.out}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejects"] = self.rejects.to_dict("records")
        for k in ("out", "rejects_path", "movers_path", "as_of", "scored_at"):
            d[k] = None if d[k] is None else str(d[k])
        return d


# ---------------------------------------------------------------------------
# Pure logic: buckets, one chunk, movers
# ---------------------------------------------------------------------------


def bucket_of(contact_ids: Sequence[str] | np.ndarray | pd.Series, n_buckets: int) -> np.ndarray:
    """Stable bucket (0..n_buckets-1) of each contact id: the same in every process and run.

    Examples
    --------
    >>> bucket_of(["a", "b", "a"], 7).tolist() == bucket_of(["a", "b", "a"], 7).tolist()
    True
    """
    ids = np.asarray(contact_ids, dtype=object)
    if n_buckets <= 1 or len(ids) == 0:
        return np.zeros(len(ids), dtype=np.int32)
    h = pd.util.hash_array(ids, categorize=True)  # SipHash with a fixed key
    return (h % np.uint64(n_buckets)).astype(np.int32)


def eligibility(features: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
    """Eligible rows of an ``eligible_only=False`` feature table, and why the others are not.

    Same rule as :meth:`Snapshotter.features_at`: created by the as-of date, not converted,
    not disqualified.
    """
    age = features["contact_age_days"].to_numpy(dtype="float64")
    stage = features["stage"].to_numpy(dtype=object)
    not_created = ~(age >= 0)
    converted = np.isin(stage, list(schema.CONVERTED_STAGES)) & ~not_created
    disqualified = (stage == "disqualified") & ~not_created
    keep = ~(not_created | converted | disqualified)
    return keep, {"created_after_as_of": int(not_created.sum()), "converted": int(converted.sum()),
                  "disqualified": int(disqualified.sum())}


def reasons_json(reasons: Sequence[Any], computed: np.ndarray) -> np.ndarray:
    """Reasons as compact JSON strings where ``computed``, None elsewhere."""
    out = np.full(len(reasons), None, dtype=object)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    for i in np.flatnonzero(computed):
        out[i] = dumps(list(reasons[i]))
    return out


@dataclass
class ChunkResult:
    """Outputs of one chunk, its rejected rows and counts."""

    table: pa.Table
    rejects: pd.DataFrame
    stats: dict[str, Any]


def _model_outputs(scorer: Any, feats: pd.DataFrame, *, scored_at: pd.Timestamp, mode: str,
                   predict: Callable[[np.ndarray], np.ndarray] | None) -> tuple[pd.DataFrame, np.ndarray]:
    """A :class:`~training.model.LeadModel`'s outputs, with reasons only where ``mode`` says.

    The same arithmetic as :meth:`LeadModel.score` (matrix, booster, calibrator, scale,
    ``pred_contrib`` -> :func:`~training.scoring.format_reasons`), but the band is known
    before the reasons are computed, so ``top`` explains only bands A and B.
    """
    from training.model import outputs_frame
    from training.scoring import format_reasons

    X = model_matrix(scorer, feats)
    raw = predict(X) if predict is not None else scorer.predict_raw(X)
    p = np.asarray(scorer.calibrator.transform(raw), dtype="float64")
    n = len(feats)
    if mode == "all":
        want = np.ones(n, dtype=bool)
    elif mode == "top":
        want = np.isin(scorer.scale.band(scorer.scale.score(p)), TOP_BANDS)
    else:
        want = np.zeros(n, dtype=bool)
    reasons: list = [None] * n
    rows = np.flatnonzero(want)
    if len(rows):
        explained = format_reasons(scorer.contributions(X[rows]),
                                   feats.iloc[rows].reset_index(drop=True), scorer.columns,
                                   top_k=scorer.top_k)
        for i, r in zip(rows, explained):
            reasons[i] = r
    out = outputs_frame(feats["contact_id"], p, scorer.scale, reasons, scorer="model",
                        model_name=scorer.model_name, model_version=scorer.model_version,
                        scored_at=scored_at)
    return out, want


_ENCODER: dict[str, Any] = {}  # the last model (kept alive: no id reuse) and its encoder


def model_matrix(model: Any, feats: pd.DataFrame) -> np.ndarray:
    """The booster's input: :class:`training.fastpath.CompiledEncoder` (dictionary look-ups,
    equal to :meth:`LeadModel.matrix`) when it understands the model's pipeline, else the
    pipeline itself."""
    if _ENCODER.get("model") is not model:
        try:
            from training.fastpath import CompiledEncoder

            enc = CompiledEncoder.from_model(model)
        except Exception:  # noqa: BLE001 - ImportError, NotImplementedError: use the pipeline
            enc = None
        _ENCODER.update(model=model, enc=enc)
    enc = _ENCODER["enc"]
    if enc is None:
        return model.matrix(feats)
    n = len(feats)
    X = np.empty((n, len(enc.categorical) + len(enc.numeric)), dtype="float64")
    for j, c in enumerate(enc.categorical):  # each distinct label looked up once
        cat = enc.categories[c]
        codes, uniques = pd.factorize(feats[c].to_numpy(dtype=object), use_na_sentinel=True)
        table = np.array([cat.codes.get(u, cat.other) if isinstance(u, str) else cat.other
                          for u in uniques] + [cat.missing], dtype="float64")
        X[:, j] = table[codes]  # code -1 (missing) -> the last entry
    k = len(enc.categorical)
    for j, c in enumerate(enc.numeric):
        X[:, k + j] = feats[c].to_numpy(dtype="float64", na_value=np.nan)
    return X


def _rules_outputs(scorer: Any, feats: pd.DataFrame, *, scored_at: pd.Timestamp,
                   mode: str) -> tuple[pd.DataFrame, np.ndarray]:
    out = scorer.score(feats, scored_at=scored_at, reasons=mode != "none")
    band = out["band"].to_numpy(dtype=object)
    want = (np.ones(len(out), dtype=bool) if mode == "all"
            else np.isin(band, TOP_BANDS) if mode == "top" else np.zeros(len(out), dtype=bool))
    return out.reset_index(drop=True), want


def score_features(
    scorer: Any, feats: pd.DataFrame, *, scored_at: pd.Timestamp, as_of: pd.Timestamp,
    reasons: str = "top", predict: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[pa.Table, pd.DataFrame, bool]:
    """Score eligible feature rows; returns the output table, rejects and whether the model
    failed and the rule scorer answered instead (as the service does)."""
    if reasons not in REASON_MODES:
        raise ValueError(f"reasons: expected one of {REASON_MODES}, got {reasons!r}")
    fell_back = False
    if len(feats) == 0:
        return OUTPUT_SCHEMA.empty_table(), empty_rejects(), fell_back
    if getattr(scorer, "scorer", "model") == "model":
        try:
            out, want = _model_outputs(scorer, feats, scored_at=scored_at, mode=reasons, predict=predict)
        except Exception as e:  # noqa: BLE001 - a model failure means: rules answer
            from training.model import RulesOnly

            log.warning("model failed on a chunk (%s); the rule scorer answers", type(e).__name__)
            fell_back = True
            out, want = _rules_outputs(RulesOnly(scorer.rules, reason="model failed"), feats,
                                       scored_at=scored_at, mode=reasons)
    else:
        out, want = _rules_outputs(scorer, feats, scored_at=scored_at, mode=reasons)
    prob = out["probability"].to_numpy(dtype="float64")
    bad = ~np.isfinite(prob)
    rejects = empty_rejects()
    if bad.any():
        rejects = pd.DataFrame({"table": "contacts", "row": feats["row"].to_numpy()[bad]
                                if "row" in feats else -1,
                                "contact_id": out["contact_id"].to_numpy(dtype=object)[bad],
                                "reason": NOT_SCORABLE})
        out, want = out.loc[~bad].reset_index(drop=True), want[~bad]
    return _outputs_table(out, want, scored_at, as_of), concat_rejects([rejects]), fell_back


def _outputs_table(out: pd.DataFrame, want: np.ndarray, scored_at: pd.Timestamp,
                   as_of: pd.Timestamp | None) -> pa.Table:
    """Scorer outputs as :data:`OUTPUT_SCHEMA` (reasons as JSON where ``want``)."""
    cols = {
        "contact_id": pa.array(out["contact_id"].astype(str).to_numpy(dtype=object), pa.string()),
        "probability": pa.array(out["probability"].to_numpy(dtype="float64")),
        "score": pa.array(out["score"].to_numpy(dtype="int64")),
        "band": pa.array(out["band"].to_numpy(dtype=object), pa.string()),
        "reasons": pa.array(reasons_json(out["reasons"].to_numpy(dtype=object), want), pa.string()),
        "scorer": pa.array(out["scorer"].astype(str).to_numpy(dtype=object), pa.string()),
        "model_name": pa.array(out["model_name"].astype(str).to_numpy(dtype=object), pa.string()),
        "model_version": pa.array(out["model_version"].astype(str).to_numpy(dtype=object), pa.string()),
        "scored_at": pa.array(np.full(len(out), _ts_us(scored_at)), pa.timestamp("us")),
        "as_of": (pa.array(np.full(len(out), _ts_us(as_of)), pa.timestamp("us")) if as_of is not None
                  else pa.nulls(len(out), pa.timestamp("us"))),
    }
    return pa.table(cols, schema=OUTPUT_SCHEMA)


def score_chunk(
    contacts: pd.DataFrame, events: pd.DataFrame, stages: pd.DataFrame, scorer: Any, *,
    as_of: pd.Timestamp, scored_at: pd.Timestamp, reasons: str = "top",
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ChunkResult:
    """Features and scores of one chunk of clean contacts with their events and stages.

    Pure: the same function serves the local engine's worker processes and Spark's
    executors. ``contacts`` may carry a ``row`` column (the input row) for rejects.
    """
    t0 = time.perf_counter()
    config = getattr(scorer, "feature_config", None) or FeatureConfig()
    ids = pd.Index(contacts["contact_id"].astype("str"))
    events = events.assign(contact_id=as_categorical(events["contact_id"], ids))
    stages = stages.assign(contact_id=as_categorical(stages["contact_id"], ids))
    snap = Snapshotter(contacts, events, stages, config)
    feats = snap.features_at(as_of, eligible_only=False)
    keep, not_eligible = eligibility(feats)
    feats = feats.loc[keep].reset_index(drop=True)
    if "row" in contacts:
        feats["row"] = contacts["row"].to_numpy()[keep]
    t1 = time.perf_counter()
    table, rejects, fell_back = score_features(scorer, feats, scored_at=scored_at, as_of=as_of,
                                               reasons=reasons, predict=predict)
    t2 = time.perf_counter()
    bands = pc.value_counts(table.column("band")).to_pylist() if table.num_rows else []
    scorers = pc.value_counts(table.column("scorer")).to_pylist() if table.num_rows else []
    stats = {
        "contacts": len(contacts),
        "eligible": int(keep.sum()),
        "scored": table.num_rows,
        "not_eligible": not_eligible,
        "bands": {d["values"]: int(d["counts"]) for d in bands},
        "scorers": {d["values"]: int(d["counts"]) for d in scorers},
        "fallback": fell_back,
        "events": len(events),
        "seconds_features": t1 - t0,
        "seconds_scoring": t2 - t1,
    }
    return ChunkResult(table, rejects, stats)


def as_categorical(values: pd.Series | pa.ChunkedArray | pa.Array, categories: pd.Index) -> pd.Categorical:
    """Contact ids as a Categorical over the chunk's contact ids (unknown ids -> missing).

    Same values, but :meth:`pandas.Index.get_indexer` (how the feature kernels find each
    event's contact) then hashes the chunk's few thousand distinct ids instead of millions of
    event rows: ~25x faster on a chunk of 100,000 contacts and 3 million events.
    """
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if isinstance(values, pd.Series):
        arr = _arrow_str(values)
    else:
        arr = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
        arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    value_set = pa.array(categories.to_numpy(dtype=object), pa.large_string())
    codes = pc.fill_null(pc.index_in(arr, value_set=value_set), -1)
    return pd.Categorical.from_codes(codes.to_numpy(zero_copy_only=False).astype(np.int32),
                                     categories=categories, validate=False)


def compare_previous(current: pd.DataFrame, previous: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Band movements between two score tables (``contact_id, band, score, probability``).

    Returns the movers (band changed; ``up`` before ``down``, moves into A first, then by
    score change) and counts: ``bands_before``, ``bands_after``, ``up``, ``down``,
    ``into_a``, ``unchanged``, ``new`` (scored now, not before) and ``gone``.
    """
    for name, frame in (("previous", previous), ("current", current)):
        missing = [c for c in ("contact_id", "band") if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} scores: required column {missing[0]!r} is missing")
    def prep(frame: pd.DataFrame) -> pd.DataFrame:
        f = frame[[c for c in ("contact_id", "band", "score", "probability") if c in frame]].copy()
        for c in ("score", "probability"):
            if c not in f:
                f[c] = np.nan
        f["contact_id"] = f["contact_id"].astype(str)
        return f.drop_duplicates("contact_id", keep="last")

    cur, prev = prep(current), prep(previous)
    both = cur.merge(prev, on="contact_id", how="inner", suffixes=("_after", "_before"))
    r_after = both["band_after"].map(_BAND_RANK).to_numpy(dtype="float64", na_value=np.nan)
    r_before = both["band_before"].map(_BAND_RANK).to_numpy(dtype="float64", na_value=np.nan)
    up = r_after < r_before
    down = r_after > r_before
    moved = both.loc[up | down].copy()
    moved["direction"] = np.where(up[up | down], "up", "down")
    moved["into_a"] = (moved["band_after"] == "A").to_numpy() & (moved["direction"] == "up").to_numpy()
    delta = (moved["score_after"].astype("float64") - moved["score_before"].astype("float64")).abs()
    moved = (moved.assign(_order=np.where(moved["into_a"], 0, np.where(moved["direction"] == "up", 1, 2)),
                          _delta=-delta.fillna(0))
             .sort_values(["_order", "_delta", "contact_id"], kind="stable")
             .drop(columns=["_order", "_delta"]))
    movers = moved[list(MOVER_COLUMNS)].reset_index(drop=True)
    ids_cur, ids_prev = set(cur["contact_id"]), set(prev["contact_id"])
    counts = {
        "previous_rows": len(prev),
        "bands_before": {b: int((prev["band"] == b).sum()) for b in schema.BANDS},
        "bands_after": {b: int((cur["band"] == b).sum()) for b in schema.BANDS},
        "up": int(up.sum()),
        "down": int(down.sum()),
        "into_a": int(movers["into_a"].sum()),
        "unchanged": int(len(both) - up.sum() - down.sum()),
        "new": len(ids_cur - ids_prev),
        "gone": len(ids_prev - ids_cur),
    }
    return movers, counts


def _ts_us(ts: pd.Timestamp) -> np.datetime64:
    return pd.Timestamp(ts).as_unit("us").to_datetime64()


# ---------------------------------------------------------------------------
# Inputs: locating, fingerprinting
# ---------------------------------------------------------------------------


def table_path(data_dir: Path, name: str) -> Path:
    """The file (or directory) holding a table: Parquet wins over CSV, as in the loader."""
    return find_table(Path(data_dir), name)


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    return [path]


def fingerprint(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Path, size and modification time of every input file (what ``--resume`` checks)."""
    out = []
    for path in paths:
        for f in _files_of(path):
            st = f.stat()
            out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _events_end(path: Path) -> pd.Timestamp | None:
    """Latest event timestamp (only needed when there are no stage changes), streamed."""
    if not path.name.endswith(".parquet"):
        return None
    latest = None
    try:
        for f in table_files(path):
            pf = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
            if "ts" not in pf.schema_arrow.names or not pa.types.is_timestamp(pf.schema_arrow.field("ts").type):
                return None
            for batch in pf.iter_batches(batch_size=1 << 20, columns=["ts"], use_threads=False):
                m = pc.max(batch.column(0)).as_py()
                if m is not None:
                    m = pd.Timestamp(m)
                    m = m.tz_convert("UTC").tz_localize(None) if m.tzinfo else m
                    latest = m if latest is None else max(latest, m)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"events: cannot read {path.name}: {safe_reason(e)}") from None
    return latest


# ---------------------------------------------------------------------------
# Preparation, step 1: link the whole base from its key columns
# ---------------------------------------------------------------------------


@dataclass
class ContactIndex:
    """What the slices need to attach a row to its (canonical) contact's bucket.

    Saved by step 1 as an uncompressed Arrow IPC file that the workers memory-map (no
    decoding), ids sorted in the order of their look-up hashes (:class:`IdLookup`), so that a
    worker holds about 30 bytes per contact.
    """

    known: pa.Array  # every validated contact id (before deduplication), string
    canonical: np.ndarray  # position in ``known`` of each id's canonical id (int32)
    bucket: np.ndarray  # bucket of each known id's canonical contact (int32)
    remap: bool  # some id is merged into another id
    export: pd.Timestamp
    lookup: IdLookup = field(repr=False)

    @classmethod
    def build(cls, known: pa.Array, canonical: np.ndarray, bucket: np.ndarray, remap: bool,
              export: pd.Timestamp) -> ContactIndex:
        """The index of ``known`` ids (any order), reordered for the look-up."""
        known = known.cast(pa.string()) if pa.types.is_large_string(known.type) else known
        lookup = IdLookup(known)
        if lookup.order is not None:
            order = lookup.order
            where = np.empty(len(order), dtype=np.int32)
            where[order] = np.arange(len(order), dtype=np.int32)
            known = known.take(pa.array(order))
            canonical, bucket = where[np.asarray(canonical)[order]], np.asarray(bucket)[order]
            lookup = IdLookup(known, prepared=(lookup.hashes, lookup.width))
        return cls(known, np.asarray(canonical, dtype=np.int32), np.asarray(bucket, dtype=np.int32),
                   remap, export, lookup)

    def canonical_ids(self, codes: np.ndarray) -> pa.Array:
        """The canonical id of each known id (``codes``: positions in ``known``)."""
        return self.known.take(pa.array(self.canonical[codes]))

    def save(self, path: Path) -> None:
        n = len(self.known)
        hashes = self.lookup.hashes if self.lookup.width else np.zeros(n, dtype=np.uint64)
        table = pa.table({"known": self.known, "canonical": pa.array(self.canonical, pa.int32()),
                          "bucket": pa.array(self.bucket, pa.int32()),
                          "hash": pa.array(hashes, pa.uint64())})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(n, 1))
        path.with_suffix(".json").write_text(json.dumps(
            {"remap": self.remap, "export": str(self.export), "width": self.lookup.width}))

    @classmethod
    def load(cls, path: Path) -> ContactIndex:
        source = pa.memory_map(str(path))  # the arrays below keep the map alive
        t = pa.ipc.open_file(source).read_all()
        meta = json.loads(path.with_suffix(".json").read_text())
        col = {name: t.column(name).combine_chunks() for name in t.column_names}
        known = col["known"]
        lookup = IdLookup(known, prepared=(col["hash"].to_numpy(), meta["width"]))
        return cls(known, col["canonical"].to_numpy(), col["bucket"].to_numpy(), meta["remap"],
                   pd.Timestamp(meta["export"]), lookup)


_MIX1, _MIX2, _SHIFT = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)


def _word_hash(ids: pa.Array, width: int) -> np.ndarray:
    """64-bit hash of ASCII strings of at most ``width`` bytes (a multiple of 8): padded to
    ``width``, read as 64-bit words, each mixed in (murmur3's finaliser). Vectorised."""
    padded = pc.ascii_rpad(ids, width=width, padding=" ")
    n = len(padded)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    wide = pa.types.is_large_string(padded.type)
    offsets = np.frombuffer(padded.buffers()[1], dtype=np.int64 if wide else np.int32, count=n + 1,
                            offset=padded.offset * (8 if wide else 4))
    data = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    words = data.view(np.uint64).reshape(n, width // 8)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(width // 8):
        h ^= words[:, j]
        h ^= h >> _SHIFT
        h *= _MIX1
        h ^= h >> _SHIFT
        h *= _MIX2
        h ^= h >> _SHIFT
    return h


class IdLookup:
    """Exact look-up of ids in a fixed set of millions, built once and then cheap per batch.

    ``pyarrow.compute.index_in`` rebuilds its hash table of the whole set on every call: with
    4M contacts that is ~1 s per batch of 1M events, more than everything else done to the
    batch. Here the set's 64-bit hashes are sorted once; a batch is hashed, its (sorted) hashes
    searched, and every hit checked against the id itself, so the answer is exact. Sets the
    hash cannot serve (non-ASCII ids, two ids with the same hash) use ``index_in``.
    """

    def __init__(self, known: pa.Array, prepared: tuple[np.ndarray, int] | None = None) -> None:
        self.known = known.combine_chunks() if isinstance(known, pa.ChunkedArray) else known
        #: where the hash order puts each id (None: ``known`` is already in that order)
        self.order: np.ndarray | None = None
        if prepared is not None:  # ``known`` sorted by hash, as ContactIndex saves it
            self.hashes, self.width = prepared
            return
        self.width = 0
        self.hashes = np.zeros(0, dtype=np.uint64)
        n = len(self.known)
        if n and self.known.null_count == 0 and pc.all(pc.string_is_ascii(self.known)).as_py():
            width = max(8, -(-pc.max(pc.binary_length(self.known)).as_py() // 8) * 8)
            step = 1 << 20
            h = np.concatenate([_word_hash(self.known.slice(i, step), width) for i in range(0, n, step)])
            order = np.argsort(h, kind="stable")
            hashes = h[order]
            if not (hashes[1:] == hashes[:-1]).any():
                self.hashes, self.width = hashes, width
                if (order != np.arange(n)).any():
                    self.order = order.astype(np.int32)

    def index(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Position of each id in the set (int64), -1 where it is not in the set."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if not self.width:
            codes = pc.index_in(ids, value_set=self.known)
            return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        out = np.full(len(ids), -1, dtype=np.int64)
        fits = np.asarray(pc.fill_null(pc.and_(
            pc.string_is_ascii(ids), pc.less_equal(pc.binary_length(ids), self.width)), False
        ).to_numpy(zero_copy_only=False), dtype=bool)
        rows = np.flatnonzero(fits)
        if not len(rows):
            return out
        some = ids if len(rows) == len(ids) else ids.take(pa.array(rows))
        h = _word_hash(some, self.width)
        q = np.argsort(h)  # sorted queries: a binary search close to the previous one
        found = np.empty(len(h), dtype=np.int64)
        found[q] = np.minimum(np.searchsorted(self.hashes, h[q]), len(self.hashes) - 1)
        cand = found if self.order is None else self.order[found].astype(np.int64)
        same = (self.hashes[found] == h) & np.asarray(
            pc.equal(some, self.known.take(pa.array(cand))).to_numpy(zero_copy_only=False), dtype=bool)
        out[rows[same]] = cand[same]
        return out


@dataclass
class BaseKeys:
    """Step 1's result: every valid contact row linked to its canonical contact and bucket."""

    rows: np.ndarray  # input row of each valid contact row, ascending (int64)
    bucket: np.ndarray  # bucket of its canonical contact (int32)
    index: ContactIndex
    rejects: pd.DataFrame  # contacts rows rejected by validation and as duplicates
    as_of: pd.Timestamp
    export: pd.Timestamp
    n_buckets: int
    bucket_sizes: list[int]  # canonical contacts per bucket
    contacts_read: int
    contacts: int  # canonical contacts
    columns: dict[str, list[str]]  # the columns each table's slices read
    slices: list[TableSlice]
    seconds: dict[str, float] = field(default_factory=dict)

    def save(self, prep: Path) -> dict[str, Any]:
        """Write to ``prep`` (``keys.json`` last: the step's commit); returns the JSON."""
        np.save(prep / "keys_rows.npy", self.rows)
        np.save(prep / "keys_bucket.npy", self.bucket)
        self.index.save(prep / "index.arrow")
        pq.write_table(pa.Table.from_pandas(self.rejects, schema=REJECT_SCHEMA, preserve_index=False),
                       prep / "rejects.parquet")
        info = {"as_of": str(self.as_of), "export": str(self.export), "n_buckets": self.n_buckets,
                "bucket_sizes": self.bucket_sizes, "contacts_read": self.contacts_read,
                "contacts": self.contacts, "columns": self.columns,
                "slices": [asdict(s) for s in self.slices], "seconds": self.seconds}
        write_text_atomic(prep / "keys.json", json.dumps(info))
        return info


def link_base(paths: dict[str, Path], as_of_opt: pd.Timestamp | None, chunk_size: int) -> BaseKeys:
    """Step 1: read the key columns of the whole base and link duplicates; bucket every contact.

    Only ``contact_id``, ``created_at`` and ``email`` of the contacts are read (in batches: the
    emails are normalised batch by batch), and the stage changes' timestamps for the data's end.
    Memory: the key columns and their links (about 0.2 GB per million contacts at the step's
    peak), never the contact rows.
    """
    from features.hygiene import DUPLICATE_CONTACT, canonical_rows, normalise_email

    t0 = time.perf_counter()
    columns = {name: table_columns(paths[name], spec, SLICE_COLUMNS[name])
               for name, spec in schema.TABLES.items()}
    slices = [sl for name in schema.TABLES
              for sl in plan_slices(paths[name], name, rows_per_slice=_SLICE_ROWS[name])]
    checks = TableChecks()
    key_cols = [c for c in ("contact_id", "created_at", "email") if c in columns["contacts"]]
    rows, ids, created, emails, rejects = [], [], [], [], []
    read = 0
    for sl in (s for s in slices if s.table == "contacts"):
        offset = sl.row_offset
        for raw in read_slice(sl, key_cols, batch_rows=_KEY_BATCH_ROWS):
            t = validate_tables(raw, pd.DataFrame(), pd.DataFrame(), checks=checks, row_offset=offset)
            offset += len(raw)
            read += len(raw)
            c = t.contacts
            rejects.append(t.rejects)
            rows.append(c.index.to_numpy().astype(np.int64))
            ids.append(_arrow_str(c["contact_id"]))
            created.append(c["created_at"].to_numpy(dtype="datetime64[us]"))
            emails.append(_arrow_str(normalise_email(c["email"])))
            del t, c, raw
    # the data's end: the last valid stage change (stages are read again, in slices, in step 2)
    end = None
    stage_cols = columns["stages"]
    for sl in (s for s in slices if s.table == "stages"):
        offset = sl.row_offset
        for raw in read_slice(sl, stage_cols, batch_rows=_SLICE_BATCH_ROWS["stages"]):
            st = validate_tables(pd.DataFrame(), pd.DataFrame(), raw, checks=checks,
                                 row_offset=offset).stages
            offset += len(raw)
            if len(st):
                m = pd.Timestamp(st["ts"].max())
                end = m if end is None else max(end, m)
    checks.raise_errors()
    t1 = time.perf_counter()
    n = int(sum(len(r) for r in rows))
    if n == 0:
        raise DataError("contacts: no valid contacts: the base is empty, nothing to score")
    if end is None:
        end = _events_end(paths["events"]) or data_end(pd.DataFrame({"ts": []}), pd.DataFrame({"ts": []}))
    as_of = as_of_opt if as_of_opt is not None else end
    export = max(as_of, end)

    rows_np = np.concatenate(rows)
    id_arr = pa.chunked_array([c for a in ids for c in a.chunks], type=pa.large_string()).combine_chunks()
    del ids
    id_s = _str_frame_col(id_arr)
    email_arr = pa.chunked_array([c for a in emails for c in a.chunks], type=pa.large_string())
    del emails
    canonical_of = canonical_rows(id_s, np.concatenate(created), _str_frame_col(email_arr))
    del created, email_arr
    if canonical_of is None:
        canonical_of = np.arange(n, dtype=np.int64)
    is_canonical = canonical_of == np.arange(n)
    n_contacts = int(is_canonical.sum())
    n_buckets = max(1, math.ceil(n_contacts / chunk_size))
    canon_pos = np.flatnonzero(is_canonical)
    row_bucket = np.zeros(n, dtype=np.int32)
    for start in range(0, len(canon_pos), _KEY_BATCH_ROWS):  # Python strings, a batch at a time
        pos = canon_pos[start:start + _KEY_BATCH_ROWS]
        row_bucket[pos] = bucket_of(id_arr.take(pa.array(pos)).to_numpy(zero_copy_only=False), n_buckets)
    row_bucket = row_bucket[canonical_of]
    sizes = np.bincount(row_bucket[is_canonical], minlength=n_buckets).tolist()

    # known ids -> canonical id and bucket (every row of an id is in that id's group)
    encoded = pc.dictionary_encode(id_arr)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    first = np.unique(codes, return_index=True)[1]  # first row of each known id
    canonical = codes[canonical_of[first]]  # position (in known) of its canonical id
    remap = bool((canonical != np.arange(len(first))).any())
    index = ContactIndex.build(encoded.dictionary, canonical, row_bucket[first], remap, export)
    del encoded, codes

    dups = ~is_canonical
    if dups.any():
        frame = pd.DataFrame({"contact_id": id_s}).set_axis(pd.Index(rows_np, name="row"))
        rejects.append(make_rejects(frame, dups, "contacts", DUPLICATE_CONTACT))
    return BaseKeys(rows_np, row_bucket, index, concat_rejects(rejects), as_of, export, n_buckets,
                    sizes, read, n_contacts, columns, slices,
                    {"link_read": t1 - t0, "link": time.perf_counter() - t1})


def _str_frame_col(arr: pa.Array | pa.ChunkedArray) -> pd.Series:
    """An Arrow string array as a pandas ``str`` Series (no copy)."""
    out = (arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])).to_pandas()
    return out if out.dtype == _STR else out.astype(_STR)


def _prepare_keys(paths: dict[str, Path], prep_dir: str, as_of_opt: pd.Timestamp | None,
                  chunk_size: int) -> dict[str, Any]:
    """Step 1 written to ``prep_dir``. Runs in a child process when there are workers: its memory
    (the key columns of the whole base) goes back to the system before step 2 starts."""
    return link_base(paths, as_of_opt, chunk_size).save(Path(prep_dir))


# ---------------------------------------------------------------------------
# Preparation, step 2: every table in slices, each row to its contact's bucket
# ---------------------------------------------------------------------------


def attach_rows(batch: pd.DataFrame, table: str, row_offset: int, index: ContactIndex, *,
                checks: TableChecks | None = None, keys: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[pa.Table, np.ndarray, pd.DataFrame, dict[str, int]]:
    """Validate a batch of raw rows of ``table`` and give each kept row its bucket.

    The loader's validation (:func:`features.io.validate_tables`, table-level checks counted
    into ``checks``) and then, for events and stage changes, hygiene's rule
    (:func:`features.hygiene.clean`: an unknown contact, then a future timestamp, make a
    reject; a duplicate's rows move to the canonical id). Contacts keep every valid row
    (duplicates too: :func:`features.hygiene.clean_contacts` merges them chunk by chunk) and
    take their bucket from step 1's ``keys`` (rows, bucket); their rejects were written by step 1.

    Returns
    -------
    rows, bucket, rejects, unknown_event_types
        Kept rows (:data:`SLICE_SCHEMAS`), their bucket, the rejected rows (``row`` counted
        from the start of the table) and the unknown event types mapped to "other".
    """
    from features.hygiene import FUTURE_TIMESTAMP, UNKNOWN_CONTACT

    frames = {"contacts": pd.DataFrame(), "events": pd.DataFrame(), "stages": pd.DataFrame(), table: batch}
    tables = validate_tables(frames["contacts"], frames["events"], frames["stages"], checks=checks,
                             row_offset=row_offset)
    if table == "contacts":
        c = tables.contacts
        rows = c.index.to_numpy().astype(np.int64)
        key_rows, key_bucket = keys
        lo, hi = np.searchsorted(key_rows, [row_offset, row_offset + len(batch)])
        if hi - lo != len(rows) or not np.array_equal(key_rows[lo:hi], rows):
            raise RuntimeError("contacts: the rows differ from the first reading (the file changed?)")
        data = {col: c[col] for col in schema.CONTACTS.columns}
        out = pa.Table.from_pandas(pd.DataFrame(data).reset_index(drop=True), preserve_index=False)
        out = out.append_column("row", pa.array(rows)).cast(SLICE_SCHEMAS["contacts"])
        return out, key_bucket[lo:hi], empty_rejects(), {}
    frame = getattr(tables, table)
    rejects = [tables.rejects]
    ids = _arrow_str(frame["contact_id"])
    codes = index.lookup.index(ids)  # position in index.known, -1: not a contact
    unknown = codes < 0
    future = (frame["ts"] > index.export).to_numpy() & ~unknown
    drop = unknown | future
    if drop.any():
        rows = frame.index.to_numpy().astype(np.int64)
        rejects.append(pd.DataFrame({
            "table": table, "row": rows[drop],
            "contact_id": frame["contact_id"].to_numpy(dtype=object)[drop],
            "reason": np.where(unknown[drop], UNKNOWN_CONTACT, FUTURE_TIMESTAMP),
        }))
    keep = ~drop
    code_np = codes[keep]
    cols = {"contact_id": ids,
            "ts": pa.array(frame["ts"].to_numpy(dtype="datetime64[us]"), pa.timestamp("us"))}
    for col in SLICE_SCHEMAS[table].names[2:]:
        cols[col] = _arrow_str(frame[col])
    out = pa.table(cols, schema=SLICE_SCHEMAS[table])
    if drop.any():
        out = out.filter(pa.array(keep))
    if index.remap and out.num_rows:
        out = out.set_column(0, "contact_id", index.canonical_ids(code_np).cast(pa.large_string()))
    unknown_types = tables.unknown_event_types if table == "events" else {}
    return out, index.bucket[code_np], concat_rejects(rejects), unknown_types


def _arrow_str(s: pd.Series) -> pa.ChunkedArray:
    """A ``str`` Series as Arrow large_string (no copy for pyarrow-backed strings)."""
    arr = pa.array(s.array) if isinstance(s.dtype, pd.StringDtype) else pa.array(
        s.to_numpy(dtype=object), pa.large_string(), from_pandas=True)
    if not isinstance(arr, pa.ChunkedArray):
        arr = pa.chunked_array([arr])
    return arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr


def _slice_task(sl: TableSlice, columns: list[str], prep_dir: str, n_buckets: int) -> dict[str, Any]:
    """Worker: one slice of a table -> one Parquet file per bucket (+ rejects, stats), committed
    by renaming its directory (``prep/<table>/t<index>``)."""
    prep = Path(prep_dir)
    out = prep / sl.table / f"t{sl.index:05d}"
    if out.exists():  # committed by an earlier (interrupted) run, or by an orphaned worker
        return json.loads((out / "stats.json").read_text()) | {"table": sl.table, "task": sl.index}
    index = _cached_index(str(prep / "index.arrow"))
    keys = _cached_keys(prep_dir) if sl.table == "contacts" else None
    tmp = _tmp_name(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    parts: dict[int, list[pa.Table]] = {}  # the slice's rows of each bucket (a few hundred MB)
    rejects: list[pd.DataFrame] = []
    unknown: dict[str, int] = {}
    checks = TableChecks()
    offset, rows, kept = sl.row_offset, 0, 0
    for raw in read_slice(sl, columns, batch_rows=_SLICE_BATCH_ROWS[sl.table]):
        got, bucket, rej, unk = attach_rows(raw, sl.table, offset, index, checks=checks, keys=keys)
        offset += len(raw)
        rows += len(raw)
        kept += got.num_rows
        del raw
        if len(rej):
            rejects.append(rej)
        for k, v in unk.items():
            unknown[k] = unknown.get(k, 0) + v
        if not got.num_rows:
            continue
        order = np.argsort(bucket, kind="stable")
        got = got.take(pa.array(order))
        counts = np.bincount(bucket, minlength=n_buckets)
        start = 0
        for k in np.flatnonzero(counts):
            parts.setdefault(int(k), []).append(got.slice(start, counts[k]))
            start += counts[k]
    # one file and row group per bucket: many buckets x small slices would make tiny row groups
    for k in sorted(parts):
        pq.write_table(pa.concat_tables(parts.pop(k)).combine_chunks(), tmp / f"b{k:05d}.parquet",
                       compression="lz4", row_group_size=1 << 22)
    rej = concat_rejects(rejects)
    if len(rej):
        pq.write_table(pa.Table.from_pandas(rej, schema=REJECT_SCHEMA, preserve_index=False),
                       tmp / "rejects.parquet")
    stats = {"rows": rows, "kept": kept, "unknown": unknown, "checks": checks.to_dict()}
    (tmp / "stats.json").write_text(json.dumps(stats))
    try:
        os.replace(tmp, out)  # the slice's commit
    except OSError:  # committed meanwhile by an orphaned worker of a killed run: same content
        shutil.rmtree(tmp, ignore_errors=True)
    return stats | {"table": sl.table, "task": sl.index}


_INDEX_CACHE: dict[str, Any] = {}


def _cached_index(path: str) -> ContactIndex:
    """Step 1's contact index, loaded once per worker process (per run)."""
    key = f"index:{path}:{os.stat(path).st_mtime_ns}"
    if _INDEX_CACHE.get("index_key") != key:
        _INDEX_CACHE.update(index_key=key, index=ContactIndex.load(Path(path)))
    return _INDEX_CACHE["index"]


def _cached_keys(prep_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Step 1's rows and buckets (memory-mapped: a slice touches only its rows)."""
    prep = Path(prep_dir)
    key = f"keys:{prep}:{os.stat(prep / 'keys_rows.npy').st_mtime_ns}"
    if _INDEX_CACHE.get("keys_key") != key:
        _INDEX_CACHE.update(keys_key=key, keys=(np.load(prep / "keys_rows.npy", mmap_mode="r"),
                                                np.load(prep / "keys_bucket.npy", mmap_mode="r")))
    return _INDEX_CACHE["keys"]


def _read_parts(prep: Path, table: str, k: int) -> pa.Table:
    """Bucket ``k``'s rows of ``table`` from every slice, in input order."""
    files = sorted((prep / table).glob(f"{_TASK_DIRS}/b{k:05d}.parquet"))
    if not files:
        return SLICE_SCHEMAS[table].empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SLICE_SCHEMAS[table]) for f in files])


def bucket_contacts(rows: pa.Table) -> pd.DataFrame:
    """A bucket's valid contact rows (duplicates included) -> its clean contacts, as
    :func:`features.hygiene.clean` makes them within the whole base: every duplicate of a
    contact is in its canonical contact's bucket. Columns :data:`CONTACT_COLUMNS` + ``row``."""
    from features.hygiene import clean_contacts

    frame = rows.to_pandas()
    frame = frame.drop(columns="row").set_axis(pd.Index(frame["row"].to_numpy(), name="row"))
    contacts, _, _ = clean_contacts(frame)
    keep = [c for c in CONTACT_COLUMNS if c in contacts.columns]
    out = pa.Table.from_pandas(contacts[keep], preserve_index=False)
    out = out.append_column("row", pa.array(contacts.index.to_numpy().astype(np.int64)))
    return out.cast(CHUNK_CONTACT_SCHEMA).to_pandas()


def _prepare(paths: dict[str, Path], ws: Workspace, as_of_opt: pd.Timestamp | None, chunk_size: int,
             *, run: Runner, child: bool, console: Any | None) -> dict[str, Any]:
    """Steps 1-2: the base linked and every table split by bucket into ``ws.prep``.

    Step 1 is kept by ``--resume`` once finished, and so is every committed slice of step 2.
    """
    t0 = time.perf_counter()
    keys_json = ws.prep / "keys.json"
    if keys_json.exists():
        info = json.loads(keys_json.read_text())
    else:
        shutil.rmtree(ws.prep, ignore_errors=True)
        ws.prep.mkdir(parents=True)
        if child:
            with _pool(1) as pool:
                info = pool.submit(_prepare_keys, paths, str(ws.prep), as_of_opt, chunk_size).result()
        else:
            info = _prepare_keys(paths, str(ws.prep), as_of_opt, chunk_size)
    _say(console, f"{info['contacts']:,} contacts (of {info['contacts_read']:,} read) in "
                  f"{info['n_buckets']} chunks; as-of {info['as_of']}")
    t1 = time.perf_counter()
    n_buckets = info["n_buckets"]
    slices = [TableSlice(**{**d, "row_groups": tuple(d["row_groups"])}) for d in info["slices"]]
    for name in schema.TABLES:
        (ws.prep / name).mkdir(exist_ok=True)
    total_rows = sum(s.rows for s in slices if s.rows >= 0)
    calls = [(_slice_task, (sl, info["columns"][sl.table], str(ws.prep), n_buckets), sl.rows)
             for sl in slices]
    results: list[dict[str, Any]] = []

    with Progress(console).task("reading", max(total_rows, 1), "rows") as advance:
        def done(weight: int, r: dict[str, Any]) -> None:
            results.append(r)
            advance(weight if weight >= 0 else r["rows"])

        run(calls, done)
    checks = TableChecks()
    unknown: dict[str, int] = {}
    kept = {name: 0 for name in schema.TABLES}
    for r in sorted(results, key=lambda r: (list(schema.TABLES).index(r["table"]), r["task"])):
        checks.update(r["checks"])
        kept[r["table"]] += r["kept"]
        for k, v in r["unknown"].items():
            unknown[k] = unknown.get(k, 0) + v
    checks.raise_errors()
    t2 = time.perf_counter()
    prep = {key: info[key] for key in ("as_of", "export", "n_buckets", "bucket_sizes",
                                       "contacts_read", "contacts")}
    prep.update(stages=kept["stages"], events=kept["events"], slices=len(slices),
                unknown_event_types=dict(sorted(unknown.items(), key=lambda kv: -kv[1])),
                seconds={**info["seconds"], "prepare_keys": t1 - t0, "prepare_slices": t2 - t1})
    write_text_atomic(ws.prep / "done.json", json.dumps(prep))
    return prep


# ---------------------------------------------------------------------------
# The work directory
# ---------------------------------------------------------------------------


class Workspace:
    """``.<out>.work/`` next to the output: manifest, prepared inputs, committed chunks.

    ``area``: a subdirectory for the prepared inputs and chunks (the Spark engine's), so
    that it never touches an interrupted local run's work.
    """

    def __init__(self, out: Path, area: str | None = None) -> None:
        self.out = out
        self.root = out.parent / f".{out.name}.work"
        self.area = self.root / area if area else self.root
        self.manifest_path = self.root / "manifest.json"
        self.prep = self.area / "prep"
        self.events = self.prep / "events"
        self.chunks = self.area / "chunks"
        self._lock: Any = None

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise FileExistsError(f"another run is writing {self.out} (lock held on {self.root})") from None

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=1, default=str))

    def prepared(self) -> dict[str, Any] | None:
        p = self.prep / "done.json"
        return json.loads(p.read_text()) if p.exists() else None

    def chunk_path(self, k: int) -> Path:
        return self.chunks / f"part-{k:05d}.parquet"

    def done_chunks(self) -> set[int]:
        if not self.chunks.exists():
            return set()
        return {int(p.name[5:10]) for p in self.chunks.glob("part-*.parquet")}

    def remove(self) -> None:
        self.unlock()
        shutil.rmtree(self.root, ignore_errors=True)

    def remove_area(self) -> None:
        """Remove the area, then the whole directory if nothing else is left in it."""
        shutil.rmtree(self.area, ignore_errors=True)
        self.unlock()
        if self.root.exists() and all(p.name == "lock" for p in self.root.iterdir()):
            shutil.rmtree(self.root, ignore_errors=True)


def _tmp_name(path: Path) -> Path:
    # unique per process: an orphaned worker of a killed run may still be finishing a chunk
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: Path, **kwargs: Any) -> None:
    tmp = _tmp_name(path)
    pq.write_table(table, tmp, **kwargs)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def companion(out: Path, what: str) -> Path:
    """``scores.parquet`` -> ``scores.rejects.parquet`` / ``scores.movers.parquet``."""
    stem = out.name.removesuffix(".parquet")
    return out.with_name(f"{stem}.{what}.parquet")


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(scorer: Any, threads: int) -> None:
    if hasattr(scorer, "num_threads"):
        scorer.num_threads = threads
    _WORKER["scorer"] = scorer
    _WORKER["predict"] = None
    if getattr(scorer, "scorer", "") == "model":
        from training.compiled import compiled_predict

        _WORKER["predict"] = compiled_predict(scorer, threads=threads)


def _score_chunk_task(k: int, prep_dir: str, chunks_dir: str, as_of: str, scored_at: str,
                      reasons: str) -> dict[str, Any]:
    """Worker: score bucket ``k`` from the prepared files and commit it atomically."""
    t0 = time.perf_counter()
    prep = Path(prep_dir)
    contacts = bucket_contacts(_read_parts(prep, "contacts", k))
    expected = json.loads((prep / "keys.json").read_text())["bucket_sizes"][k]
    if len(contacts) != expected:  # step 1 and the chunk must agree on who is a contact
        raise RuntimeError(f"chunk {k}: {len(contacts)} contacts after hygiene, {expected} expected")
    stages = _read_parts(prep, "stages", k).to_pandas()
    events = _read_parts(prep, "events", k).to_pandas()
    t1 = time.perf_counter()
    res = score_chunk(contacts, events, stages, _WORKER["scorer"], as_of=pd.Timestamp(as_of),
                      scored_at=pd.Timestamp(scored_at), reasons=reasons, predict=_WORKER["predict"])
    t2 = time.perf_counter()
    out = Path(chunks_dir)
    write_parquet_atomic(pa.Table.from_pandas(res.rejects, schema=REJECT_SCHEMA, preserve_index=False),
                         out / f"rejects-{k:05d}.parquet")
    stats = {**res.stats, "bucket": k, "seconds_read": t1 - t0}
    write_text_atomic(out / f"stats-{k:05d}.json", json.dumps(stats))
    write_parquet_atomic(res.table, out / f"part-{k:05d}.parquet", compression="zstd")  # commit
    stats["seconds_write"] = time.perf_counter() - t2
    return stats


def _pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    # forkserver: no fork of a process whose OpenMP (LightGBM) threads already ran
    ctx = mp.get_context("forkserver")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer,
                               initargs=initargs)


Call = tuple[Callable[..., Any], tuple, int]  # function, arguments, progress weight
#: runs calls (in any order, in parallel where it can) and reports each result to ``on_done``
Runner = Callable[[list[Call], Callable[[int, Any], None]], None]


def local_runner(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Runner:
    """A :data:`Runner` on a pool of ``workers`` processes (one: in this process)."""
    def run(calls: list[Call], on_done: Callable[[int, Any], None]) -> None:
        if len(calls) > 1 and workers > 1:
            with _pool(min(workers, len(calls)), initializer, initargs) as pool:
                _run_tasks(pool, calls, on_done)
            return
        if initializer is not None and calls:
            initializer(*initargs)
        for fn, args, weight in calls:
            on_done(weight, fn(*args))

    return run


def _run_tasks(pool: ProcessPoolExecutor, calls: list[Call],
               on_done: Callable[[int, Any], None]) -> None:
    """Submit every call, report each result as it completes; first error cancels the rest."""
    pending: dict[Future, int] = {pool.submit(fn, *args): weight for fn, args, weight in calls}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                weight = pending.pop(fut)
                on_done(weight, fut.result())
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


# ---------------------------------------------------------------------------
# Progress: rich bar on a terminal, plain lines otherwise
# ---------------------------------------------------------------------------


class Progress:
    """A rich progress bar (rows/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self.live = console is not None and getattr(console, "is_terminal", False)
        self._bar: Any = None

    @contextlib.contextmanager
    def task(self, label: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        done = [0]
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            class RateColumn(TextColumn):
                def render(self, task: Any) -> Any:
                    from rich.text import Text

                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s")

            bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TaskProgressColumn(), RateColumn(""), TimeElapsedColumn(),
                               TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                               transient=False)
            with bar:
                tid = bar.add_task(label, total=total)

                def advance(n: int) -> None:
                    bar.advance(tid, n)

                yield advance
            return

        def advance_plain(n: int) -> None:
            done[0] += n
            elapsed = time.perf_counter() - start
            rate = done[0] / elapsed if elapsed > 0 else 0.0
            eta = (total - done[0]) / rate if rate > 0 else float("nan")
            msg = (f"{label}: {done[0]:,}/{total:,} {unit} ({100 * done[0] / max(total, 1):.0f}%), "
                   f"{rate:,.0f} {unit}/s, elapsed {elapsed:.0f} s, eta {eta:.0f} s")
            log.info(msg)
            if self.console is not None:
                self.console.print(msg, highlight=False)

        yield advance_plain


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _check_options(opts: BatchOptions) -> None:
    if (opts.data is None) == (opts.table is None):
        raise ValueError("give exactly one of --data DIR (contacts, events, stages) or --table FILE")
    if opts.table is not None and opts.engine != "local":
        raise ValueError("--table (a CRM export) is scored by the local engine; drop --engine spark")
    if opts.engine not in ("local", "spark"):
        raise ValueError(f"engine: expected local or spark, got {opts.engine!r}")
    if opts.reasons not in REASON_MODES:
        raise ValueError(f"reasons: expected one of {', '.join(REASON_MODES)}, got {opts.reasons!r}")
    if opts.chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if opts.previous is not None and not Path(opts.previous).exists():
        raise FileNotFoundError(f"--previous: {opts.previous} does not exist")
    if Path(opts.out).is_dir() and opts.engine == "local":
        raise FileExistsError(f"--out {opts.out} is a directory; give a file name")


def _parse_as_of(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(f"--as-of: not a date: {value!r} (expected e.g. 2026-07-01)") from None
    if ts is pd.NaT or pd.isna(ts):
        raise ValueError(f"--as-of: not a date: {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def resolve_scorer(model_uri: str | None, *, num_threads: int = 1) -> tuple[Any, str]:
    """The scorer that answers (champion, ``--model`` or rules) and its exact reference.

    The reference (``models:/lead-scoring/7`` or ``rules:<version>``) goes into the manifest so
    that a resumed run uses the very same model even if the champion alias moved.
    """
    from training.registry import load_scorer, resolve

    scorer = load_scorer(model_uri, num_threads=num_threads)
    if scorer.scorer == "model":
        try:
            uri = resolve(model_uri)[0]
        except Exception:  # noqa: BLE001 - a local path loads without a registry
            uri = model_uri or ""
        return scorer, uri
    return scorer, f"rules:{scorer.model_version}"


def _load_for_resume(manifest: dict[str, Any], *, num_threads: int = 1) -> Any:
    """The very scorer an interrupted run used (exact model version, or the rule scorer)."""
    from training.model import RulesOnly
    from training.registry import load_scorer
    from training.rules import RuleScorer

    ref = manifest["model_ref"]
    if ref.startswith("object:"):
        raise ValueError("cannot resume: the interrupted run was given a scorer object, not a model URI")
    if ref.startswith("rules:"):
        scorer = RulesOnly(RuleScorer(), reason=manifest.get("scorer_reason", "no model"))
        if f"rules:{scorer.model_version}" != ref:
            raise ValueError(f"cannot resume: the rule scorer changed since the run started ({ref})")
        return scorer
    scorer = load_scorer(ref, num_threads=num_threads)
    if scorer.scorer != "model":
        raise ValueError(f"cannot resume: model {ref} used by the interrupted run no longer loads")
    return scorer


def run_batch(opts: BatchOptions, *, console: Any | None = None, workers: int | None = None,
              scorer: Any | None = None) -> BatchSummary:
    """Rescore the whole base; see the module docstring.

    Parameters
    ----------
    opts
        The options of ``leadscore score``.
    console
        A rich console for progress and messages (None: silent, logging only).
    workers
        Worker processes (default: ``LEADSCORE_WORKERS``, else the CPU count, at most 8). With
        one worker everything runs in this process and LightGBM uses every core.
    scorer
        A scorer object to use instead of the registry (tests, benchmarks).

    Notes
    -----
    The local engine starts worker processes (``forkserver``): a script calling this must do
    so under ``if __name__ == "__main__":``, as for any :mod:`multiprocessing` program.

    Raises
    ------
    ValueError, FileNotFoundError, FileExistsError
        Bad options or inputs, with a message fit for the console (no traceback needed).
    """
    _check_options(opts)
    out = Path(opts.out).absolute()
    if out.exists() and not opts.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if opts.table is not None:
        return run_table(opts, console=console, scorer=scorer)
    if not Path(opts.data).is_dir():
        raise FileNotFoundError(f"data directory {opts.data} does not exist")
    if opts.engine == "spark":
        from serving.spark_engine import run_spark

        return run_spark(opts, console=console, scorer=scorer)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = workers or int(os.environ.get("LEADSCORE_WORKERS", "0") or 0) or min(os.cpu_count() or 1, 8)
    ws = Workspace(out)
    ws.lock()
    try:
        summary = _run_local(opts, ws, console=console, workers=workers, scorer=scorer)
    except (ValueError, FileNotFoundError, FileExistsError):
        # bad input or options: nothing worth resuming (unless an earlier run's work is there)
        if not (ws.exists() and opts.resume) and not _foreign_work(ws):
            ws.remove()
        ws.unlock()
        raise
    except BaseException:
        ws.unlock()  # a crash: the work stays for --resume
        raise
    ws.remove()
    return summary


def _foreign_work(ws: Workspace) -> bool:
    """Whether the work directory holds an earlier interrupted run (which we must not delete)."""
    return ws.exists() and ws.manifest().get("pid") != os.getpid()


def _say(console: Any | None, msg: str) -> None:
    log.info(msg)
    if console is not None:
        console.print(msg, highlight=False)


def _run_local(opts: BatchOptions, ws: Workspace, *, console: Any | None, workers: int,
               scorer: Any | None) -> BatchSummary:
    t_start = time.perf_counter()
    data = Path(opts.data)
    paths = {name: table_path(data, name) for name in schema.TABLES}
    inputs = fingerprint(list(paths.values()))
    as_of_opt = _parse_as_of(opts.as_of)
    resumed = False
    if ws.exists():
        old = ws.manifest()
        if opts.resume:
            _check_resumable(old, inputs, opts, as_of_opt)
            resumed = True
            manifest = old
            _say(console, f"resuming the interrupted run of {old['started']} "
                          f"({len(ws.done_chunks())} chunks already committed)")
        elif opts.overwrite:
            _say(console, f"discarding the interrupted run's work in {ws.root}")
            _clear_work(ws)
        else:
            raise FileExistsError(
                f"an interrupted run left its work in {ws.root}: pass --resume to continue it, "
                "or --overwrite to start again")
    elif opts.resume:
        _say(console, "nothing to resume: starting a new run")

    if resumed:
        scorer = scorer or _load_for_resume(manifest)
        model_ref = manifest["model_ref"]
    else:
        _clear_work(ws)
        if scorer is None:
            scorer, model_ref = resolve_scorer(opts.model_uri)
        else:
            model_ref = f"object:{getattr(scorer, 'model_name', '?')}/{getattr(scorer, 'model_version', '?')}"
        manifest = {
            "version": MANIFEST_VERSION, "engine": "local", "pid": os.getpid(),
            "started": pd.Timestamp.now(tz="UTC").isoformat(),
            "inputs": inputs, "as_of_option": None if as_of_opt is None else str(as_of_opt),
            "scored_at": str(pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")),
            "model_ref": model_ref, "model_option": opts.model_uri,
            "scorer_reason": scorer.info().get("reason"),
            "chunk_size": opts.chunk_size, "reasons": opts.reasons,
        }
        ws.write_manifest(manifest)
    scored_at = pd.Timestamp(manifest["scored_at"])
    threads = 1 if workers > 1 else max(os.cpu_count() or 1, 1)
    summary = execute(opts, ws, paths, scorer, scored_at, engine="local",
                      make_runner=lambda *init: local_runner(workers, *init), child=workers > 1,
                      threads=threads, console=console)
    summary.seconds["total"] = time.perf_counter() - t_start
    return summary


def execute(opts: BatchOptions, ws: Workspace, paths: dict[str, Path], scorer: Any,
            scored_at: pd.Timestamp, *, engine: str, make_runner: Callable[..., Runner], child: bool,
            threads: int, console: Any | None) -> BatchSummary:
    """Steps 1-5 in ``ws`` (each skipped where an interrupted run finished it), tasks run by
    ``make_runner(initializer=None, initargs=())``: a process pool, or Spark's executors."""
    seconds: dict[str, float] = {}
    # 1-2: preparation
    prep = ws.prepared()
    if prep is None:
        t0 = time.perf_counter()
        prep = _prepare(paths, ws, _parse_as_of(opts.as_of), opts.chunk_size, run=make_runner(),
                        child=child, console=console)
        seconds["prepare"] = time.perf_counter() - t0
    as_of = pd.Timestamp(prep["as_of"])
    n_buckets = int(prep["n_buckets"])

    # 3-4: chunks
    t0 = time.perf_counter()
    ws.chunks.mkdir(parents=True, exist_ok=True)
    for tmp in ws.chunks.glob("*.tmp"):
        tmp.unlink()
    done = ws.done_chunks()
    todo = [k for k in range(n_buckets) if k not in done]
    sizes = prep["bucket_sizes"]
    total = int(sum(sizes))
    info = scorer.info()
    with Progress(console).task("scoring", total, "contacts") as advance:
        if done:
            advance(int(sum(sizes[k] for k in done)))
        calls = [(_score_chunk_task, (k, str(ws.prep), str(ws.chunks), str(as_of), str(scored_at),
                                      opts.reasons), sizes[k]) for k in todo]
        make_runner(_init_worker, (scorer, threads))(calls, lambda w, _: advance(w))
    seconds["score"] = time.perf_counter() - t0

    # 5: assembly
    t0 = time.perf_counter()
    summary = _assemble(opts, ws, prep, n_buckets, info, as_of, scored_at, console, engine=engine,
                        layout="file" if engine == "local" else "directory")
    seconds["assemble"] = time.perf_counter() - t0
    summary.seconds = {**seconds, **summary.seconds}
    summary.chunks_resumed = len(done)
    return summary


def _clear_work(ws: Workspace) -> None:
    for p in (ws.prep, ws.chunks):
        shutil.rmtree(p, ignore_errors=True)
    if ws.manifest_path.exists():
        ws.manifest_path.unlink()


def _check_resumable(old: dict[str, Any], inputs: list[dict[str, Any]], opts: BatchOptions,
                     as_of: pd.Timestamp | None) -> None:
    problems = []
    if old.get("version") != MANIFEST_VERSION or old.get("engine") != "local":
        problems.append("it was written by another version or engine")
    if old.get("inputs") != inputs:
        problems.append("the input files changed")
    if old.get("as_of_option") != (None if as_of is None else str(as_of)):
        problems.append(f"--as-of differs (was {old.get('as_of_option')})")
    if old.get("chunk_size") != opts.chunk_size:
        problems.append(f"--chunk-size differs (was {old.get('chunk_size')})")
    if old.get("reasons") != opts.reasons:
        problems.append(f"--reasons differs (was {old.get('reasons')})")
    if old.get("model_option") != opts.model_uri:
        problems.append(f"--model differs (was {old.get('model_option') or 'the champion'})")
    if problems:
        raise ValueError("cannot resume: " + "; ".join(problems)
                         + ". Pass --overwrite (without --resume) to start again.")


def _reject_files(ws: Workspace, n_buckets: int) -> list[Path]:
    files = [ws.prep / "rejects.parquet"]
    for name in schema.TABLES:
        files += [d / "rejects.parquet" for d in sorted((ws.prep / name).glob(_TASK_DIRS))]
    files += [ws.chunks / f"rejects-{k:05d}.parquet" for k in range(n_buckets)]
    return [f for f in files if f.exists()]


def _assemble(opts: BatchOptions, ws: Workspace, prep: dict[str, Any], n_buckets: int,
              info: dict[str, Any], as_of: pd.Timestamp, scored_at: pd.Timestamp,
              console: Any | None, *, engine: str = "local", layout: str = "file") -> BatchSummary:
    """Step 5: summary, rejects, movers, then the output (the commit).

    ``layout="file"``: one Parquet file for the scores and one for the rejects;
    ``"directory"``: Parquet directories (``part-<chunk>.parquet``, ``_SUCCESS``), the chunk
    files moved into place rather than copied.
    """
    out = Path(opts.out).absolute()
    rejects_path = companion(out, "rejects")
    movers_path = companion(out, "movers") if opts.previous is not None else None
    summary = BatchSummary(out=out, rejects_path=rejects_path, movers_path=movers_path, engine=engine,
                           scorer=info, as_of=as_of, scored_at=scored_at, chunks=n_buckets,
                           contacts_read=prep["contacts_read"], contacts=prep["contacts"],
                           unknown_event_types=prep["unknown_event_types"],
                           seconds=dict(prep.get("seconds", {})))
    for k in range(n_buckets):
        st = json.loads((ws.chunks / f"stats-{k:05d}.json").read_text())
        summary.eligible += st["scored"]
        summary.fallback_chunks += int(st["fallback"])
        for key, target in (("bands", summary.bands), ("scorers", summary.scorers),
                            ("not_eligible", summary.not_eligible)):
            for b, v in st[key].items():
                target[b] = target.get(b, 0) + v
    summary.bands = {b: summary.bands.get(b, 0) for b in schema.BANDS}

    # rejects (streamed), then movers, then the output (the commit)
    tmp_rej = rejects_path.with_name(f".{rejects_path.name}.tmp")
    tmp_out = out.with_name(f".{out.name}.tmp")
    for t in (tmp_out, tmp_rej):
        _remove(t)
    rej_file = tmp_rej
    if layout == "directory":
        tmp_rej.mkdir()
        rej_file = tmp_rej / "part-00000.parquet"
    counts: dict[tuple[str, str], int] = {}
    with pq.ParquetWriter(rej_file, REJECT_SCHEMA, compression="zstd") as w:
        for f in _reject_files(ws, n_buckets):
            t = pq.read_table(f, schema=REJECT_SCHEMA)
            if t.num_rows:
                w.write_table(t)
                for d in t.group_by(["table", "reason"]).aggregate([("row", "count")]).to_pylist():
                    counts[(d["table"], d["reason"])] = counts.get((d["table"], d["reason"]), 0) + d["row_count"]
    order = {name: i for i, name in enumerate(schema.TABLES)}
    summary.rejects = pd.DataFrame(
        sorted(((t, r, n) for (t, r), n in counts.items()), key=lambda x: (order.get(x[0], 9), -x[2], x[1])),
        columns=["table", "reason", "rows"])
    try:
        if layout == "directory":
            tmp_out.mkdir()
            for k in range(n_buckets):
                if pq.read_metadata(ws.chunk_path(k)).num_rows:
                    os.replace(ws.chunk_path(k), tmp_out / f"part-{k:05d}.parquet")
            if not any(tmp_out.iterdir()):  # no scores at all: still a readable, typed directory
                pq.write_table(OUTPUT_SCHEMA.empty_table(), tmp_out / "part-00000.parquet")
            for d in (tmp_out, tmp_rej):
                (d / "_SUCCESS").touch()
        else:
            with pq.ParquetWriter(tmp_out, OUTPUT_SCHEMA, compression="zstd") as w:
                for k in range(n_buckets):
                    t = pq.read_table(ws.chunk_path(k))
                    if t.num_rows:
                        w.write_table(t)
            _fsync(tmp_out)
            _fsync(tmp_rej)
        if opts.previous is not None:
            current = pd.read_parquet(tmp_out, columns=["contact_id", "band", "score", "probability"])
            previous = read_previous(Path(opts.previous))
            movers, counts_prev = compare_previous(current, previous)
            del current, previous
            summary.previous = counts_prev
            write_parquet_atomic(pa.Table.from_pandas(movers, preserve_index=False), movers_path)
        replace_path(tmp_rej, rejects_path)
        replace_path(tmp_out, out)  # the commit
    finally:
        for t in (tmp_out, tmp_rej):
            _remove(t)
    _say(console, f"wrote {summary.eligible:,} scores to {out}")
    return summary


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(tmp: Path, target: Path) -> None:
    """Move a finished file or directory into place, replacing what is there (file or directory)."""
    if not (target.is_dir() and not target.is_symlink()) and not tmp.is_dir():
        os.replace(tmp, target)  # a file over a file: atomic
        return
    old = target.with_name(f".{target.name}.old")
    _remove(old)
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(tmp, target)
    _remove(old)


def run_table(opts: BatchOptions, *, console: Any | None = None, scorer: Any | None = None
              ) -> BatchSummary:
    """``--table``: score a one-row-per-lead CRM export with a model trained on such a table
    (:func:`training.crm.score_table`, the cleaning stored with the model).

    The table is read whole (CRM exports are one row per lead) and scored in row chunks; the
    output is committed by an atomic rename as for ``--data``. One pass, so ``--resume`` simply
    runs it again. ``as_of`` is null: the table's aggregates are as of its export.
    """
    from training.crm import read_table, score_table

    t_start = time.perf_counter()
    out = Path(opts.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    if scorer is None:
        scorer, _ = resolve_scorer(opts.model_uri)
    frame = read_table(opts.table)
    if len(frame) == 0:
        raise DataError(f"{Path(opts.table).name}: the table has no rows: nothing to score")
    scored_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    rejects_path = companion(out, "rejects")
    summary = BatchSummary(out=out, rejects_path=rejects_path, movers_path=None, engine="local",
                           scorer=scorer.info(), as_of=scored_at, scored_at=scored_at,
                           contacts_read=len(frame), contacts=len(frame))
    tmp_out = out.with_name(f".{out.name}.tmp")
    rejects: list[pd.DataFrame] = []
    try:
        with pq.ParquetWriter(tmp_out, OUTPUT_SCHEMA, compression="zstd") as w:
            for start in range(0, len(frame), opts.chunk_size):
                part = frame.iloc[start:start + opts.chunk_size]
                res = score_table(scorer, part, scored_at=scored_at, reasons=opts.reasons == "all")
                want = np.full(len(res), opts.reasons == "all")
                if opts.reasons == "top":
                    want = np.isin(res["band"].to_numpy(dtype=object), TOP_BANDS)
                    if want.any():
                        top = score_table(scorer, part.iloc[np.flatnonzero(want)], scored_at=scored_at)
                        res.loc[np.flatnonzero(want), "reasons"] = pd.Series(
                            list(top["reasons"]), index=np.flatnonzero(want), dtype=object)
                res = res.reset_index(drop=True)
                bad = ~np.isfinite(res["probability"].to_numpy(dtype="float64"))
                if bad.any():
                    rejects.append(pd.DataFrame({"table": "table", "row": np.flatnonzero(bad) + start,
                                                 "contact_id": res.loc[bad, "contact_id"].astype(str),
                                                 "reason": NOT_SCORABLE}))
                    res, want = res.loc[~bad].reset_index(drop=True), want[~bad]
                table = _outputs_table(res, want, scored_at, None)
                w.write_table(table)
                for d in pc.value_counts(table.column("band")).to_pylist():
                    summary.bands[d["values"]] = summary.bands.get(d["values"], 0) + d["counts"]
                for d in pc.value_counts(table.column("scorer")).to_pylist():
                    summary.scorers[d["values"]] = summary.scorers.get(d["values"], 0) + d["counts"]
                summary.eligible += table.num_rows
        rej = concat_rejects(rejects)
        write_parquet_atomic(pa.Table.from_pandas(rej, schema=REJECT_SCHEMA, preserve_index=False),
                             rejects_path)
        if len(rej):
            summary.rejects = pd.DataFrame({"table": ["table"], "reason": [NOT_SCORABLE], "rows": [len(rej)]})
        if opts.previous is not None:
            current = pd.read_parquet(tmp_out, columns=["contact_id", "band", "score", "probability"])
            movers, summary.previous = compare_previous(current, read_previous(Path(opts.previous)))
            summary.movers_path = companion(out, "movers")
            write_parquet_atomic(pa.Table.from_pandas(movers, preserve_index=False), summary.movers_path)
        os.replace(tmp_out, out)  # the commit
    finally:
        if tmp_out.exists():
            tmp_out.unlink()
    summary.bands = {b: summary.bands.get(b, 0) for b in schema.BANDS}
    summary.chunks = math.ceil(len(frame) / opts.chunk_size)
    summary.seconds = {"total": time.perf_counter() - t_start}
    _say(console, f"wrote {summary.eligible:,} scores to {out}")
    return summary


def read_previous(path: Path) -> pd.DataFrame:
    """The previous night's scores (a Parquet file or directory): id, band, score, probability."""
    import pyarrow.dataset as pa_ds

    try:
        ds = pa_ds.dataset(path, format="parquet")
        cols = [c for c in ("contact_id", "band", "score", "probability") if c in ds.schema.names]
        for c in ("contact_id", "band"):
            if c not in cols:
                raise ValueError(f"--previous {path.name}: required column {c!r} is missing")
        return ds.to_table(columns=cols).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"--previous: cannot read {path.name}: {safe_reason(e)}") from None


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    """``python -m serving.batch`` = ``leadscore score``."""
    from serving.cli import app

    return app(["score", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
