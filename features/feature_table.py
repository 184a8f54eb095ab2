"""The feature table of a base of any size at one as-of date, built bucket by bucket.

:func:`features.build.build_features` on :func:`features.loading.load_base` holds the whole
base in memory as pandas frames (9 GB at a million contacts and 40M events). Here the base is partitioned
by contact (:func:`features.training_set.prepared_base`, the batch's and training's
preparation), a pool of processes builds each bucket's feature table with the same
:class:`~features.build.Snapshotter` and writes it to an Arrow file, and the rows are merged
into one Parquet file in the whole-base order.

The file holds exactly the frame ``build_features`` gives on the whole base, value for
value: the same columns and dtypes (``pandas.read_parquet`` gives them back) and the same
rows in the same order, the input order of the contacts (a contact merged with duplicates
takes the row of its canonical contact). Every bucket's rows are in that order, so the merge
takes a contiguous run of each bucket per row group. The rejects are
``load_base(data_dir, until=as_of)``'s.

Memory: a worker holds one bucket; the merge holds a row group and one record batch of each
bucket's file. Disk: the partitioned base (about the size of the input) and the uncompressed
feature table, in a hidden directory next to the output, removed at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import schema
from features.config import FeatureConfig
from features.io import fsync_path, tmp_name
from features.partition import parse_as_of, read_bucket
from features.tasks import Progress
from features.training_set import (
    CHUNK_SIZE,
    SNAPSHOT_SCHEMA,
    bucket_snapshots,
    prepared_base,
    write_arrow_part,
)

#: rows per row group of the output (and of each merge step)
ROW_GROUP_SIZE = 65_536
#: a bucket's file is read back in record batches of about ``ROW_GROUP_SIZE / buckets`` rows
#: (what one merge step takes from it), within these bounds
_BATCH_ROWS_MIN, _BATCH_ROWS_MAX = 256, 16_384

#: a bucket's feature table on disk: the same types in every bucket, empty or not
TABLE_SCHEMA = pa.schema([f for f in SNAPSHOT_SCHEMA if f.name not in (schema.LABEL, "row")])
#: the output's schema, with the pandas metadata ``DataFrame.to_parquet`` writes for the
#: frame of ``build_features``
OUTPUT_SCHEMA = pa.Schema.from_pandas(TABLE_SCHEMA.empty_table().to_pandas(), preserve_index=False)


@dataclass
class FeatureTable:
    """What :func:`write_feature_table` wrote, with what the run should report."""

    path: Path
    rows: int  # eligible contacts: the rows of the table
    as_of: pd.Timestamp
    contacts: int  # clean contacts
    events: int  # events kept
    rejects: pd.DataFrame  # table, reason, rows: what was rejected while reading the base


def write_feature_table(
    data_dir: Path | str,
    out: Path | str,
    *,
    as_of: pd.Timestamp | str | None = None,
    config: FeatureConfig | None = None,
    workdir: Path | str | None = None,
    chunk_size: int = CHUNK_SIZE,
    workers: int | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
    console: Any | None = None,
) -> FeatureTable:
    """Write ``build_features(load_base(data_dir, until=as_of), as_of)`` to the Parquet file
    ``out`` without holding the base in memory.

    Parameters
    ----------
    as_of
        The as-of date, also the export date: later events and stage changes are rejected
        as future timestamps (default: the data's end, its last stage change).
    workdir
        Where the partitioned base is written, in a hidden ``.leadscore-features-*``
        directory removed afterwards (also after an error; not after a kill); default: the
        output's directory.
    chunk_size
        Contacts per bucket: a worker's memory.
    workers
        Processes (default: one per core; a small base is built in this process).

    The file is written under a temporary name and renamed into place when complete: ``out``
    is either the whole table or untouched.
    """
    config = config or FeatureConfig()
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name")
    if chunk_size < 1 or row_group_size < 1:
        raise ValueError("chunk_size and row_group_size must be at least 1")
    until = parse_as_of(as_of)
    with prepared_base(data_dir, purpose="features", until=until, workdir=workdir or out.parent,
                       chunk_size=chunk_size, workers=workers, child=True, console=console) as base:
        info = base.info
        end = pd.Timestamp(info["as_of"])
        parts = base.root / "tables"
        parts.mkdir()
        n_buckets = int(info["n_buckets"])
        batch_rows = min(max(math.ceil(row_group_size / n_buckets), _BATCH_ROWS_MIN),
                         _BATCH_ROWS_MAX)
        rows = base.map_buckets(
            _table_task, (str(base.prep), str(parts), str(end), config, batch_rows), "features")
        out.parent.mkdir(parents=True, exist_ok=True)
        n_rows = merge_parts([parts / f"part-{k:05d}.arrow" for k in range(n_buckets)], rows, out,
                             row_group_size=row_group_size, console=console)
        rejects = base.rejects_by_reason()
    return FeatureTable(out, n_rows, end, int(info["contacts"]), int(info["events"]), rejects)


def _table_task(k: int, prep: str, parts: str, as_of: str, config: FeatureConfig,
                batch_rows: int) -> np.ndarray:
    """Worker: bucket ``k``'s feature table at ``as_of``, in input order ->
    ``parts/part-k.arrow``; returns the input row of each of its rows."""
    contacts, events, stages = read_bucket(Path(prep), k)
    frame = bucket_snapshots(contacts, events, stages, [pd.Timestamp(as_of)], config, labels=False)
    del contacts, events, stages
    row = frame.pop("row").to_numpy(dtype=np.int64)
    table = pa.Table.from_pandas(frame, schema=TABLE_SCHEMA, preserve_index=False)
    if len(row) > 1 and not (np.diff(row) > 0).all():  # hygiene keeps the input order: cheap check
        order = np.argsort(row, kind="stable")
        table, row = table.take(pa.array(order)), row[order]
    write_arrow_part(table, Path(parts) / f"part-{k:05d}.arrow", batch_rows=batch_rows)
    return row


class _PartReader:
    """A bucket's file read front to back, one record batch at a time (the file is opened
    for each batch: thousands of buckets do not hold thousands of open files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_batch = 0
        self.pending: pa.Table = TABLE_SCHEMA.empty_table()

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows."""
        pieces = []
        while n > 0:
            if not self.pending.num_rows:
                with pa.OSFile(str(self.path)) as f:  # read, not mapped: freed once merged
                    batch = pa.ipc.open_file(f).get_batch(self.next_batch)
                self.next_batch += 1
                self.pending = pa.Table.from_batches([batch], schema=TABLE_SCHEMA)
            piece = self.pending.slice(0, n)
            self.pending = self.pending.slice(piece.num_rows)
            pieces.append(piece)
            n -= piece.num_rows
        return pa.concat_tables(pieces)


def merge_parts(paths: list[Path], rows: list[np.ndarray], out: Path, *,
                row_group_size: int = ROW_GROUP_SIZE, console: Any | None = None) -> int:
    """Merge the buckets' files (each in ascending input ``rows``) into the Parquet file
    ``out``, rows in ascending input row, ``row_group_size`` rows per row group; written
    under a temporary name, fsynced and renamed into place. Returns the number of rows."""
    readers = [_PartReader(path) for path in paths]
    # the bucket of each output row
    source = np.repeat(np.arange(len(rows), dtype=np.int32), [len(r) for r in rows])
    source = source[np.argsort(np.concatenate([np.zeros(0, np.int64), *rows]), kind="stable")]
    tmp = tmp_name(out)
    try:
        with pq.ParquetWriter(tmp, OUTPUT_SCHEMA) as writer, \
                Progress(console).task("writing", len(source), "rows") as advance:
            for start in range(0, len(source), row_group_size):
                src = source[start:start + row_group_size]
                counts = np.bincount(src, minlength=len(readers))
                # each bucket's next run, buckets one after the other; then in output order
                group = pa.concat_tables([readers[j].take(int(c)) for j, c in enumerate(counts) if c])
                where = np.empty(len(src), dtype=np.int64)
                where[np.argsort(src, kind="stable")] = np.arange(len(src))
                group = group.take(pa.array(where)).replace_schema_metadata(OUTPUT_SCHEMA.metadata)
                writer.write_table(group, row_group_size=row_group_size)
                advance(len(src))
        fsync_path(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(source)
