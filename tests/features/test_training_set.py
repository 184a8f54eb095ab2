"""The training set built bucket by bucket equals the one built from the whole base in memory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.build import build_training_set, monthly_as_of_dates
from features.config import FeatureConfig
from features.loading import load_base
from features.training_set import partitioned_training_set


def test_bucket_by_bucket_equals_the_whole_base(demo_data: Path, tmp_path: Path) -> None:
    """Many buckets built by a pool of processes, duplicates merged across input slices,
    events of unknown contacts and future events rejected: the same rows, in the same order,
    with the same values and labels, and the same rejects."""
    config = FeatureConfig()
    base = load_base(demo_data)
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until,
                                horizon_days=config.horizon_days)
    expected = build_training_set(base.contacts, base.events, base.stages, dates, config=config)

    got = partitioned_training_set(demo_data, config=config, chunk_size=700, workers=2, workdir=tmp_path)

    assert got.as_of_dates == dates and got.until == base.until
    assert len(got.frame) > 10_000 and got.frame["converted"].sum() > 100
    pd.testing.assert_frame_equal(got.frame, expected)
    assert got.contacts == len(base.contacts) and got.events == len(base.events)
    pd.testing.assert_frame_equal(got.rejects, base.rejects_by_reason())
    assert set(got.rejects["reason"]) >= {"duplicate_contact", "unknown_contact", "future_timestamp"}
    contacts, events = got.example
    assert len(contacts) == 3 and set(events["contact_id"]) <= set(contacts["contact_id"])
    assert not list(tmp_path.iterdir())  # the partitioned base is removed


def test_until_cuts_the_history_as_the_loader_does(demo_data: Path, tmp_path: Path) -> None:
    """With an earlier export date the snapshots end a horizon before it, every label only
    looks at stage changes known by then, and the later rows are rejected as future
    timestamps, as the loader rejects them."""
    config = FeatureConfig()
    until = pd.Timestamp("2026-03-15")
    base = load_base(demo_data, until=until)
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), until, horizon_days=config.horizon_days)
    expected = build_training_set(base.contacts, base.events, base.stages, dates, config=config)

    got = partitioned_training_set(demo_data, until=until, config=config, workers=1)

    assert max(got.as_of_dates) <= until - pd.Timedelta(days=config.horizon_days)
    pd.testing.assert_frame_equal(got.frame, expected)
    pd.testing.assert_frame_equal(got.rejects, base.rejects_by_reason())
    assert got.events == len(base.events) and got.until == until


def test_csv_input_equals_the_whole_base_of_the_same_csv(demo_data: Path, tmp_path: Path) -> None:
    """CSV files (one slice each, read with the loader's CSV conventions) give the same
    training set as the whole-base build of the same files."""
    data = tmp_path / "csv"
    data.mkdir()
    for name in ("contacts", "events", "stages"):
        pq.read_table(demo_data / f"{name}.parquet").to_pandas().to_csv(data / f"{name}.csv", index=False)
    config = FeatureConfig()
    base = load_base(data)
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until,
                                horizon_days=config.horizon_days)
    expected = build_training_set(base.contacts, base.events, base.stages, dates, config=config)
    got = partitioned_training_set(data, config=config, chunk_size=2000, workers=1)
    pd.testing.assert_frame_equal(got.frame, expected)


@pytest.mark.parametrize(("contacts", "chunk_sizes"), [(300, (200, 40)), (40, (1,))])
def test_buckets_without_eligible_contacts_at_some_dates(tmp_path: Path, contacts: int,
                                                          chunk_sizes: tuple[int, ...]) -> None:
    """One contact far older than the rest: the first as-of dates have it alone, so most
    buckets have no eligible contact there (with one contact per bucket, many buckets are
    empty, bucket 0 among them); still the same frame."""
    from features.synthetic import generate, write_tables

    tables = generate(contacts, seed=3)
    old = tables["contacts"].copy()
    old.loc[0, "created_at"] = pd.Timestamp("2020-01-01")
    data = tmp_path / "data"
    write_tables({**tables, "contacts": old}, data)
    config = FeatureConfig()
    base = load_base(data)
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until,
                                horizon_days=config.horizon_days)
    expected = build_training_set(base.contacts, base.events, base.stages, dates, config=config)
    for chunk_size in chunk_sizes:
        got = partitioned_training_set(data, config=config, chunk_size=chunk_size, workers=1)
        pd.testing.assert_frame_equal(got.frame, expected)
        assert 1 <= len(got.example[0]) <= 3  # from the first bucket with contacts
