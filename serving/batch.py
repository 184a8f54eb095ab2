"""Batch rescoring of the whole contact base: ``leadscore score``.

Every night operations rescore every eligible contact (created by the as-of date, not
converted, not disqualified: :meth:`features.build.Snapshotter.features_at`) with the
champion model, or the rule scorer when there is none, exactly as the HTTP service does
(:func:`training.registry.load_scorer`).

How a run goes (``engine="local"``)
-----------------------------------
1. **Contacts and stage changes** are read whole (they fit in memory: a few hundred bytes
   per contact), validated (:func:`features.io.validate_tables`) and cleaned
   (:func:`features.hygiene.clean`: duplicates merged, unknown contacts and future rows
   rejected), in a child process whose memory is returned before the next steps.
   Deduplication needs every contact at once (memory grows with the number of contacts:
   ~2 GB for 1M, ~5.8 GB for 4M); nothing else does.
2. **Contacts are split into buckets** by a stable hash of their (canonical) id:
   ``n_buckets = ceil(contacts / chunk_size)``; a bucket is a chunk of work.
3. **Events** (tens of millions of rows, in any order) are streamed once, in batches,
   by a pool of processes: each batch is validated with the same
   :func:`~features.io.validate_tables`, attached to its contact with hygiene's own
   rule (unknown contact / future timestamp -> rejects, duplicates -> canonical id) and
   split into one temporary Parquet file per bucket and task. A chunk then reads only its
   own events: memory is bounded by the chunk size, not by the number of events.
4. **Chunks are scored** by a pool of processes (LightGBM with one thread each: two
   processes on two cores beat one process with two threads, since feature building and
   Parquet I/O are single-threaded). Each chunk builds its point-in-time features with
   :class:`~features.build.Snapshotter` (the code path of training and of the service)
   and scores them; the result is committed atomically (write to ``*.tmp``, rename).
5. **Assembly**: the chunk files are concatenated in bucket order into a temporary file
   next to ``out``, which is renamed into place only when complete. The rejects file and
   the movers file (``--previous``) are written first; the output's rename is the commit.

Nothing lost, nothing doubled
-----------------------------
The work lives in ``.<out name>.work/`` next to the output (same file system, so the
final rename is atomic). Its ``manifest.json`` records the inputs (path, size, mtime of
every file), the resolved as-of date, the run's ``scored_at``, the exact model version
(``models:/lead-scoring/7``, not the alias: the champion may move overnight), the chunking
and the reasons mode. ``--resume`` after a crash or a SIGKILL checks the manifest against
the current inputs and options, keeps the preparation if it finished and every committed
chunk, and redoes the rest. Chunks are a pure function of the inputs, so the final output
is byte-for-byte the same as an uninterrupted run's. Without ``--resume`` an interrupted
run's work directory is an error (``--overwrite`` starts again); an existing output is
never replaced without ``--overwrite``; a lock file stops two runs on the same output.

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
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from features import schema
from features.build import Snapshotter
from features.config import FeatureConfig
from features.io import CSV_NULL_VALUES, DataError, concat_rejects, empty_rejects, validate_tables

log = logging.getLogger(__name__)

REASON_MODES: tuple[str, ...] = ("top", "all", "none")
TOP_BANDS: tuple[str, ...] = ("A", "B")
NOT_SCORABLE = "not_scorable"
MANIFEST_VERSION = 1
EVENT_COLUMNS: tuple[str, ...] = ("contact_id", "ts", "event_type", "campaign_id")
STAGE_COLUMNS: tuple[str, ...] = ("contact_id", "ts", "stage")
CONTACT_COLUMNS: tuple[str, ...] = (*schema.CONTACTS.columns, "email_quality", "has_phone")
_BAND_RANK = {b: i for i, b in enumerate(schema.BANDS)}  # A=0 best
_EVENT_TASK_ROWS = 4_000_000  # rows of the events table per preparation task
_EVENT_BATCH_ROWS = 1 << 20
_TASK_DIRS = "t[0-9][0-9][0-9][0-9][0-9]"  # committed event task directories (not *.tmp)

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
EVENT_FILE_SCHEMA = pa.schema([("contact_id", pa.large_string()), ("ts", pa.timestamp("us")),
                               ("event_type", pa.large_string()), ("campaign_id", pa.large_string())])
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
# Inputs: locating, fingerprinting, reading
# ---------------------------------------------------------------------------


def table_path(data_dir: Path, name: str) -> Path:
    """The file (or directory) holding a table: Parquet wins over CSV, as in the loader."""
    from features.io import _find_file

    return _find_file(Path(data_dir), name)


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


@dataclass(frozen=True)
class EventTask:
    """A slice of the events table for one preparation task."""

    index: int
    path: str
    kind: str  # "parquet" or "csv"
    row_groups: tuple[int, ...]
    row_offset: int
    rows: int


def plan_event_tasks(path: Path, *, rows_per_task: int = _EVENT_TASK_ROWS) -> list[EventTask]:
    """Split the events table into tasks of whole Parquet row groups (CSV: one task)."""
    if not path.name.endswith(".parquet"):
        return [EventTask(0, str(path), "csv", (), 0, -1)]
    tasks: list[EventTask] = []
    offset = 0
    for f in _files_of(path):
        try:
            meta = pq.ParquetFile(f).metadata
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"events: cannot read {f.name}: {_safe(e)}") from None
        groups: list[int] = []
        start, rows = offset, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if groups and rows + n > rows_per_task:
                tasks.append(EventTask(len(tasks), str(f), "parquet", tuple(groups), start, rows))
                groups, start, rows = [], offset, 0
            groups.append(g)
            rows += n
            offset += n
        if groups:
            tasks.append(EventTask(len(tasks), str(f), "parquet", tuple(groups), start, rows))
    return tasks


def _safe(exc: BaseException) -> str:
    from features.io import _safe_reason

    return _safe_reason(exc)


def check_event_columns(path: Path) -> list[str]:
    """The events columns to read (required ones present, else :class:`DataError`)."""
    if path.name.endswith(".parquet"):
        try:
            names = pq.read_schema(_files_of(path)[0]).names if _files_of(path) else []
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"events: cannot read {path.name}: {_safe(e)}") from None
    else:
        from features.io import _csv_header

        try:
            names = _csv_header(path)
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"events: cannot read {path.name}: {_safe(e)}") from None
    for col in schema.EVENTS.required:
        if col not in names:
            raise DataError(f"events: required column {col!r} is missing")
    return [c for c in EVENT_COLUMNS if c in names]


def _event_batches(task: EventTask, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if task.kind == "parquet":
        f = pq.ParquetFile(task.path)
        yield from f.iter_batches(batch_size=_EVENT_BATCH_ROWS, row_groups=list(task.row_groups),
                                  columns=columns, use_threads=False)
        return
    from features.io import _csv_header

    header = _csv_header(Path(task.path))
    convert = pa_csv.ConvertOptions(
        column_types={c: pa.large_string() for c in header}, include_columns=columns,
        null_values=list(CSV_NULL_VALUES), strings_can_be_null=True, quoted_strings_can_be_null=False,
    )
    reader = pa_csv.open_csv(task.path, convert_options=convert,
                             read_options=pa_csv.ReadOptions(block_size=64 << 20))
    yield from reader


# ---------------------------------------------------------------------------
# Preparation: contacts + stages hygiene, buckets, events split by bucket
# ---------------------------------------------------------------------------


@dataclass
class ContactIndex:
    """What the events pass needs to attach an event to its (canonical) contact's bucket."""

    known: pa.Array  # every validated contact id (before deduplication), large_string
    canonical: pa.Array  # canonical id of each known id, large_string
    bucket: np.ndarray  # bucket of each known id's canonical contact, int32
    remap: bool
    export: pd.Timestamp

    def save(self, path: Path) -> None:
        pq.write_table(pa.table({"known": self.known, "canonical": self.canonical,
                                 "bucket": pa.array(self.bucket, pa.int32())}), path)
        path.with_suffix(".json").write_text(json.dumps(
            {"remap": self.remap, "export": str(self.export)}))

    @classmethod
    def load(cls, path: Path) -> ContactIndex:
        t = pq.read_table(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(t.column("known").combine_chunks(), t.column("canonical").combine_chunks(),
                   t.column("bucket").to_numpy(), meta["remap"], pd.Timestamp(meta["export"]))


def contact_index(raw_ids: pd.Series, id_map: pd.DataFrame, canonical_ids: pd.Series,
                  n_buckets: int, export: pd.Timestamp) -> ContactIndex:
    """Known ids -> canonical ids (as :func:`features.hygiene.clean` maps them) -> bucket."""
    known = pa.array(raw_ids.dropna().unique().astype(object), type=pa.large_string())
    known_ids = pd.Series(known.to_numpy(zero_copy_only=False), dtype=object)
    moved = known_ids.map(pd.Series(id_map["contact_id"].to_numpy(dtype=object),
                                    index=id_map["duplicate_id"].to_numpy(dtype=object)))
    canonical = moved.fillna(known_ids).to_numpy(dtype=object)
    buckets = bucket_of(canonical, n_buckets)
    return ContactIndex(known, pa.array(canonical, type=pa.large_string()), buckets,
                        bool(len(id_map)), export)


def attach_events(batch: pd.DataFrame, row_offset: int, index: ContactIndex
                  ) -> tuple[pa.Table, np.ndarray, pd.DataFrame, dict[str, int]]:
    """Validate a batch of raw events and attach each to its canonical contact and bucket.

    The loader's validation (:func:`features.io.validate_tables`) and hygiene's rule
    (``features.hygiene.clean``: an unknown contact, then a future timestamp, make a reject;
    a duplicate's events move to the canonical id), applied batch by batch.

    Returns
    -------
    events, bucket, rejects, unknown_event_types
        Clean events (:data:`EVENT_FILE_SCHEMA`), their bucket, the rejected rows (``row``
        counted from the start of the table) and the unknown event types mapped to "other".
    """
    from features.hygiene import FUTURE_TIMESTAMP, UNKNOWN_CONTACT

    tables = validate_tables(pd.DataFrame(), batch, pd.DataFrame())
    ev = tables.events
    rejects = [tables.rejects.assign(row=tables.rejects["row"] + row_offset)]
    ids = _arrow_str(ev["contact_id"])
    codes = pc.index_in(ids, value_set=index.known)
    unknown = np.asarray(pc.is_null(codes).to_numpy(zero_copy_only=False), dtype=bool)
    future = (ev["ts"] > index.export).to_numpy() & ~unknown
    drop = unknown | future
    if drop.any():
        rows = ev.index.to_numpy().astype(np.int64) + row_offset
        rejects.append(pd.DataFrame({
            "table": "events", "row": rows[drop],
            "contact_id": ev["contact_id"].to_numpy(dtype=object)[drop],
            "reason": np.where(unknown[drop], UNKNOWN_CONTACT, FUTURE_TIMESTAMP),
        }))
    keep = ~drop
    code_np = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)[keep]
    table = pa.table({
        "contact_id": ids,
        "ts": pa.array(ev["ts"].to_numpy(dtype="datetime64[us]"), pa.timestamp("us")),
        "event_type": _arrow_str(ev["event_type"]),
        "campaign_id": _arrow_str(ev["campaign_id"]),
    }, schema=EVENT_FILE_SCHEMA)
    if drop.any():
        table = table.filter(pa.array(keep))
    if index.remap and table.num_rows:
        table = table.set_column(0, "contact_id", pc.take(index.canonical, pa.array(code_np)))
    return table, index.bucket[code_np], concat_rejects(rejects), tables.unknown_event_types


def _arrow_str(s: pd.Series) -> pa.ChunkedArray:
    """A ``str`` Series as Arrow large_string (no copy for pyarrow-backed strings)."""
    arr = pa.array(s.array) if isinstance(s.dtype, pd.StringDtype) else pa.array(
        s.to_numpy(dtype=object), pa.large_string(), from_pandas=True)
    if not isinstance(arr, pa.ChunkedArray):
        arr = pa.chunked_array([arr])
    return arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr


def _event_task(task: EventTask, columns: list[str], index_path: str, n_buckets: int,
                out_dir: str) -> dict[str, Any]:
    """Worker: one slice of the events table -> one Parquet file per bucket (+ rejects)."""
    index = _cached_index(index_path)
    out = Path(out_dir) / f"t{task.index:05d}"
    if out.exists():
        return json.loads((out / "stats.json").read_text()) | {"task": task.index}
    tmp = _tmp_name(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    parts: dict[int, list[pa.Table]] = {}  # the task's events of each bucket (a few hundred MB)
    rejects: list[pd.DataFrame] = []
    unknown: dict[str, int] = {}
    offset, rows, kept = task.row_offset, 0, 0
    try:
        for batch in _event_batches(task, columns):
            raw = _batch_frame(batch)
            ev, bucket, rej, unk = attach_events(raw, offset, index)
            offset += batch.num_rows
            rows += batch.num_rows
            kept += ev.num_rows
            rejects.append(rej)
            for k, v in unk.items():
                unknown[k] = unknown.get(k, 0) + v
            if not ev.num_rows:
                continue
            order = np.argsort(bucket, kind="stable")
            table = ev.take(pa.array(order))
            counts = np.bincount(bucket, minlength=n_buckets)
            start = 0
            for k in np.flatnonzero(counts):
                parts.setdefault(int(k), []).append(table.slice(start, counts[k]))
                start += counts[k]
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"events: cannot read {Path(task.path).name}: {_safe(e)}") from None
    # one file and row group per bucket: many buckets x small slices would make tiny row groups
    for k in sorted(parts):
        pq.write_table(pa.concat_tables(parts.pop(k)).combine_chunks(), tmp / f"b{k:05d}.parquet",
                       compression="lz4", row_group_size=1 << 22)
    rej = concat_rejects(rejects)
    pq.write_table(pa.Table.from_pandas(rej, schema=REJECT_SCHEMA, preserve_index=False),
                   tmp / "rejects.parquet")
    (tmp / "stats.json").write_text(json.dumps({"rows": rows, "kept": kept, "unknown": unknown}))
    try:
        os.replace(tmp, out)  # the task's commit
    except OSError:  # committed meanwhile by an orphaned worker of a killed run: same content
        shutil.rmtree(tmp, ignore_errors=True)
    return {"task": task.index, "rows": rows, "kept": kept}


def _batch_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """A raw Arrow batch as the loader hands tables to validation (ids as text)."""
    cols = {}
    for name, col in zip(batch.schema.names, batch.columns):
        kind = schema.EVENTS.columns.get(name)
        if kind in ("id", "str") and (pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
            col = pc.cast(col, pa.large_string())
        cols[name] = col
    return pa.table(cols).to_pandas()


_INDEX_CACHE: dict[str, ContactIndex] = {}


def _cached_index(path: str) -> ContactIndex:
    if path not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        _INDEX_CACHE[path] = ContactIndex.load(Path(path))
    return _INDEX_CACHE[path]


def read_contacts_and_stages(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw contacts and stages as the loader reads them (events are streamed separately)."""
    from features.io import _read_table

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    return (_read_table(data_dir, schema.CONTACTS, None),
            _read_table(data_dir, schema.STAGE_CHANGES, None))


def _events_end(path: Path) -> pd.Timestamp | None:
    """Latest event timestamp (only needed when there are no stage changes)."""
    if not path.name.endswith(".parquet"):
        return None
    import pyarrow.dataset as pa_ds

    col = pa_ds.dataset(path, format="parquet").to_table(columns=["ts"]).column("ts")
    if not pa.types.is_timestamp(col.type):
        return None
    m = pc.max(col).as_py()
    return None if m is None else pd.Timestamp(m).tz_localize(None) if pd.Timestamp(m).tzinfo else pd.Timestamp(m)


# ---------------------------------------------------------------------------
# The work directory
# ---------------------------------------------------------------------------


class Workspace:
    """``.<out>.work/`` next to the output: manifest, prepared inputs, committed chunks."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.root = out.parent / f".{out.name}.work"
        self.manifest_path = self.root / "manifest.json"
        self.prep = self.root / "prep"
        self.events = self.prep / "events"
        self.chunks = self.root / "chunks"
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
    contacts = pq.read_table(prep / "contacts" / f"b{k:05d}.parquet").to_pandas()
    stages = pq.read_table(prep / "stages" / f"b{k:05d}.parquet").to_pandas()
    files = sorted((prep / "events").glob(f"{_TASK_DIRS}/b{k:05d}.parquet"))
    events = (pa.concat_tables([pq.read_table(f) for f in files]).to_pandas() if files
              else EVENT_FILE_SCHEMA.empty_table().to_pandas())
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


def _run_tasks(pool: ProcessPoolExecutor, calls: list[tuple[Callable, tuple, int]],
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
    seconds: dict[str, float] = {}
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

    # 1-3: preparation (skipped when a resumed run had finished it)
    prep = ws.prepared()
    if prep is None:
        t0 = time.perf_counter()
        prep = _prepare(paths, ws, as_of_opt, opts.chunk_size, workers=workers, console=console)
        seconds["prepare"] = time.perf_counter() - t0
    as_of = pd.Timestamp(prep["as_of"])
    n_buckets = int(prep["n_buckets"])

    # 4: chunks
    t0 = time.perf_counter()
    ws.chunks.mkdir(parents=True, exist_ok=True)
    for tmp in ws.chunks.glob("*.tmp"):
        tmp.unlink()
    done = ws.done_chunks()
    todo = [k for k in range(n_buckets) if k not in done]
    sizes = prep["bucket_sizes"]
    total = int(sum(sizes))
    threads = 1 if workers > 1 else max(os.cpu_count() or 1, 1)
    info = scorer.info()
    with Progress(console).task("scoring", total, "contacts") as advance:
        if done:
            advance(int(sum(sizes[k] for k in done)))
        calls = [(_score_chunk_task, (k, str(ws.prep), str(ws.chunks), str(as_of), str(scored_at),
                                      opts.reasons), sizes[k]) for k in todo]
        if len(todo) > 1 and workers > 1:
            with _pool(min(workers, len(todo)), _init_worker, (scorer, threads)) as pool:
                _run_tasks(pool, calls, lambda w, _: advance(w))
        elif todo:
            _init_worker(scorer, threads)
            for fn, args, weight in calls:
                fn(*args)
                advance(weight)
    seconds["score"] = time.perf_counter() - t0

    # 5: assembly
    t0 = time.perf_counter()
    summary = _assemble(opts, ws, prep, n_buckets, info, as_of, scored_at, console)
    seconds["assemble"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
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


@dataclass
class PreparedBase:
    """Clean contacts and stage changes with their bucket, and what the events pass needs."""

    contacts: pa.Table  # CONTACT_COLUMNS + row (input row) + bucket
    stages: pa.Table  # STAGE_COLUMNS + bucket
    rejects: pd.DataFrame  # contacts and stages rows rejected by validation and hygiene
    index: ContactIndex
    as_of: pd.Timestamp
    export: pd.Timestamp
    n_buckets: int
    contacts_read: int
    event_columns: list[str]
    event_tasks: list[EventTask]

    @property
    def bucket_sizes(self) -> list[int]:
        b = self.contacts.column("bucket").to_numpy()
        return np.bincount(b, minlength=self.n_buckets).tolist()


def prepare_base(paths: dict[str, Path], as_of_opt: pd.Timestamp | None, chunk_size: int,
                 console: Any | None = None) -> PreparedBase:
    """Steps 1-2: read, validate and clean contacts and stages; bucket every contact.

    The as-of date defaults to the data's end (:func:`features.loading.data_end`). Rows up
    to the data's end are not "future" even when an earlier as-of date is scored: they are
    simply not visible yet at that date (the features ignore them).
    """
    from features.hygiene import clean
    from features.io import Tables
    from features.loading import data_end

    event_cols = check_event_columns(paths["events"])
    tasks = plan_event_tasks(paths["events"])
    raw_contacts, raw_stages = read_contacts_and_stages(paths["contacts"].parent)
    contacts_read = len(raw_contacts)
    tables = validate_tables(raw_contacts, pd.DataFrame(), raw_stages)
    del raw_contacts, raw_stages
    if len(tables.contacts) == 0:
        raise DataError("contacts: no valid contacts: the base is empty, nothing to score")
    end = data_end(tables.stages, pd.DataFrame({"ts": []}))
    if len(tables.stages) == 0:
        end = _events_end(paths["events"]) or end
    as_of = as_of_opt if as_of_opt is not None else end
    export = max(as_of, end)
    _say(console, f"read {len(tables.contacts):,} contacts and {len(tables.stages):,} stage changes; "
                  f"as-of {as_of}")
    cleaned = clean(Tables(tables.contacts, tables.events, tables.stages), export_date=export)
    contacts = cleaned.contacts
    n_buckets = max(1, math.ceil(len(contacts) / chunk_size))
    index = contact_index(tables.contacts["contact_id"], cleaned.id_map, contacts["contact_id"],
                          n_buckets, export)
    keep_cols = [c for c in CONTACT_COLUMNS if c in contacts.columns]
    ctab = pa.Table.from_pandas(contacts[keep_cols], preserve_index=False)
    ctab = ctab.append_column("row", pa.array(contacts.index.to_numpy().astype("int64")))
    ctab = ctab.append_column("bucket", pa.array(
        bucket_of(contacts["contact_id"].to_numpy(dtype=object), n_buckets), pa.int32()))
    stages = cleaned.stages
    stab = pa.Table.from_pandas(stages[list(STAGE_COLUMNS)], preserve_index=False)
    stab = stab.append_column("bucket", pa.array(
        bucket_of(stages["contact_id"].to_numpy(dtype=object), n_buckets), pa.int32()))
    return PreparedBase(ctab, stab, concat_rejects([tables.rejects, cleaned.rejects]), index, as_of,
                        export, n_buckets, contacts_read, event_cols, tasks)


def _split_by_bucket(table: pa.Table, n_buckets: int, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    bk = table.column("bucket").to_numpy()
    order = np.argsort(bk, kind="stable")
    table = table.take(pa.array(order)).drop_columns(["bucket"])
    counts = np.bincount(bk, minlength=n_buckets)
    start = 0
    for k in range(n_buckets):
        pq.write_table(table.slice(start, counts[k]), directory / f"b{k:05d}.parquet", compression="lz4")
        start += counts[k]


def _prepare_contacts(paths: dict[str, Path], prep_dir: str, as_of_opt: pd.Timestamp | None,
                      chunk_size: int) -> dict[str, Any]:
    """Steps 1-2 written to ``prep_dir``: bucketed contacts and stages, rejects, contact index.

    Runs in a child process when there are workers: its memory (the whole contact base and its
    hygiene) goes back to the system before the events pass and the chunks start.
    """
    prep = Path(prep_dir)
    t0 = time.perf_counter()
    base = prepare_base(paths, as_of_opt, chunk_size, None)
    base.index.save(prep / "index.parquet")
    t1 = time.perf_counter()
    _split_by_bucket(base.contacts, base.n_buckets, prep / "contacts")
    _split_by_bucket(base.stages, base.n_buckets, prep / "stages")
    pq.write_table(pa.Table.from_pandas(base.rejects, schema=REJECT_SCHEMA, preserve_index=False),
                   prep / "rejects.parquet")
    return {"as_of": str(base.as_of), "export": str(base.export), "n_buckets": base.n_buckets,
            "bucket_sizes": base.bucket_sizes, "contacts_read": base.contacts_read,
            "contacts": base.contacts.num_rows, "stages": base.stages.num_rows,
            "tasks": base.event_tasks, "event_columns": base.event_columns,
            "seconds": {"contacts_and_stages": t1 - t0, "split_contacts": time.perf_counter() - t1}}


def _prepare(paths: dict[str, Path], ws: Workspace, as_of_opt: pd.Timestamp | None, chunk_size: int,
             *, workers: int, console: Any | None) -> dict[str, Any]:
    """Steps 1-3 for the local engine: prepared inputs of every bucket in ``ws.prep``."""
    shutil.rmtree(ws.prep, ignore_errors=True)
    ws.prep.mkdir(parents=True)
    t0 = time.perf_counter()
    if workers > 1:
        with _pool(1) as pool:
            prep = pool.submit(_prepare_contacts, paths, str(ws.prep), as_of_opt, chunk_size).result()
    else:
        prep = _prepare_contacts(paths, str(ws.prep), as_of_opt, chunk_size)
    _say(console, f"{prep['contacts']:,} contacts (of {prep['contacts_read']:,} read) and "
                  f"{prep['stages']:,} stage changes; as-of {prep['as_of']}")
    n_buckets = prep["n_buckets"]
    tasks, event_cols = prep.pop("tasks"), prep.pop("event_columns")
    prep["event_tasks"] = len(tasks)
    seconds = prep.pop("seconds")
    t2 = time.perf_counter()

    # events, split by bucket, in parallel
    ws.events.mkdir()
    total_rows = sum(t.rows for t in tasks if t.rows >= 0)
    calls = [(_event_task, (t, event_cols, str(ws.prep / "index.parquet"), n_buckets,
                            str(ws.events)), t.rows) for t in tasks]
    with Progress(console).task("events", max(total_rows, 1), "rows") as advance:
        if len(tasks) > 1 and workers > 1:
            with _pool(min(workers, len(tasks))) as pool:
                _run_tasks(pool, calls, lambda w, r: advance(w if w >= 0 else r["rows"]))
        else:
            for fn, args, weight in calls:
                r = fn(*args)
                advance(weight if weight >= 0 else r["rows"])
    t3 = time.perf_counter()
    unknown: dict[str, int] = {}
    for d in sorted(ws.events.glob(_TASK_DIRS)):
        st = json.loads((d / "stats.json").read_text())
        for k, v in st["unknown"].items():
            unknown[k] = unknown.get(k, 0) + v
    prep["unknown_event_types"] = dict(sorted(unknown.items(), key=lambda kv: -kv[1]))
    prep["seconds"] = {**seconds, "prepare_contacts": t2 - t0, "events": t3 - t2}
    write_text_atomic(ws.prep / "done.json", json.dumps(prep))
    return prep


def _reject_files(ws: Workspace, n_buckets: int) -> list[Path]:
    files = [ws.prep / "rejects.parquet"]
    files += [d / "rejects.parquet" for d in sorted(ws.events.glob(_TASK_DIRS))]
    files += [ws.chunks / f"rejects-{k:05d}.parquet" for k in range(n_buckets)]
    return [f for f in files if f.exists()]


def _assemble(opts: BatchOptions, ws: Workspace, prep: dict[str, Any], n_buckets: int,
              info: dict[str, Any], as_of: pd.Timestamp, scored_at: pd.Timestamp,
              console: Any | None) -> BatchSummary:
    out = Path(opts.out).absolute()
    rejects_path = companion(out, "rejects")
    movers_path = companion(out, "movers") if opts.previous is not None else None
    summary = BatchSummary(out=out, rejects_path=rejects_path, movers_path=movers_path, engine="local",
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
    counts: dict[tuple[str, str], int] = {}
    with pq.ParquetWriter(tmp_rej, REJECT_SCHEMA, compression="zstd") as w:
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
    tmp_out = out.with_name(f".{out.name}.tmp")
    try:
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
        os.replace(tmp_rej, rejects_path)
        os.replace(tmp_out, out)  # the commit
    finally:
        for t in (tmp_out, tmp_rej):
            if t.exists():
                t.unlink()
    _say(console, f"wrote {summary.eligible:,} scores to {out}")
    return summary


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
        raise DataError(f"--previous: cannot read {path.name}: {_safe(e)}") from None


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    """``python -m serving.batch`` = ``leadscore score``."""
    from serving.cli import app

    return app(["score", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
