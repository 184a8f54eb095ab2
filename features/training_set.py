"""The point-in-time training set of a base of any size, built bucket by bucket.

:func:`features.build.build_training_set` needs the whole base in memory as pandas frames:
fine for a hundred thousand contacts, not for millions (tens of millions of events). Here
the base is partitioned by contact (:func:`features.partition.prepare`, the nightly batch's
preparation) and a pool of processes builds each bucket's snapshots with the same
:class:`~features.build.Snapshotter`. Every contact's events and stage changes sit in its
bucket, so a bucket's rows are exactly the rows the whole-base build gives for its
contacts; the buckets' rows are put back in the whole-base order (as-of date, then the
contact's row in the input), so both builds give the same frame.

Memory: the workers hold one bucket each; the caller holds the training set itself.

:func:`prepared_base` (the base partitioned in a temporary directory, with the pool that
runs one call per bucket) and :func:`bucket_snapshots` also serve the one-date feature
table (:mod:`features.feature_table`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import schema
from features.build import Snapshotter, monthly_as_of_dates
from features.config import FeatureConfig
from features.io import rejects_summary, tmp_name
from features.partition import (
    REJECT_SCHEMA,
    parse_as_of,
    prepare,
    prepared_rejects,
    read_bucket,
    release_cached_files,
    table_path,
)
from features.tasks import Progress, local_runner

#: contacts per bucket: a worker's snapshots of a bucket stay in the hundreds of MB
CHUNK_SIZE = 50_000
#: below these sizes the work runs in this process: starting a pool of processes (a few
#: seconds of imports on a loaded machine) costs more than it saves on a small base
_POOL_MIN_ROWS = 8_000_000  # rows read, all tables
_POOL_MIN_CONTACTS = 200_000  # contacts snapshotted

#: a bucket's snapshots on disk: every bucket writes these types, whatever its values
#: (an empty bucket or an as-of date with no eligible contact has no values to type them)
SNAPSHOT_SCHEMA = pa.schema(
    [("contact_id", pa.large_string()), ("as_of", pa.timestamp("us"))]
    + [(c, pa.large_string()) for c in schema.CATEGORICAL_FEATURES]
    + [(c, pa.float64()) for c in schema.NUMERIC_FEATURES]
    + [(schema.LABEL, pa.int8()), ("row", pa.int64())]
)


@dataclass
class TrainingSet:
    """A training set built from a data directory, with what the run should report."""

    frame: pd.DataFrame  # contact_id, as_of, features, label: one row per eligible (contact, as_of)
    as_of_dates: list[pd.Timestamp]
    until: pd.Timestamp  # the data's end (export date)
    contacts: int  # clean contacts
    events: int  # events kept
    rejects: pd.DataFrame  # table, reason, rows: what was rejected while reading the base
    example: tuple[pd.DataFrame, pd.DataFrame]  # a few clean contacts and their events


@dataclass
class PreparedBase:
    """A base partitioned by contact in a temporary directory (:func:`prepared_base`)."""

    root: Path  # the temporary directory: ``prep/`` and the caller's own files
    prep: Path  # the partitioned base (:func:`features.partition.read_bucket`)
    info: dict[str, Any]  # the preparation's summary (:func:`features.partition.prepare`)
    workers: int
    console: Any | None = None  # where progress is shown

    def map_buckets(self, fn: Callable[..., Any], args: tuple, label: str) -> list[Any]:
        """``fn(k, *args)`` for every bucket ``k`` on the pool of workers (in this process
        when the base is small), with progress in contacts under ``label``; the results in
        bucket order. ``fn`` must be picklable (a
        module-level function)."""
        sizes = self.info["bucket_sizes"]
        n_buckets = int(self.info["n_buckets"])
        calls = [(_bucket_call, (fn, k, *args), int(sizes[k])) for k in range(n_buckets)]
        results: dict[int, Any] = {}
        with Progress(self.console).task(label, int(self.info["contacts"]), "contacts") as advance:
            def done(weight: int, result: tuple[int, Any]) -> None:
                results[result[0]] = result[1]
                advance(weight)

            local_runner(self.workers, min_weight=_POOL_MIN_CONTACTS)(calls, done)
        return [results[k] for k in range(n_buckets)]

    def rejects_by_reason(self) -> pd.DataFrame:
        """The rows rejected while reading the base: ``table, reason, rows``."""
        return rejects_summary(pd.concat(
            [pq.read_table(f, columns=["table", "reason"], schema=REJECT_SCHEMA).to_pandas()
             for f in prepared_rejects(self.prep)], ignore_index=True))


@contextlib.contextmanager
def prepared_base(
    data_dir: Path | str,
    *,
    purpose: str,
    until: pd.Timestamp | None = None,
    workdir: Path | str | None = None,
    chunk_size: int = CHUNK_SIZE,
    workers: int | None = None,
    child: bool = False,
    console: Any | None = None,
) -> Iterator[PreparedBase]:
    """The base in ``data_dir`` partitioned into buckets of ``chunk_size`` contacts, in a
    hidden temporary directory ``.leadscore-<purpose>-*`` under ``workdir`` (default: the
    system's; created if missing), removed on exit, also after an error (not after a kill).

    ``until``: the export date (default: the data's end); events and stage changes after it
    are rejected as future timestamps, as :func:`features.loading.load_base` does.
    ``workers``: processes (default: one per core); ``child``: link the base in a child
    process when there are workers (its memory goes back to the system before the buckets
    are built).
    """
    workers = max(1, workers or os.cpu_count() or 1)
    paths = {name: table_path(Path(data_dir), name) for name in schema.TABLES}
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".leadscore-{purpose}-", dir=workdir) as tmp, \
            release_cached_files():
        prep = Path(tmp) / "prep"
        info = prepare(paths, prep, until, chunk_size,
                       run=local_runner(workers, min_weight=_POOL_MIN_ROWS),
                       child=child and workers > 1, console=console, reject_after_as_of=True)
        yield PreparedBase(Path(tmp), prep, info, workers, console)


def _bucket_call(fn: Callable[..., Any], k: int, *args: Any) -> tuple[int, Any]:
    """Worker: ``fn(k, *args)``, with ``k`` (results arrive in any order)."""
    return k, fn(k, *args)


def partitioned_training_set(
    data_dir: Path | str,
    *,
    until: pd.Timestamp | str | None = None,
    config: FeatureConfig | None = None,
    workdir: Path | str | None = None,
    chunk_size: int = CHUNK_SIZE,
    workers: int | None = None,
    console: Any | None = None,
) -> TrainingSet:
    """Monthly point-in-time snapshots of the base in ``data_dir`` with their labels.

    Parameters
    ----------
    until
        The data's end (default: the last stage change); snapshots need a full label horizon
        before it (:func:`~features.build.monthly_as_of_dates`).
    workdir
        Where the partitioned base is written while it is read, in a hidden
        ``.leadscore-training-set-*`` directory removed afterwards (also after an error;
        not after a kill); default: the system's temporary directory. About the size of
        the input plus the training set.
    workers
        Processes (default: one per core).
    """
    config = config or FeatureConfig()
    until_ts = parse_as_of(until, "--until")
    # the base linked in this process: its memory is small beside the training set's
    with prepared_base(data_dir, purpose="training-set", until=until_ts, workdir=workdir,
                       chunk_size=chunk_size, workers=workers, console=console) as base:
        prep, parts, info = base.prep, base.root / "snapshots", base.info
        parts.mkdir()
        end = pd.Timestamp(info["as_of"])
        dates = monthly_as_of_dates(pd.Timestamp(info["created_min"]), end,
                                    horizon_days=config.horizon_days)
        if not dates:
            raise ValueError("no as-of dates: the history is shorter than the label horizon "
                             f"({config.horizon_days} days) plus 60 days")
        examples = base.map_buckets(
            _snapshot_task, (str(prep), str(parts), [str(t) for t in dates], config), "snapshots")
        frame = _assemble(parts, int(info["n_buckets"]))
        example = examples[next(k for k, n in enumerate(info["bucket_sizes"]) if n)]
        rejects = base.rejects_by_reason()
    return TrainingSet(frame, dates, end, int(info["contacts"]), int(info["events"]), rejects, example)


def first_leads(contacts: pd.DataFrame, events: pd.DataFrame, n: int = 3
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first ``n`` clean contacts of a bucket (in input order) and their events (without
    the bucket's bookkeeping: ``row``, hygiene's ``filled_fields`` and ``filled_at``)."""
    first = contacts.sort_values("row").head(n)
    internal = [c for c in ("row", "filled_fields", "filled_at") if c in first]
    return (first.drop(columns=internal).reset_index(drop=True),
            events[events["contact_id"].isin(first["contact_id"])].reset_index(drop=True))


def bucket_snapshots(contacts: pd.DataFrame, events: pd.DataFrame, stages: pd.DataFrame,
                     as_of_dates: list[pd.Timestamp], config: FeatureConfig, *,
                     labels: bool = True) -> pd.DataFrame:
    """A bucket's snapshots, with labels (unless ``labels`` is false) and the contacts' input
    ``row`` (for the order)."""
    snap = Snapshotter(contacts, events, stages, config)
    row_of = pd.Series(contacts["row"].to_numpy(), index=contacts["contact_id"].astype("str"))
    parts = []
    for t in as_of_dates:
        frame = snap.features_at(t)
        if labels:
            frame[schema.LABEL] = snap.labels_at(t, frame["contact_id"])
        frame["row"] = row_of.reindex(frame["contact_id"]).to_numpy()
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def _snapshot_task(k: int, prep: str, parts: str, as_of_dates: list[str], config: FeatureConfig
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Worker: bucket ``k``'s snapshots -> ``parts/part-k.arrow`` (uncompressed Arrow IPC:
    written at disk speed and read back memory-mapped, column by column); returns its first
    leads (:func:`first_leads`, the run's input example)."""
    contacts, events, stages = read_bucket(Path(prep), k)
    frame = bucket_snapshots(contacts, events, stages, [pd.Timestamp(t) for t in as_of_dates], config)
    table = pa.Table.from_pandas(frame, schema=SNAPSHOT_SCHEMA, preserve_index=False)
    write_arrow_part(table, Path(parts) / f"part-{k:05d}.arrow")
    return first_leads(contacts, events)


def write_arrow_part(table: pa.Table, path: Path, *, batch_rows: int | None = None) -> None:
    """``table`` -> ``path``, uncompressed Arrow IPC in record batches of at most
    ``batch_rows`` rows (default: the table's chunks), atomically (renamed into place when
    complete)."""
    tmp = tmp_name(path)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    os.replace(tmp, path)


def _read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # no copy: pages on demand
    return table if columns is None else table.select(columns)


def _assemble(parts: Path, n_buckets: int) -> pd.DataFrame:
    """Every bucket's snapshots in the whole-base order (as-of date, then input row).

    The float columns (most of the frame) are copied part by part straight into their
    final rows of one preallocated block, so the set is held about once, not three times
    (Arrow parts, reordered copy, pandas copy); the other columns are small.
    """
    files = [parts / f"part-{k:05d}.arrow" for k in range(n_buckets)]
    keys = [_read_part(f, ["as_of", "row"]) for f in files]
    as_of = np.concatenate([t.column("as_of").to_numpy().astype("int64") for t in keys])
    row = np.concatenate([t.column("row").to_numpy() for t in keys])
    sizes = [t.num_rows for t in keys]
    order = np.lexsort((row, as_of))
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))  # final row of each concatenated row
    del keys, as_of, row

    floats = [f.name for f in SNAPSHOT_SCHEMA if pa.types.is_floating(f.type)]
    others = [f.name for f in SNAPSHOT_SCHEMA if f.name not in floats and f.name != "row"]
    block = np.empty((len(order), len(floats)), order="F")
    small: list[pa.Table] = []
    start = 0
    for f, n in zip(files, sizes):
        t = _read_part(f)
        dest = where[start:start + n]
        for j, name in enumerate(floats):
            block[dest, j] = t.column(name).to_numpy()
        small.append(t.select(others))
        start += n
        del t
    head = pa.concat_tables(small).take(pa.array(order)).to_pandas()
    tail = pd.DataFrame(block, columns=floats, copy=False)
    frame = pd.concat([head, tail], axis=1)
    return frame[[c for c in SNAPSHOT_SCHEMA.names if c != "row"]]
