"""Shared fixtures: a small synthetic base and a model trained into a temporary MLflow store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

DEMO_CONTACTS = 6000
DEMO_SEED = 11


@dataclass(frozen=True)
class TrainedStore:
    """A demo data dir and an MLflow store in which `leadscore train` registered a champion."""

    workdir: Path
    data: Path
    tracking_uri: str
    summary: dict


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from features.synthetic import generate, write_tables

    out = tmp_path_factory.mktemp("demo") / "data"
    write_tables(generate(DEMO_CONTACTS, seed=DEMO_SEED), out)
    return out


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory, demo_data) -> TrainedStore:
    """Train once per session (about 10-20 s) through the same functions the CLI uses."""
    from features.config import FeatureConfig
    from features.loading import load_base
    from training.cli import _input_example, _training_set
    from training.config import TrainConfig
    from training.tracking import configure_tracking, log_training
    from training.train import train

    workdir = tmp_path_factory.mktemp("store")
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    uri = configure_tracking(workdir)
    base = load_base(demo_data)
    ts = _training_set(base, FeatureConfig())
    result = train(ts, config=TrainConfig(), truth=base.truth)
    summary = log_training(result, training_set=ts, source=str(demo_data),
                           input_example=_input_example(base), gate_config=TrainConfig().gate)
    if not summary["promoted"]:
        # small data can leave the rules ahead: a data scientist would promote by hand so
        # that the serving tests below have a champion; the gate itself is tested separately
        from training.tracking import promote

        promote(summary["version"])
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    return TrainedStore(workdir, demo_data, uri, {**summary, "result": result, "training_set": ts})


@pytest.fixture
def use_store(trained_store, monkeypatch) -> TrainedStore:
    """Point MLflow (and subprocesses) at the trained store for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_store.tracking_uri)
    mlflow.set_tracking_uri(trained_store.tracking_uri)
    return trained_store
