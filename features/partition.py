"""The base partitioned by contact: every table split into buckets, one bucket at a time.

A base of millions of contacts and tens of millions of events does not fit in memory as
pandas frames. Both the nightly batch (:mod:`serving.batch`) and training on a large base
(:func:`features.training_set.partitioned_training_set`) read it through this module:

1. **Link the base** from its key columns only: ``contact_id``, ``created_at`` and ``email``
   of every contact, in batches (emails normalised batch by batch), and the stage changes'
   timestamps for the data's end. :func:`features.hygiene.canonical_rows` links duplicates
   (same id or same valid email, transitively) exactly as :func:`~features.hygiene.clean`
   does, and every contact row gets the **bucket** of its canonical contact (a stable hash of
   the canonical id: ``n_buckets = ceil(contacts / chunk_size)``). About 0.2 GB per million
   contacts, never the contact rows; it runs in a child process when there are workers, so
   its memory goes back to the system before step 2.
2. **Every table is read in slices** (whole Parquet row groups; a CSV file is one slice),
   batch by batch: each batch is validated with the loader's own
   :func:`~features.io.validate_tables` (its table-level checks counted across slices and
   decided once, as for the whole table), then contacts take their bucket from step 1, events
   and stage changes are attached to their contact with hygiene's rule (unknown contact /
   future timestamp -> rejects, duplicates -> canonical id); every slice writes one
   Parquet file per bucket, committed by renaming its directory.
3. **A bucket is cleaned when it is read** (:func:`read_bucket`): a bucket holds every
   duplicate of its contacts, so :func:`~features.hygiene.clean_contacts` gives, bucket by
   bucket, exactly the contacts hygiene gives on the whole base.

Memory is bounded by the slice and bucket sizes, not by the size of the base. Every step
is a pure function of the inputs, so an interrupted preparation can be resumed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import schema
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
    tmp_name,
    validate_tables,
    write_text_atomic,
)
from features.loading import data_end
from features.tasks import Progress, Runner, process_pool, say

EVENT_COLUMNS: tuple[str, ...] = ("contact_id", "ts", "event_type", "campaign_id")
STAGE_COLUMNS: tuple[str, ...] = ("contact_id", "ts", "stage")
#: a bucket's clean contacts: hygiene's columns, and what it filled from later duplicates
#: (``filled_fields``, ``filled_at``: read by :class:`features.build.Snapshotter`)
CONTACT_COLUMNS: tuple[str, ...] = (*schema.CONTACTS.columns, "email_quality", "has_phone",
                                    "filled_fields", "filled_at")
# step 2 reads each table in slices of whole row groups (about this many rows; a slice holds its
# rows of every bucket until it writes them) and a slice in batches of this many rows
_SLICE_ROWS = {"contacts": 1_000_000, "events": 4_000_000, "stages": 4_000_000}
_SLICE_BATCH_ROWS = {"contacts": 1 << 18, "events": 1 << 20, "stages": 1 << 20}
_KEY_BATCH_ROWS = 1 << 20  # step 1: rows of key columns per batch
_TASK_DIRS = "t[0-9][0-9][0-9][0-9][0-9]"  # committed slice directories (not *.tmp)
_STR = pd.StringDtype("pyarrow", na_value=np.nan)

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
                                  ("filled_fields", pa.int16()), ("filled_at", pa.timestamp("us")),
                                  ("row", pa.int64())])
SLICE_SCHEMAS: dict[str, pa.Schema] = {"contacts": CONTACT_SLICE_SCHEMA, "events": EVENT_FILE_SCHEMA,
                                       "stages": STAGE_FILE_SCHEMA}
SLICE_COLUMNS: dict[str, tuple[str, ...]] = {"contacts": tuple(schema.CONTACTS.columns),
                                             "events": EVENT_COLUMNS, "stages": STAGE_COLUMNS}
REJECT_SCHEMA = pa.schema(
    [("table", pa.string()), ("row", pa.int64()), ("contact_id", pa.string()), ("reason", pa.string())]
)


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


def table_path(data_dir: Path, name: str) -> Path:
    """The file (or directory) holding a table: Parquet wins over CSV, as in the loader."""
    return find_table(Path(data_dir), name)


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
    created_min: pd.Timestamp  # the earliest contact's creation (training's first as-of date)
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
        info = {"as_of": str(self.as_of), "export": str(self.export),
                "created_min": str(self.created_min), "n_buckets": self.n_buckets,
                "bucket_sizes": self.bucket_sizes, "contacts_read": self.contacts_read,
                "contacts": self.contacts, "columns": self.columns,
                "slices": [asdict(s) for s in self.slices], "seconds": self.seconds}
        write_text_atomic(prep / "keys.json", json.dumps(info))
        return info


def link_base(paths: dict[str, Path], as_of_opt: pd.Timestamp | None, chunk_size: int, *,
              reject_after_as_of: bool = False) -> BaseKeys:
    """Step 1: read the key columns of the whole base and link duplicates; bucket every contact.

    Only ``contact_id``, ``created_at`` and ``email`` of the contacts are read (in batches: the
    emails are normalised batch by batch), and the stage changes' timestamps for the data's end.
    The export instant (events and stage changes after it are future timestamps) is the as-of
    date with ``reject_after_as_of`` (as :func:`features.loading.load_base` with ``until``),
    else the later of the as-of date and the data's end.
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
            ids.append(arrow_str(c["contact_id"]))
            created.append(c["created_at"].to_numpy(dtype="datetime64[us]"))
            emails.append(arrow_str(normalise_email(c["email"])))
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
        raise DataError("contacts: no valid contacts: the base is empty")
    if end is None:
        end = _events_end(paths["events"]) or data_end(pd.DataFrame({"ts": []}), pd.DataFrame({"ts": []}))
    as_of = as_of_opt if as_of_opt is not None else end
    export = as_of if reject_after_as_of else max(as_of, end)

    rows_np = np.concatenate(rows)
    id_arr = pa.chunked_array([c for a in ids for c in a.chunks], type=pa.large_string()).combine_chunks()
    del ids
    id_s = _str_frame_col(id_arr)
    email_arr = pa.chunked_array([c for a in emails for c in a.chunks], type=pa.large_string())
    del emails
    created_np = np.concatenate(created)
    del created
    canonical_of = canonical_rows(id_s, created_np, _str_frame_col(email_arr))
    del email_arr
    if canonical_of is None:
        canonical_of = np.arange(n, dtype=np.int64)
    is_canonical = canonical_of == np.arange(n)
    created_min = pd.Timestamp(created_np[is_canonical].min())
    del created_np
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
    return BaseKeys(rows_np, row_bucket, index, concat_rejects(rejects), as_of, export, created_min,
                    n_buckets, sizes, read, n_contacts, columns, slices,
                    {"link_read": t1 - t0, "link": time.perf_counter() - t1})


def _str_frame_col(arr: pa.Array | pa.ChunkedArray) -> pd.Series:
    """An Arrow string array as a pandas ``str`` Series (no copy)."""
    out = (arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])).to_pandas()
    return out if out.dtype == _STR else out.astype(_STR)


def _prepare_keys(paths: dict[str, Path], prep_dir: str, as_of_opt: pd.Timestamp | None,
                  chunk_size: int, reject_after_as_of: bool = False) -> dict[str, Any]:
    """Step 1 written to ``prep_dir``. Runs in a child process when there are workers: its memory
    (the key columns of the whole base) goes back to the system before step 2 starts."""
    return link_base(paths, as_of_opt, chunk_size,
                     reject_after_as_of=reject_after_as_of).save(Path(prep_dir))


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
    ids = arrow_str(frame["contact_id"])
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
        cols[col] = arrow_str(frame[col])
    out = pa.table(cols, schema=SLICE_SCHEMAS[table])
    if drop.any():
        out = out.filter(pa.array(keep))
    if index.remap and out.num_rows:
        out = out.set_column(0, "contact_id", index.canonical_ids(code_np).cast(pa.large_string()))
    unknown_types = tables.unknown_event_types if table == "events" else {}
    return out, index.bucket[code_np], concat_rejects(rejects), unknown_types


def arrow_str(s: pd.Series) -> pa.ChunkedArray:
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
    tmp = tmp_name(out)
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


@contextlib.contextmanager
def release_cached_files() -> Iterator[None]:
    """On exit, forget this process's memory-mapped index and keys of a preparation (before
    its directory is removed: a mapped file keeps its disk space, and cannot be deleted on
    Windows)."""
    try:
        yield
    finally:
        _INDEX_CACHE.clear()


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


def read_parts(prep: Path, table: str, k: int) -> pa.Table:
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


def read_bucket(prep: Path, k: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Bucket ``k`` of a prepared base: clean contacts (:func:`bucket_contacts`), events and
    stage changes (every one of them of a contact of the bucket), as pandas frames."""
    contacts = bucket_contacts(read_parts(prep, "contacts", k))
    expected = json.loads((prep / "keys.json").read_text())["bucket_sizes"][k]
    if len(contacts) != expected:  # step 1 and the bucket must agree on who is a contact
        raise RuntimeError(f"bucket {k}: {len(contacts)} contacts after hygiene, {expected} expected")
    return contacts, read_parts(prep, "events", k).to_pandas(), read_parts(prep, "stages", k).to_pandas()


def parse_as_of(value: pd.Timestamp | str | None, option: str = "--as-of") -> pd.Timestamp | None:
    """An as-of date as a naive UTC timestamp (``None`` stays ``None``); ValueError naming
    the command-line ``option`` it came from if it is not a date."""
    if value is None:
        return None
    bad = f"{option}: not a date: {value!r} (expected e.g. 2026-07-01)"
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(bad) from None
    if pd.isna(ts):
        raise ValueError(bad)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def prepare(paths: dict[str, Path], prep: Path, as_of_opt: pd.Timestamp | None, chunk_size: int,
            *, run: Runner, child: bool, console: Any | None,
            reject_after_as_of: bool = False) -> dict[str, Any]:
    """Steps 1-2: the base linked and every table split by bucket into the directory ``prep``.

    ``paths``: the file or directory of each table (:func:`table_path`); ``as_of_opt``: the
    as-of date (default: the data's end); ``chunk_size``: contacts per bucket; ``run``: runs
    step 2's slices; ``child``: step 1 in a child process; ``reject_after_as_of``: events and
    stage changes after the as-of date are rejected as future timestamps, as
    :func:`features.loading.load_base` does with ``until`` (by default they are rejected only
    after the data's end, and those after the as-of date are kept, unused). Step 1 is kept
    once finished, and so is every committed slice of step 2 (what ``--resume`` relies on).
    Returns the preparation's summary (also in ``prep/done.json``).
    """
    t0 = time.perf_counter()
    keys_json = prep / "keys.json"
    if keys_json.exists():
        info = json.loads(keys_json.read_text())
    else:
        shutil.rmtree(prep, ignore_errors=True)
        prep.mkdir(parents=True)
        if child:
            with process_pool(1) as pool:
                info = pool.submit(_prepare_keys, paths, str(prep), as_of_opt, chunk_size,
                                   reject_after_as_of).result()
        else:
            info = _prepare_keys(paths, str(prep), as_of_opt, chunk_size, reject_after_as_of)
    say(console, f"{info['contacts']:,} contacts (of {info['contacts_read']:,} read) in "
                 f"{info['n_buckets']} chunks; as-of {info['as_of']}")
    t1 = time.perf_counter()
    n_buckets = info["n_buckets"]
    slices = [TableSlice(**{**d, "row_groups": tuple(d["row_groups"])}) for d in info["slices"]]
    for name in schema.TABLES:
        (prep / name).mkdir(exist_ok=True)
    total_rows = sum(s.rows for s in slices if s.rows >= 0)
    calls = [(_slice_task, (sl, info["columns"][sl.table], str(prep), n_buckets), sl.rows)
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
    summary = {key: info[key] for key in ("as_of", "export", "created_min", "n_buckets",
                                          "bucket_sizes", "contacts_read", "contacts")}
    summary.update(stages=kept["stages"], events=kept["events"], slices=len(slices),
                   unknown_event_types=dict(sorted(unknown.items(), key=lambda kv: -kv[1])),
                   seconds={**info["seconds"], "prepare_keys": t1 - t0, "prepare_slices": t2 - t1})
    write_text_atomic(prep / "done.json", json.dumps(summary))
    return summary


def prepared_rejects(prep: Path) -> list[Path]:
    """The rejects files of steps 1 and 2 that exist: contacts rows, then each slice's rows."""
    files = [prep / "rejects.parquet"]
    for name in schema.TABLES:
        files += [d / "rejects.parquet" for d in sorted((prep / name).glob(_TASK_DIRS))]
    return [f for f in files if f.exists()]
