"""``leadscore score --engine spark``: the same batch rescoring, its tasks run by Spark.

The steps are the local engine's (:mod:`serving.batch`, :func:`serving.batch.execute`),
with Spark's executors in place of the local process pool:

1. **Driver**: the base is linked from its key columns (``contact_id``, ``created_at``,
   ``email``; :func:`features.partition.link_base`) and every contact gets the bucket of its
   canonical contact (:func:`features.partition.bucket_of`, a stable hash of its id).
2. **One Spark task per slice** of each table (whole Parquet row groups): the rows are read,
   validated and attached to their contact's bucket (:func:`features.partition.attach_rows`) and
   written as one Parquet file per bucket into the work directory. Rows are bucketed by
   contact where they are read: no shuffle.
3. **One Spark task per bucket**: its contacts are cleaned
   (:func:`features.hygiene.clean_contacts`), its features built and scored
   (:func:`serving.batch.score_chunk`): the same code as the local engine and the service.
   The scorer is broadcast once and deserialised once per Python worker (workers are
   reused across tasks), with its compiled predict function (cached on disk).
4. **Driver**: the chunk files are moved into a Parquet **directory** at ``out``
   (``part-<bucket>.parquet``, ordered by bucket and input row like the local engine's single
   file, and ``_SUCCESS``) via a temporary directory renamed into place when complete;
   rejects likewise at ``<stem>.rejects.parquet``; movers (small) as one file.

Why tasks over files rather than DataFrames: the first version moved the events through
Spark (``mapInPandas`` to attach them, a co-group by bucket, ``applyInPandas`` to score), and
on 1M contacts in ``local[*]`` it spent most of its time outside the scoring code: events
converted JVM -> Arrow -> pandas -> Arrow -> JVM twice, shuffled and spilled, one bucket's
millions of events converted again to a pandas frame (see ``BENCHMARKS.md``). Here the Python
workers read and write Parquet themselves and Spark schedules, retries and distributes the
tasks; a task's output is committed by a rename, so a retried or speculative task is harmless.

Scores equal the local engine's exactly (tested): same buckets, same inputs per bucket,
same code. ``--resume`` is a local-engine feature: Spark retries failed tasks itself, and an
interrupted Spark run leaves nothing in place, so it is simply run again.

The data directory, the output and its work directory (``.<out>.work/`` next to it) must be
visible to the driver and the executors at the same path (local mode, or a shared file
system on a cluster).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from features import schema
from features.partition import table_path
from features.tasks import Call, Runner, say
from serving import batch as B

_EXECUTOR: dict[str, Any] = {}  # per Python worker: the run whose initializer has run


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
        .config("spark.python.worker.reuse", "true")  # imports and the model once per worker
        .config("spark.ui.enabled", "false")
        # rows never go through the JVM: the driver's heap only schedules tasks
        .config("spark.driver.memory", os.environ.get("LEADSCORE_SPARK_DRIVER_MEMORY", "1g"))
    )
    return builder.getOrCreate(), True


def spark_runner(spark: Any, initializer: Callable | None = None, initargs: tuple = ()) -> Runner:
    """A :data:`features.tasks.Runner` on Spark: one task per call, results collected.

    ``spark``: the session, or a function returning it (called when the first calls run).
    ``initializer(*initargs)`` (e.g. the scorer) is broadcast once and runs once per Python
    worker, before its first call of this run.
    """
    token = f"{os.getpid()}-{time.time_ns()}"

    def run(calls: list[Call], on_done: Callable[[int, Any], None]) -> None:
        if not calls:
            return
        sc = (spark() if callable(spark) else spark).sparkContext
        init = sc.broadcast(pickle.dumps((initializer, initargs), protocol=pickle.HIGHEST_PROTOCOL)) \
            if initializer is not None else None
        items = [(i, fn, args) for i, (fn, args, _) in enumerate(calls)]  # run in this order

        def call(item: tuple) -> tuple[int, Any]:
            from serving.spark_engine import _run_call

            return _run_call(item, token, init)

        results = sc.parallelize(items, len(items)).map(call).collect()
        for i, result in sorted(results, key=lambda r: r[0]):
            on_done(calls[i][2], result)

    return run


def _run_call(item: tuple, token: str, init: Any) -> tuple[int, Any]:
    """Executor side: the run's initializer once per Python worker, then the call."""
    i, fn, args = item
    if init is not None and _EXECUTOR.get("token") != token:
        initializer, initargs = pickle.loads(init.value)
        initializer(*initargs)
        _EXECUTOR["token"] = token
    return i, fn(*args)


def run_spark(opts: B.BatchOptions, *, console: Any | None = None, scorer: Any | None = None
              ) -> B.BatchSummary:
    """Run ``leadscore score`` with Spark; see the module docstring."""
    if opts.resume:
        say(console, "--resume applies to the local engine; Spark reruns the whole job "
                        "(it retries failed tasks itself and leaves nothing partial in place)")
    t_start = time.perf_counter()
    out = Path(opts.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    data = Path(opts.data)
    paths = {name: table_path(data, name) for name in schema.TABLES}
    ws = B.Workspace(out, area="spark")
    ws.lock()
    starting: _SessionStart | None = None
    try:
        shutil.rmtree(ws.area, ignore_errors=True)
        ws.area.mkdir(parents=True)
        if scorer is None:
            scorer, _ = B.resolve_scorer(opts.model_uri)
        scored_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
        # the JVM starts while step 1 (a child process) links the base
        starting = _SessionStart(opts.master)
        try:
            summary = B.execute(
                opts, ws, paths, scorer, scored_at, engine="spark",
                make_runner=lambda *init: spark_runner(starting.session, *init),
                child=True, threads=1, console=console)
        except Exception as e:
            _reraise_data_error(e)
            raise
        summary.seconds = {"spark_session": starting.seconds, **summary.seconds,
                           "total": time.perf_counter() - t_start}
        return summary
    finally:
        if starting is not None:
            starting.stop()
        ws.remove_area()


class _SessionStart:
    """The Spark session, started in a thread (unless one is active: then that one)."""

    def __init__(self, master: str | None) -> None:
        self.created = False
        self.seconds = 0.0
        self._session: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        active = _active_session()
        if active is not None and master is None:
            self._session = active
            return
        self._thread = threading.Thread(target=self._start, args=(master,), name="spark-session",
                                        daemon=True)
        self._thread.start()

    def _start(self, master: str | None) -> None:
        t0 = time.perf_counter()
        try:
            self._session, self.created = spark_session(master)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            self._error = e
        self.seconds = time.perf_counter() - t0

    def session(self) -> Any:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._session

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._session is not None and self.created:
            self._session.stop()


def _active_session() -> Any:
    """This thread's active Spark session (None: none); a clear error without pyspark."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ValueError("--engine spark needs pyspark: pip install 'leadscore[spark]'") from None
    return SparkSession.getActiveSession()


def _reraise_data_error(exc: BaseException) -> None:
    """A :class:`~features.io.DataError` raised on an executor comes back wrapped in Spark's
    exception: raise it again as itself, so the CLI prints its message, not a traceback."""
    from features.io import DataError

    if isinstance(exc, DataError):
        return
    m = re.search(r"DataError: ([^\n]+)", str(exc))
    if m:
        raise DataError(m.group(1).strip()) from None
