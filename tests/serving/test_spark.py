"""`leadscore score --engine spark` (PySpark local mode): same scores as the local engine.

One Spark session for the module, ~2,000 synthetic contacts, a small LightGBM model trained
in-process (no registry: the scorer object is handed to both engines).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.io import DataError
from serving.batch import BatchOptions, run_batch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    # PySpark 4.x on pandas 3 (works; see the parity test): only these, precisely
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:pandas.errors.Pandas4Warning"),
]
pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from features.build import build_training_set, monthly_as_of_dates
    from features.loading import load_base
    from features.synthetic import generate, write_tables
    from training.config import TrainConfig
    from training.train import train

    root = tmp_path_factory.mktemp("spark")
    write_tables(generate(2500, seed=5), root / "data")
    base = load_base(root / "data")
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until, horizon_days=90)
    ts = build_training_set(base.contacts, base.events, base.stages, dates)
    result = train(ts, config=TrainConfig(num_boost_round=40, early_stopping_rounds=10,
                                          gate={"min_train_positives": 20}))
    return root, result.model


@pytest.fixture(scope="module")
def spark():
    from serving.spark_engine import spark_session

    session, _ = spark_session("local[2]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _opts(root: Path, out: Path, **kw) -> BatchOptions:
    return BatchOptions(**{"data": root / "data", "table": None, "out": out, "chunk_size": 600, **kw})


def test_spark_scores_equal_local_scores(demo, spark, tmp_path: Path) -> None:
    root, model = demo
    local = run_batch(_opts(root, tmp_path / "local.parquet"), workers=2, scorer=model)
    dist = run_batch(_opts(root, tmp_path / "spark.parquet", engine="spark", reasons="top"),
                     scorer=model)
    a = pd.read_parquet(tmp_path / "local.parquet")
    b = pd.read_parquet(tmp_path / "spark.parquet")  # a Parquet directory written by Spark
    assert (tmp_path / "spark.parquet").is_dir() and dist.engine == "spark"
    assert len(a) == len(b) == local.eligible == dist.eligible > 0
    assert b["contact_id"].is_unique
    cols = [c for c in a.columns if c != "scored_at"]
    pd.testing.assert_frame_equal(a[cols], b[cols])  # same rows, same order, same floats
    assert set(b["scorer"]) == {"model"} and b["reasons"].notna().any()
    assert local.bands == dist.bands and local.not_eligible == dist.not_eligible
    ra = pd.read_parquet(local.rejects_path).sort_values(["table", "row"]).reset_index(drop=True)
    rb = pd.read_parquet(dist.rejects_path).sort_values(["table", "row"]).reset_index(drop=True)
    assert len(ra) > 0
    pd.testing.assert_frame_equal(ra.astype(str), rb.astype(str))
    assert local.unknown_event_types == dist.unknown_event_types
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_spark_previous_and_overwrite(demo, spark, tmp_path: Path) -> None:
    root, model = demo
    out = tmp_path / "scores.parquet"
    run_batch(_opts(root, out, engine="spark", reasons="none"), scorer=model)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_batch(_opts(root, out, engine="spark"), scorer=model)
    prev = pd.read_parquet(out)
    prev.loc[prev["band"] == "A", "band"] = "D"
    prev.to_parquet(tmp_path / "prev.parquet")
    summary = run_batch(_opts(root, out, engine="spark", overwrite=True, reasons="none",
                              previous=tmp_path / "prev.parquet"), scorer=model)
    assert summary.previous["into_a"] == summary.bands["A"] > 0
    movers = pd.read_parquet(summary.movers_path)
    assert movers["into_a"].sum() == summary.bands["A"]


def test_spark_bad_input_is_a_clear_error(demo, tmp_path: Path) -> None:
    root, model = demo
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    pq.write_table(pq.read_table(data / "events.parquet").drop_columns(["event_type"]),
                   data / "events.parquet")
    with pytest.raises(DataError, match="events: required column 'event_type' is missing"):
        run_batch(_opts(root, tmp_path / "s.parquet", data=data, engine="spark"), scorer=model)
    assert not (tmp_path / "s.parquet").exists()
    assert not np.any([p.name.endswith(".work") for p in tmp_path.iterdir()])


def test_spark_leaves_an_interrupted_local_run_alone(demo, spark, tmp_path: Path) -> None:
    """The Spark engine works in its own area of the work directory: an interrupted local run's
    work (resumable with --resume) is neither used nor deleted."""
    from serving.batch import Workspace

    root, model = demo
    out = tmp_path / "scores.parquet"
    ws = Workspace(out.absolute())
    ws.root.mkdir()
    ws.write_manifest({"version": 2, "engine": "local", "pid": -1})
    summary = run_batch(_opts(root, out, engine="spark", reasons="none"), scorer=model)
    assert summary.eligible == len(pd.read_parquet(out)) > 0
    assert ws.exists() and sorted(p.name for p in ws.root.iterdir()) == ["lock", "manifest.json"]
