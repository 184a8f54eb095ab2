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
"""

from __future__ import annotations

import os
import tempfile
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
    workers = max(1, workers or os.cpu_count() or 1)
    data_dir = Path(data_dir)
    paths = {name: table_path(data_dir, name) for name in schema.TABLES}
    until_ts = pd.Timestamp(until) if until is not None else None
    with tempfile.TemporaryDirectory(prefix=".leadscore-training-set-", dir=workdir) as tmp, \
            release_cached_files():
        prep, parts = Path(tmp) / "prep", Path(tmp) / "snapshots"
        parts.mkdir()
        # step 1 in this process: its memory is small beside the training set's
        info = prepare(paths, prep, until_ts, chunk_size,
                       run=local_runner(workers, min_weight=_POOL_MIN_ROWS), child=False,
                       console=console)
        end = pd.Timestamp(info["as_of"])
        dates = monthly_as_of_dates(pd.Timestamp(info["created_min"]), end,
                                    horizon_days=config.horizon_days)
        if not dates:
            raise ValueError("no as-of dates: the history is shorter than the label horizon "
                             f"({config.horizon_days} days) plus 60 days")
        n_buckets = int(info["n_buckets"])
        calls = [(_snapshot_task, (k, str(prep), str(parts), [str(t) for t in dates], config),
                  int(info["bucket_sizes"][k])) for k in range(n_buckets)]
        examples: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}
        with Progress(console).task("snapshots", int(info["contacts"]), "contacts") as advance:
            def done(weight: int, result: tuple[int, tuple[pd.DataFrame, pd.DataFrame]]) -> None:
                examples[result[0]] = result[1]
                advance(weight)

            local_runner(workers, min_weight=_POOL_MIN_CONTACTS)(calls, done)
        frame = _assemble(parts, n_buckets)
        example = examples[next(k for k, n in enumerate(info["bucket_sizes"]) if n)]
        rejects = rejects_summary(pd.concat(
            [pq.read_table(f, schema=REJECT_SCHEMA).to_pandas() for f in prepared_rejects(prep)],
            ignore_index=True))
    return TrainingSet(frame, dates, end, int(info["contacts"]), int(info["events"]), rejects, example)


def first_leads(contacts: pd.DataFrame, events: pd.DataFrame, n: int = 3
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first ``n`` clean contacts of a bucket (in input order) and their events."""
    first = contacts.sort_values("row").head(n)
    return (first.drop(columns="row").reset_index(drop=True),
            events[events["contact_id"].isin(first["contact_id"])].reset_index(drop=True))


def bucket_snapshots(contacts: pd.DataFrame, events: pd.DataFrame, stages: pd.DataFrame,
                     as_of_dates: list[pd.Timestamp], config: FeatureConfig) -> pd.DataFrame:
    """A bucket's snapshots with labels and the contacts' input ``row`` (for the order)."""
    snap = Snapshotter(contacts, events, stages, config)
    row_of = pd.Series(contacts["row"].to_numpy(), index=contacts["contact_id"].astype("str"))
    parts = []
    for t in as_of_dates:
        frame = snap.features_at(t)
        frame[schema.LABEL] = snap.labels_at(t, frame["contact_id"])
        frame["row"] = row_of.reindex(frame["contact_id"]).to_numpy()
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def _snapshot_task(k: int, prep: str, parts: str, as_of_dates: list[str], config: FeatureConfig
                   ) -> tuple[int, tuple[pd.DataFrame, pd.DataFrame]]:
    """Worker: bucket ``k``'s snapshots -> ``parts/part-k.arrow`` (uncompressed Arrow IPC:
    written at disk speed and read back memory-mapped, column by column); returns ``k`` and
    its first leads (:func:`first_leads`, the run's input example)."""
    contacts, events, stages = read_bucket(Path(prep), k)
    frame = bucket_snapshots(contacts, events, stages, [pd.Timestamp(t) for t in as_of_dates], config)
    table = pa.Table.from_pandas(frame, schema=SNAPSHOT_SCHEMA, preserve_index=False)
    path = Path(parts) / f"part-{k:05d}.arrow"
    tmp = tmp_name(path)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    return k, first_leads(contacts, events)


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
