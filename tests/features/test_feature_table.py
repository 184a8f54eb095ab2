"""`leadscore features` built bucket by bucket writes the table `build_features` gives on
the whole base loaded in memory: same rows, order, values, dtypes and rejects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import features.feature_table as FT
import features.partition as P
import features.training_set as TS
from features.build import build_features
from features.config import FeatureConfig
from features.feature_table import write_feature_table
from features.loading import load_base


def _whole_base(data: Path, as_of: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The former path: the feature table of the whole base in memory, and its rejects."""
    base = load_base(data, until=as_of)
    feats = build_features(base.contacts, base.events, base.stages, as_of or base.until,
                           config=FeatureConfig())
    return feats, base.rejects_by_reason()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def _copy_in_small_row_groups(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name, rows in (("contacts", 250), ("events", 7000), ("stages", 900)):
        pq.write_table(pq.read_table(src / f"{name}.parquet"), dst / f"{name}.parquet", row_group_size=rows)
    return dst


def test_bucket_by_bucket_equals_the_whole_base(demo_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Small slices (duplicates in other slices than their canonical contact), many buckets,
    row groups spanning buckets; unknown contacts' and future events rejected: the file holds
    the whole-base frame, in its order, and `to_parquet`'s schema; the rejects are the loader's."""
    data = _copy_in_small_row_groups(demo_data, tmp_path / "data")
    monkeypatch.setattr(P, "_SLICE_ROWS", {"contacts": 400, "events": 20_000, "stages": 3_000})
    monkeypatch.setattr(P, "_SLICE_BATCH_ROWS", {"contacts": 128, "events": 5_000, "stages": 1_000})
    monkeypatch.setattr(P, "_KEY_BATCH_ROWS", 300)
    expected, rejects = _whole_base(data)
    out = tmp_path / "out" / "features.parquet"

    got = write_feature_table(data, out, chunk_size=700, workers=1, row_group_size=1000)

    frame = pd.read_parquet(out)
    pd.testing.assert_frame_equal(frame, expected)
    expected.to_parquet(tmp_path / "whole.parquet", index=False)
    assert pq.read_schema(out).equals(pq.read_schema(tmp_path / "whole.parquet"), check_metadata=True)
    assert pq.ParquetFile(out).metadata.num_row_groups == -(-len(expected) // 1000) > 1
    assert got.rows == len(expected) > 2000 and got.as_of == expected["as_of"].iloc[0]
    pd.testing.assert_frame_equal(got.rejects, rejects)
    assert set(got.rejects["reason"]) >= {"duplicate_contact", "unknown_contact", "future_timestamp"}
    assert not _leftovers(out.parent) and [p.name for p in out.parent.iterdir()] == [out.name]


def test_as_of_before_the_data_end_rejects_the_later_rows_as_the_loader_does(
        demo_data: Path, tmp_path: Path) -> None:
    """An as-of date months before the data's end: the same features, and the events and stage
    changes after it counted as future timestamps, as `load_base(until=as_of)` counts them."""
    as_of = "2026-03-15"
    expected, rejects = _whole_base(demo_data, as_of)
    out = tmp_path / "features.parquet"

    got = write_feature_table(demo_data, out, as_of=as_of, chunk_size=1000, workers=1)

    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert got.as_of == pd.Timestamp(as_of)
    pd.testing.assert_frame_equal(got.rejects, rejects)
    future = rejects.set_index(["table", "reason"])["rows"]
    assert future[("events", "future_timestamp")] > 1000 and future[("stages", "future_timestamp")] > 100


def test_csv_input(demo_data: Path, tmp_path: Path) -> None:
    """CSV files (one slice each, the loader's CSV conventions): the whole-base table of the same files."""
    data = tmp_path / "csv"
    data.mkdir()
    for name in ("contacts", "events", "stages"):
        pq.read_table(demo_data / f"{name}.parquet").to_pandas().to_csv(data / f"{name}.csv", index=False)
    expected, rejects = _whole_base(data)
    out = tmp_path / "features.parquet"
    got = write_feature_table(data, out, chunk_size=2000, workers=1)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    pd.testing.assert_frame_equal(got.rejects, rejects)


@pytest.mark.parametrize("chunk_size", [1, 7])
def test_empty_buckets_and_buckets_without_eligible_contacts(tmp_path: Path, chunk_size: int) -> None:
    """A few contacts in many buckets: empty buckets (bucket 0 among them with one contact per
    bucket) and buckets whose contacts are all converted or created later; the same table."""
    from features.synthetic import generate, write_tables

    data = tmp_path / "data"
    write_tables(generate(40, seed=3), data)
    as_of = "2025-09-01"  # many contacts created later: not eligible
    expected, rejects = _whole_base(data, as_of)
    assert 0 < len(expected) < 30
    out = tmp_path / "features.parquet"
    got = write_feature_table(data, out, as_of=as_of, chunk_size=chunk_size, workers=1, row_group_size=4)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    pd.testing.assert_frame_equal(got.rejects, rejects)


def test_no_eligible_contact_writes_an_empty_table_with_the_usual_types(demo_data: Path,
                                                                        tmp_path: Path) -> None:
    """An as-of date before every contact: no rows, the columns typed as in any other table
    (the whole-base frame has untyped ``object`` columns then)."""
    expected, _ = _whole_base(demo_data, "2000-01-01")
    out = tmp_path / "features.parquet"
    got = write_feature_table(demo_data, out, as_of="2000-01-01", chunk_size=1000, workers=1)
    assert got.rows == 0 == len(expected)
    frame = pd.read_parquet(out)
    pd.testing.assert_frame_equal(frame, expected, check_index_type=False, check_dtype=False)
    usual, _ = _whole_base(demo_data)
    assert frame.dtypes.equals(usual.dtypes)


def test_pool_of_workers(demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base linked in a child process, slices and buckets built by a pool of processes."""
    monkeypatch.setattr(TS, "_POOL_MIN_ROWS", 0)
    monkeypatch.setattr(TS, "_POOL_MIN_CONTACTS", 0)
    expected, rejects = _whole_base(demo_data)
    out = tmp_path / "features.parquet"
    got = write_feature_table(demo_data, out, chunk_size=900, workers=2, row_group_size=1500)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    pd.testing.assert_frame_equal(got.rejects, rejects)
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("failing", ["buckets", "writing"])
def test_work_directory_and_partial_output_removed_when_building_fails(
        demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    if failing == "buckets":
        monkeypatch.setattr(FT, "bucket_snapshots", broken)
    else:  # after the first row group is written
        take = FT._PartReader.take
        calls = iter(range(100))
        monkeypatch.setattr(FT._PartReader, "take",
                            lambda self, n: take(self, n) if next(calls) < 5 else broken())
    out = tmp_path / "out" / "features.parquet"
    out.parent.mkdir()
    (out.parent / "other.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_feature_table(demo_data, out, chunk_size=2000, workers=1, row_group_size=500)
    assert sorted(p.name for p in out.parent.iterdir()) == ["other.txt"]


def test_cli_writes_the_table_and_prints_the_rejects(demo_data: Path, tmp_path: Path) -> None:
    from serving.cli import app

    out = tmp_path / "out" / "features.parquet"
    res = CliRunner().invoke(app, ["features", "--data", str(demo_data), "--out", str(out),
                                   "--as-of", "2026-05-01", "--chunk-size", "1000"])
    assert res.exit_code == 0, res.output
    expected, rejects = _whole_base(demo_data, "2026-05-01")
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    text = " ".join(res.output.split())
    assert f"{len(expected):,} eligible contacts x 89 features at 2026-05-01" in text
    assert "rejected rows" in text
    for row in rejects.itertuples():
        assert f"{row.table} │ {row.reason} │ {row.rows}" in text
    assert "@" not in res.output  # no personal data in what it prints
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize(("args", "message"), [
    (["--as-of", "not-a-date"], "--as-of: not a date"),
    (["--chunk-size", "10"], "--chunk-size"),
    (["--data", "/nonexistent/data"], "/nonexistent/data"),
])
def test_cli_bad_options_end_with_a_clear_message(demo_data: Path, tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    from serving.cli import app

    out = tmp_path / "features.parquet"
    res = CliRunner().invoke(app, ["features", "--data", str(demo_data), "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not list(tmp_path.iterdir())
