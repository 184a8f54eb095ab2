"""The promotion gate compares the new model with the champion scored on the same test rows;
`evaluate` scores the champion on the rows the comparison keeps; tuning keeps a horizon gap."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

import training.tracking
from features.config import FeatureConfig
from training.config import GateConfig, TrainConfig
from training.train import train

# quick boosters; the gate's rules and calibration checks opened wide: these tests are about
# the comparison with the champion
FAST = {"num_boost_round": 60, "early_stopping_rounds": 20}
OPEN_GATE = GateConfig(min_gain_over_rules=-1.0, max_ece=1.0, max_loss_vs_champion=0.005)


def no_plots(result, out):
    """The run's plots are not what these tests look at (and take seconds to draw)."""
    return []


@dataclass
class Store:
    workdir: Path
    uri: str
    ts: pd.DataFrame  # the demo training set
    example: pd.DataFrame
    champion: str  # version
    champion_auc_own_window: float
    champion_window: str


def _log(result, store: Store, training_set: pd.DataFrame | None = None) -> dict:
    from training.tracking import log_training

    return log_training(result, training_set=store.ts if training_set is None else training_set,
                        source="test", input_example=store.example, gate_config=OPEN_GATE)


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_store):
    """A fresh store whose champion (version 1) was trained without the last as-of date: its
    own test window is one month earlier than a training on the whole set."""
    from training.tracking import configure_tracking, log_training

    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    workdir = tmp_path_factory.mktemp("gate-store")
    uri = configure_tracking(workdir)
    ts = trained_store.summary["training_set"]
    early = ts.loc[ts["as_of"] < ts["as_of"].max()].reset_index(drop=True)
    v1 = train(early, config=TrainConfig(**FAST))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.tracking, "_plots", no_plots)
        summary = log_training(v1, training_set=early, source="test",
                               input_example=trained_store.summary["input_example"], gate_config=OPEN_GATE)
    assert summary["promoted"] and summary.get("champion") is None
    yield Store(workdir, uri, ts, trained_store.summary["input_example"], summary["version"],
                float(v1.comparison.loc["model", "roc_auc"]), v1.split.description["test"])
    mlflow.set_tracking_uri(None)
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def at_store(store, monkeypatch):
    monkeypatch.setattr(training.tracking, "_plots", no_plots)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    mlflow.set_tracking_uri(store.uri)
    yield store
    # whatever a test promoted, the next one starts from the same champion
    MlflowClient().set_registered_model_alias("lead-scoring", "champion", store.champion)


def _champion_alias() -> str:
    return str(MlflowClient().get_model_version_by_alias("lead-scoring", "champion").version)


@pytest.mark.slow
def test_gate_scores_the_champion_on_the_new_test_rows_not_its_own_window(at_store):
    from training.registry import load_model

    ts = at_store.ts
    new = train(ts, config=TrainConfig(seed=3, **FAST))
    assert new.split.description["test"] != at_store.champion_window  # a later test window
    last = ts.loc[ts["as_of"] == ts["as_of"].max()]
    champion = load_model(f"models:/lead-scoring/{at_store.champion}")
    paired = roc_auc_score(last["converted"], champion.predict_proba(last))
    # the figure the champion got on its own (earlier) window is another number
    assert abs(paired - at_store.champion_auc_own_window) > 1e-3

    summary = _log(new, at_store)
    assert f"{paired:.4f} (version {at_store.champion}) on the same {len(last)} test rows (2026-04-01" \
        in summary["reason"]
    assert f"{at_store.champion_auc_own_window:.4f}" not in summary["reason"]
    new_auc = new.comparison.loc["model", "roc_auc"]
    assert summary["promoted"] == (new_auc >= paired - OPEN_GATE.max_loss_vs_champion)
    got = summary["champion"]
    assert got["comparable"] and got["champion_version"] == at_store.champion
    assert got["champion_metrics"]["roc_auc"] == pytest.approx(paired, abs=1e-9)
    assert got["rows"] == len(last) and "2026-04-01" in got["test_window"]

    client = MlflowClient()
    tags = client.get_model_version("lead-scoring", summary["version"]).tags
    assert json.loads(tags["gate_champion"])["champion_metrics"]["roc_auc"] == pytest.approx(paired)
    assert tags["test_window"].startswith(new.split.description["test"])
    assert json.loads(tags["test_metrics"])["roc_auc"] == pytest.approx(new_auc)
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["champion_roc_auc"] == pytest.approx(paired)
    assert run.data.tags["gate.champion_version"] == at_store.champion


@pytest.mark.slow
def test_a_champion_of_another_horizon_is_not_compared_and_not_replaced(at_store):
    new = train(at_store.ts, config=TrainConfig(**FAST), feature_config=FeatureConfig(horizon_days=60))
    summary = _log(new, at_store)
    assert not summary["promoted"] and summary["alias"] == "challenger"
    assert "not compared with champion version" in summary["reason"]
    assert "90 days" in summary["reason"] and "60 days" in summary["reason"]
    assert summary["champion"] == {"champion_version": at_store.champion, "comparable": False,
                                   "why_not": summary["champion"]["why_not"]}
    assert _champion_alias() == at_store.champion


@pytest.mark.slow
def test_a_test_window_before_the_champions_own_is_not_compared(at_store):
    ts = at_store.ts
    dates = np.sort(ts["as_of"].unique())
    earlier = ts.loc[ts["as_of"] < dates[-2]].reset_index(drop=True)  # test window one month earlier
    new = train(earlier, config=TrainConfig(**FAST))
    summary = _log(new, at_store, earlier)
    assert not summary["promoted"] and "may have been fitted on these rows" in summary["reason"]
    assert _champion_alias() == at_store.champion


@pytest.mark.slow
def test_a_champion_that_fails_to_load_is_not_replaced_and_the_reason_says_so(at_store, monkeypatch):
    import training.registry

    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(training.registry, "load_model", broken)
    new = train(at_store.ts, config=TrainConfig(**FAST))
    summary = _log(new, at_store)
    assert not summary["promoted"] and "could not be loaded (OSError)" in summary["reason"]
    assert "leadscore promote" in summary["reason"]
    assert _champion_alias() == at_store.champion


def test_models_of_another_input_kind_or_dataset_are_not_comparable(trained_store):
    from training.tracking import NotComparable, champion_probabilities, incomparable

    events = trained_store.summary["result"].model
    table = dataclasses.replace(events, dataset={"name": "shop", "target": {"column": "Outcome"}})
    assert incomparable(events, events) is None
    assert "table input" in incomparable(table, events)
    other = dataclasses.replace(table, dataset={"name": "other", "target": {"column": "Outcome"}})
    assert "dataset 'other'" in incomparable(other, table)
    ts = trained_store.summary["training_set"]
    with pytest.raises(NotComparable, match="lack column"):
        champion_probabilities(events, events, ts.drop(columns=["industry"]).head(20))


def test_gate_without_a_comparable_champion_keeps_it():
    from training.tracking import ChampionComparison, gate

    rules = {"roc_auc": 0.70, "ece": 0.01}
    new = {"roc_auc": 0.80, "ece": 0.01}
    assert gate(new, rules, None, OPEN_GATE).promoted
    kept = gate(new, rules, ChampionComparison("4", why_not="it predicts within 60 days"), OPEN_GATE)
    assert not kept.promoted and kept.alias == "challenger" and "version 4" in kept.reason
    paired = ChampionComparison("4", metrics={"roc_auc": 0.82}, window="2026-04-01", rows=100)
    worse = gate(new, rules, paired, OPEN_GATE)
    assert not worse.promoted and "same 100 test rows (2026-04-01)" in worse.reason


# -- `leadscore evaluate`: the champion on the rows the comparison keeps -------------------------
@pytest.mark.slow
def test_the_champion_is_scored_on_the_test_rows_the_truth_table_keeps(use_store):
    from training.registry import load_model
    from training.tracking import champion_probabilities

    result, ts = use_store.summary["result"], use_store.summary["training_set"]
    preds = result.test_predictions
    assert len(preds) < result.split.test.sum()  # the demo truth table misses some test rows
    champion = load_model(f"models:/lead-scoring/{use_store.summary['version']}")  # this very model
    assert champion.scorer == "model"
    rows = result.test_inputs(ts)
    assert rows["contact_id"].tolist() == preds["contact_id"].tolist()
    assert (rows["as_of"].to_numpy() == preds["as_of"].to_numpy()).all()
    p = champion_probabilities(champion, result.model, rows)
    np.testing.assert_allclose(p, preds["model"].to_numpy(), rtol=1e-6, atol=1e-9)


# -- `--tune`: inner training dates a horizon before the inner validation date -------------------
def _tuning_calls(monkeypatch, months: int, horizon_days: int | None = None, **config):
    import training.train as tr

    dates = pd.date_range("2025-01-01", periods=months, freq="MS")
    rng = np.random.default_rng(0)
    groups = np.repeat(dates.to_numpy(), 40)
    days = (groups - dates[0].to_datetime64()) / np.timedelta64(1, "D")
    X = np.c_[days, rng.normal(size=len(groups))]
    y = (rng.random(len(groups)) < 0.3).astype(int)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Constant:
        def predict(self, X):
            return np.full(len(X), 0.3)

    def fake_fit(X_train, y_train, X_val, y_val, **kwargs):
        seen.append((X_train[:, 0], X_val[:, 0]))
        return Constant()

    monkeypatch.setattr(tr, "fit_booster", fake_fit)
    tr.tune(X, y, groups, n_trials=2, categorical_idx=[], feature_names=["day", "x"],
            config=TrainConfig(**config),
            **({} if horizon_days is None else {"horizon_days": horizon_days}))
    return seen, (dates[-1] - dates[0]).days


@pytest.mark.parametrize("gap", [{"split": {"gap_days": 90}}, {"horizon_days": 90}],
                         ids=["split.gap_days", "label horizon"])
def test_tuning_fits_no_date_within_a_horizon_of_its_validation_date(monkeypatch, gap):
    seen, last = _tuning_calls(monkeypatch, months=10, **gap)
    assert len(seen) == 2
    for fit_days, val_days in seen:
        assert set(val_days) == {last}
        assert len(fit_days) and fit_days.max() <= last - 90
    assert max(seen[0][0]) == (pd.Timestamp("2025-07-01") - pd.Timestamp("2025-01-01")).days


def test_tuning_with_no_gap_still_never_fits_the_validation_date(monkeypatch):
    seen, last = _tuning_calls(monkeypatch, months=10, horizon_days=90, split={"gap_days": 0})
    assert max(seen[0][0]) == last - 30  # the date right before the validation date


def test_tuning_on_too_short_a_window_says_why(monkeypatch):
    with pytest.raises(ValueError, match="inner validation date"):
        _tuning_calls(monkeypatch, months=3, horizon_days=90)


# -- CRM tables: the champion is scored on the new export's held-out rows --------------------------
SHOP = {**yaml.safe_load((Path(__file__).parent / "shop_dataset.yaml").read_text()),
        "training": {"num_boost_round": 200, "early_stopping_rounds": 20,
                     "gate": {"min_train_positives": 50, "min_gain_over_rules": -1.0, "max_ece": 1.0}}}


@pytest.mark.slow
def test_table_gate_scores_the_champion_on_the_re_exports_held_out_rows(tmp_path, monkeypatch, crm_export):
    from training.crm import (
        log_table_run,
        parse_dataset_config,
        read_table,
        score_table,
        train_table,
    )
    from training.registry import load_model
    from training.tracking import configure_tracking

    monkeypatch.setattr(training.tracking, "_plots", no_plots)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = parse_dataset_config(SHOP)

    def export(seed: int, config=config):
        path = tmp_path / f"export-{seed}.csv"
        crm_export(1500, seed=seed).to_csv(path, sep=";", index=False)
        frame = read_table(path, config)
        return frame, train_table(frame, config)

    try:
        configure_tracking(tmp_path / "store")
        frame, first = export(1)
        assert log_table_run(first, frame, source="v1")["promoted"]
        frame, again = export(2)  # a re-export: a random split draws another test set
        preds = again.result.test_predictions
        raw = frame.set_index("Lead Key").loc[preds["contact_id"]].reset_index()
        p = score_table(load_model("models:/lead-scoring/1"), raw, reasons=False)["probability"]
        paired = roc_auc_score(preds["converted"], p)
        summary = log_table_run(again, frame, source="v2")
        assert f"{paired:.4f} (version 1) on the same {len(preds)} test rows (20%" in summary["reason"]
        assert summary["champion"]["champion_metrics"]["roc_auc"] == pytest.approx(paired)
        champion = _champion_alias()

        other = parse_dataset_config({**SHOP, "name": "another shop"})
        frame, elsewhere = export(3, other)
        summary = log_table_run(elsewhere, frame, source="v3")
        assert not summary["promoted"] and "trained on dataset 'shop'" in summary["reason"]
        assert _champion_alias() == champion
    finally:
        mlflow.set_tracking_uri(None)
