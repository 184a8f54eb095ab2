"""``leadscore score --engine spark``: the same batch rescoring on PySpark.

The work is split as in the local engine (:mod:`serving.batch`), with Spark doing the two
heavy, parallel steps:

1. **Driver** (pandas, :func:`serving.batch.prepare_base`): contacts and stage changes are
   read, validated and deduplicated (deduplication needs every contact at once; contacts
   fit in the driver's memory long after events stop fitting anywhere), and every contact
   gets its bucket (:func:`serving.batch.bucket_of`, a stable hash of its id). They are
   written as Parquet into the work directory for the executors.
2. **Events** are read by Spark (``spark.read.parquet``) and attached to their contact with
   ``mapInPandas`` running :func:`serving.batch.attach_events` (the loader's validation and
   hygiene's unknown/future/duplicate rule), batch by batch, on the executors.
3. **Scoring**: events and contacts + stage changes are co-grouped by bucket and
   ``applyInPandas`` runs :func:`serving.batch.score_chunk` on each bucket: the same
   feature and scoring code as the local engine and the service. The scorer is broadcast
   once and deserialised once per executor Python worker (and cached there).
4. Scores are written by Spark as a Parquet **directory** at ``out`` (``part-*.parquet``,
   ordered by bucket and input row, like the local engine's single file), via a temporary
   directory renamed into place when complete; rejects likewise at
   ``<stem>.rejects.parquet``; movers (small) as one file.

Scores equal the local engine's exactly (tested): same buckets, same inputs per bucket,
same code. ``--resume`` is a local-engine feature: Spark retries failed tasks itself, and an
interrupted Spark run leaves nothing in place, so it is simply run again.

The data directory and the output must be visible to the driver and the executors at the
same path (local mode, or a shared file system on a cluster).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import schema
from serving import batch as B

log = logging.getLogger(__name__)

_KIND_SCORE, _KIND_REJECT, _KIND_STAT = "score", "reject", "stat"
_EXECUTOR: dict[str, Any] = {}


def spark_session(master: str | None = None):
    """The active Spark session, or a new one on ``master`` (default ``local[*]``).

    Returns ``(session, created)``; a session this function created is stopped by the caller.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ValueError("--engine spark needs pyspark: pip install 'leadscore[spark]'") from None
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active, False
    # executors' Python = this interpreter (its packages), unless the cluster says otherwise
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master or "local[*]").appName("leadscore-score")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "200000")
        .config("spark.sql.shuffle.partitions", str(max(2 * (os.cpu_count() or 2), 8)))
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", os.environ.get("LEADSCORE_SPARK_DRIVER_MEMORY", "2g"))
    )
    return builder.getOrCreate(), True


def _executor_scorer(payload: Any, token: str) -> tuple[Any, Any]:
    """The broadcast scorer, deserialised once per Python worker, with its compiled predict."""
    key = token
    if _EXECUTOR.get("key") != key:
        scorer = pickle.loads(payload.value)
        if hasattr(scorer, "num_threads"):
            scorer.num_threads = 1  # one task per core: LightGBM on one thread
        predict = None
        if getattr(scorer, "scorer", "") == "model":
            from training.compiled import compiled_predict

            predict = compiled_predict(scorer, threads=1)
        _EXECUTOR.update(key=key, scorer=scorer, predict=predict)
    return _EXECUTOR["scorer"], _EXECUTOR["predict"]


def _output_schema():
    from pyspark.sql.types import (
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampNTZType,
    )

    return StructType([
        StructField("contact_id", StringType()), StructField("probability", DoubleType()),
        StructField("score", LongType()), StructField("band", StringType()),
        StructField("reasons", StringType()), StructField("scorer", StringType()),
        StructField("model_name", StringType()), StructField("model_version", StringType()),
        StructField("scored_at", TimestampNTZType()), StructField("as_of", TimestampNTZType()),
        StructField("kind", StringType()), StructField("bucket", IntegerType()),
        StructField("row", LongType()), StructField("table", StringType()),
    ])


def _attached_schema():
    from pyspark.sql.types import (
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampNTZType,
    )

    return StructType([
        StructField("contact_id", StringType()), StructField("ts", TimestampNTZType()),
        StructField("event_type", StringType()), StructField("campaign_id", StringType()),
        StructField("bucket", IntegerType()), StructField("kind", StringType()),
        StructField("row", LongType()), StructField("reason", StringType()),
    ])


def run_spark(opts: B.BatchOptions, *, console: Any | None = None, scorer: Any | None = None
              ) -> B.BatchSummary:
    """Run ``leadscore score`` with Spark; see the module docstring."""
    if opts.resume:
        B._say(console, "--resume applies to the local engine; Spark reruns the whole job "
                        "(it retries failed tasks itself and leaves nothing partial in place)")
    t_start = time.perf_counter()
    out = Path(opts.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    data = Path(opts.data)
    paths = {name: B.table_path(data, name) for name in schema.TABLES}
    if not paths["events"].name.endswith(".parquet"):
        raise ValueError("--engine spark reads events from Parquet; convert events.csv first "
                         "(or use --engine local)")
    ws = B.Workspace(out)
    ws.lock()
    session = None
    created = False
    try:
        shutil.rmtree(ws.root / "spark", ignore_errors=True)
        work = ws.root / "spark"
        work.mkdir(parents=True)
        if scorer is None:
            scorer, _ = B.resolve_scorer(opts.model_uri)
        info = scorer.info()
        scored_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
        t0 = time.perf_counter()
        base = B.prepare_base(paths, B._parse_as_of(opts.as_of), opts.chunk_size, console)
        pq.write_table(base.contacts, work / "contacts.parquet")
        pq.write_table(base.stages, work / "stages.parquet")
        t1 = time.perf_counter()
        session, created = spark_session(opts.master)
        try:
            summary = _run(session, opts, base, paths, work, scorer, info, scored_at, console)
        except Exception as e:
            _reraise_data_error(e)
            raise
        summary.seconds = {"prepare_driver": t1 - t0, "spark": time.perf_counter() - t1,
                           "total": time.perf_counter() - t_start}
        return summary
    finally:
        if session is not None and created:
            session.stop()
        ws.remove()


def _reraise_data_error(exc: BaseException) -> None:
    """A :class:`~features.io.DataError` raised on an executor comes back wrapped in Spark's
    exception: raise it again as itself, so the CLI prints its message, not a traceback."""
    from features.io import DataError

    m = re.search(r"DataError: ([^\n]+)", str(exc))
    if m:
        raise DataError(m.group(1).strip()) from None


def _file_offsets(base: B.PreparedBase) -> dict[str, int]:
    """Row offset of each events file in the table as the loader concatenates them."""
    offsets: dict[str, int] = {}
    for t in base.event_tasks:
        offsets.setdefault(t.path, t.row_offset)
    return offsets


def _run(spark: Any, opts: B.BatchOptions, base: B.PreparedBase, paths: dict[str, Path], work: Path,
         scorer: Any, info: dict[str, Any], scored_at: pd.Timestamp, console: Any | None
         ) -> B.BatchSummary:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    n_buckets, as_of = base.n_buckets, base.as_of
    index_path = work / "index.parquet"
    base.index.save(index_path)
    index_bytes = index_path.read_bytes()
    index_meta = index_path.with_suffix(".json").read_text()
    bc_index = spark.sparkContext.broadcast((index_bytes, index_meta))
    bc_scorer = spark.sparkContext.broadcast(pickle.dumps(scorer, protocol=pickle.HIGHEST_PROTOCOL))
    offsets = _file_offsets(base)
    cols = base.event_columns
    reasons, as_of_s, scored_at_s = opts.reasons, str(as_of), str(scored_at)

    # 2: events -> attached to their contact's bucket (kind=event) or rejected (kind=reject)
    events = spark.read.parquet(str(paths["events"])).select(
        *cols, F.col("_metadata.row_index").alias("_row_index"),
        F.col("_metadata.file_path").alias("_file_path"))

    token = f"{os.getpid()}-{time.time_ns()}"

    def attach(batches):
        from serving.spark_engine import _attach_batches

        return _attach_batches(batches, token, bc_index, offsets, cols)

    attached = events.mapInPandas(attach, schema=_attached_schema()).persist(StorageLevel.MEMORY_AND_DISK)

    # 3: co-group events with contacts + stages by bucket; score each bucket
    contacts = spark.read.parquet(str(work / "contacts.parquet")).withColumn("_kind", F.lit("c"))
    stages = spark.read.parquet(str(work / "stages.parquet")).withColumn("_kind", F.lit("s"))
    side = contacts.unionByName(stages, allowMissingColumns=True)
    ev = attached.where(F.col("kind") == "event").select("contact_id", "ts", "event_type",
                                                         "campaign_id", "bucket")

    def score_bucket(key, evp: pd.DataFrame, sidep: pd.DataFrame) -> pd.DataFrame:
        from serving.spark_engine import _score_bucket

        return _score_bucket(key, evp, sidep, token, bc_scorer, as_of_s, scored_at_s, reasons)

    scored = (ev.groupBy("bucket").cogroup(side.groupBy("bucket"))
              .applyInPandas(score_bucket, schema=_output_schema())
              .persist(StorageLevel.MEMORY_AND_DISK))

    # 4: write (temporary directories, renamed into place when complete)
    out = Path(opts.out).absolute()
    rejects_path = B.companion(out, "rejects")
    tmp_out = out.with_name(f".{out.name}.spark-tmp")
    tmp_rej = rejects_path.with_name(f".{rejects_path.name}.spark-tmp")
    for t in (tmp_out, tmp_rej):
        shutil.rmtree(t, ignore_errors=True)
    out_cols = [f.name for f in B.OUTPUT_SCHEMA]
    t0 = time.perf_counter()
    (scored.where(F.col("kind") == _KIND_SCORE).orderBy("bucket", "row").select(*out_cols)
     .write.option("compression", "zstd").parquet(str(tmp_out)))
    ev_rej = attached.where(F.col("kind") == "reject").select(
        F.lit("events").alias("table"), "row", "contact_id", "reason")
    sc_rej = scored.where(F.col("kind") == _KIND_REJECT).select(
        "table", "row", "contact_id", F.col("reasons").alias("reason"))
    drv = spark.createDataFrame(base.rejects.astype({"table": object, "contact_id": object,
                                                     "reason": object}).astype({"row": "int64"}),
                                schema="table string, row long, contact_id string, reason string") \
        if len(base.rejects) else None
    rej_all = ev_rej.unionByName(sc_rej) if drv is None else drv.unionByName(ev_rej).unionByName(sc_rej)
    rej_all.write.option("compression", "zstd").parquet(str(tmp_rej))
    stats = [json.loads(r["reasons"]) for r in scored.where(F.col("kind") == _KIND_STAT)
             .select("reasons").collect()]
    unknown = {r["event_type"]: int(r["n"]) for r in attached.where(F.col("kind") == "unknown_type")
               .groupBy("event_type").agg(F.sum("row").alias("n")).collect()}
    rej_counts = (rej_all.groupBy("table", "reason").count().toPandas()
                  .rename(columns={"count": "rows"}))
    seconds_write = time.perf_counter() - t0
    attached.unpersist()
    scored.unpersist()

    summary = B.BatchSummary(out=out, rejects_path=rejects_path, movers_path=None, engine="spark",
                             scorer=info, as_of=as_of, scored_at=scored_at, chunks=n_buckets,
                             contacts_read=base.contacts_read, contacts=base.contacts.num_rows,
                             unknown_event_types=dict(sorted(unknown.items(), key=lambda kv: -kv[1])))
    for st in stats:
        summary.eligible += st["scored"]
        summary.fallback_chunks += int(st["fallback"])
        for key, target in (("bands", summary.bands), ("scorers", summary.scorers),
                            ("not_eligible", summary.not_eligible)):
            for b, v in st[key].items():
                target[b] = target.get(b, 0) + v
    summary.bands = {b: summary.bands.get(b, 0) for b in schema.BANDS}
    order = {name: i for i, name in enumerate(schema.TABLES)}
    if len(rej_counts):
        rej_counts["_o"] = rej_counts["table"].map(order)
        rej_counts = rej_counts.sort_values(["_o", "rows", "reason"], ascending=[True, False, True])
        summary.rejects = rej_counts.drop(columns="_o").reset_index(drop=True)
    if opts.previous is not None:
        current = pd.read_parquet(tmp_out, columns=["contact_id", "band", "score", "probability"])
        movers, counts = B.compare_previous(current, B.read_previous(Path(opts.previous)))
        summary.previous = counts
        summary.movers_path = B.companion(out, "movers")
        B.write_parquet_atomic(pa.Table.from_pandas(movers, preserve_index=False), summary.movers_path)
    _replace(tmp_rej, rejects_path)
    _replace(tmp_out, out)  # the commit
    summary.seconds["write"] = seconds_write
    B._say(console, f"wrote {summary.eligible:,} scores to {out} (Spark, {n_buckets} buckets)")
    return summary


def _attach_batches(batches: Any, token: str, bc_index: Any, offsets: dict[str, int],
                    cols: list[str]) -> Any:
    """Executor side of step 2: raw event batches -> attached events, rejects, unknown types."""
    import io as _io

    if _EXECUTOR.get("index_key") != token:
        idx_bytes, meta = bc_index.value
        t = pq.read_table(_io.BytesIO(idx_bytes))
        m = json.loads(meta)
        _EXECUTOR["index"] = B.ContactIndex(
            t.column("known").combine_chunks(), t.column("canonical").combine_chunks(),
            t.column("bucket").to_numpy(), m["remap"], pd.Timestamp(m["export"]))
        _EXECUTOR["index_key"] = token
    index = _EXECUTOR["index"]
    for pdf in batches:
        if not len(pdf):
            continue
        rows = pdf["_row_index"].to_numpy(dtype="int64") + np.array(
            [_offset(offsets, p) for p in pdf["_file_path"]], dtype="int64")
        raw = pdf[cols].reset_index(drop=True)
        # validated rows keep their number in the table: one call per run of consecutive rows
        for start, stop in _runs(rows):
            ev, bucket, rej, unknown = B.attach_events(raw.iloc[start:stop].reset_index(drop=True),
                                                       int(rows[start]), index)
            evp = ev.to_pandas()
            evp["bucket"] = bucket
            evp["kind"] = "event"
            evp["row"] = np.int64(-1)
            evp["reason"] = None
            yield _plain(evp)
            if len(rej):
                yield pd.DataFrame({"contact_id": rej["contact_id"].astype(object), "ts": pd.NaT,
                                    "event_type": None, "campaign_id": None, "bucket": -1,
                                    "kind": "reject", "row": rej["row"].astype("int64"),
                                    "reason": rej["reason"].astype(object)})
            if unknown:
                yield pd.DataFrame({"contact_id": None, "ts": pd.NaT,
                                    "event_type": list(unknown), "campaign_id": None,
                                    "bucket": -1, "kind": "unknown_type",
                                    "row": np.array(list(unknown.values()), dtype="int64"),
                                    "reason": None})


def _score_bucket(key: Any, evp: pd.DataFrame, sidep: pd.DataFrame, token: str, bc_scorer: Any,
                  as_of: str, scored_at: str, reasons: str) -> pd.DataFrame:
    """Executor side of step 3: one bucket's events, contacts and stages -> scores (+ rejects, stats)."""
    sc, predict = _executor_scorer(bc_scorer, token)
    bucket = int(key[0])
    c = sidep[sidep["_kind"] == "c"].sort_values("row", kind="stable").reset_index(drop=True)
    s = sidep.loc[sidep["_kind"] == "s", ["contact_id", "ts", "stage"]].reset_index(drop=True)
    c = c[[col for col in c.columns if col in B.CONTACT_COLUMNS or col == "row"]]
    if "has_phone" in c:
        c["has_phone"] = c["has_phone"].astype("int8")
    res = B.score_chunk(c, evp.drop(columns=["bucket"]), s, sc, as_of=pd.Timestamp(as_of),
                        scored_at=pd.Timestamp(scored_at), reasons=reasons, predict=predict)
    scores = res.table.to_pandas()
    rowmap = pd.Series(c["row"].to_numpy(), index=c["contact_id"].to_numpy(dtype=object))
    scores["kind"] = _KIND_SCORE
    scores["bucket"] = bucket
    scores["row"] = rowmap.reindex(scores["contact_id"].to_numpy(dtype=object)).to_numpy(dtype="int64")
    scores["table"] = None
    parts = [scores]
    if len(res.rejects):
        r = res.rejects
        parts.append(pd.DataFrame({"contact_id": r["contact_id"].astype(object), "kind": _KIND_REJECT,
                                   "bucket": bucket, "row": r["row"].astype("int64"),
                                   "table": r["table"].astype(object), "band": None,
                                   "reasons": r["reason"].astype(object)}))
    stat = {k: v for k, v in res.stats.items() if not k.startswith("seconds")}
    parts.append(pd.DataFrame({"kind": [_KIND_STAT], "bucket": [bucket], "reasons": [json.dumps(stat)],
                               "row": [-1]}))
    frame = pd.concat(parts, ignore_index=True)
    names = _output_schema().fieldNames()
    for col in names:
        if col not in frame:
            frame[col] = None
    return _plain(frame[names])


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas 3 ``str`` columns as object: PySpark 4's Arrow conversion expects plain arrays."""
    strs = {c: object for c, t in frame.dtypes.items() if isinstance(t, pd.StringDtype)}
    return frame.astype(strs) if strs else frame


def _offset(offsets: dict[str, int], file_path: str) -> int:
    """Row offset of a file Spark names by URI (``file:///...``)."""
    path = file_path.removeprefix("file:")
    while path.startswith("//"):
        path = path[1:]
    from urllib.parse import unquote

    path = unquote(path)
    if path in offsets:
        return offsets[path]
    for p, off in offsets.items():
        if os.path.realpath(p) == os.path.realpath(path):
            return off
    return 0


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` positions of runs of consecutive row numbers."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    bounds = np.concatenate([[0], breaks, [len(rows)]])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _replace(tmp: Path, target: Path) -> None:
    """Move a finished file or directory into place (an existing one is replaced)."""
    old = target.with_name(f".{target.name}.old")
    if target.exists() or target.is_symlink():
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
