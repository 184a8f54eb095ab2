"""Training end to end into a real (SQLite) MLflow store: run, plots, registry, gate, pyfunc."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from training.config import TrainConfig
from training.train import NotEnoughData, train

pytestmark = pytest.mark.slow


def test_run_has_metrics_plots_lineage_and_a_registered_champion(use_store):
    s = use_store.summary
    client = MlflowClient()
    run = client.get_run(s["run_id"])
    for scorer in ("model", "rules", "logistic", "oracle"):
        assert 0.5 < run.data.metrics[f"{scorer}_roc_auc"] <= 1.0
    assert run.data.metrics["model_ece"] < 0.05
    artifacts = {f.path for f in client.list_artifacts(s["run_id"], "plots")}
    assert {"plots/roc.png", "plots/pr.png", "plots/calibration.png", "plots/gain.png",
            "plots/importance.png"} <= artifacts
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "training_set"
    metrics = s["result"].comparison
    beats_rules = metrics.loc["model", "roc_auc"] > metrics.loc["rules", "roc_auc"]
    assert s["promoted"] == beats_rules  # the gate's first condition (the ECE is tiny here)
    assert s["alias"] == ("champion" if beats_rules else "challenger")
    assert str(client.get_model_version_by_alias("lead-scoring", "champion").version) == s["version"]


def test_logged_model_scores_raw_input_in_a_fresh_process(use_store):
    code = f"""
import json, mlflow, pandas as pd
mlflow.set_tracking_uri({use_store.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/lead-scoring@champion")
raw = pd.DataFrame([{{"contact_id": "X1", "created_at": "2026-01-05", "job_title": "Head of IT",
    "industry": "Manufacturing", "employees": 300.0, "country": "DE", "lead_source": "webinar",
    "events": json.dumps([{{"ts": "2026-06-28T10:00:00", "event_type": "pricing_view"}},
                          {{"ts": "2026-06-29T10:00:00", "event_type": "demo_request"}}]),
    "as_of": "2026-07-01"}}])
out = model.predict(raw)
print(json.dumps(out.iloc[0][["contact_id", "probability", "score", "band", "scorer"]].to_dict(), default=str))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["contact_id"] == "X1" and row["scorer"] == "model"
    assert 0 < row["probability"] < 1 and 0 <= row["score"] <= 100 and row["band"] in "ABCD"


def test_logged_model_scores_each_row_at_its_own_as_of(use_store):
    mlflow.set_tracking_uri(use_store.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/lead-scoring@champion")
    events = json.dumps([{"ts": f"2026-03-{d:02d}T10:00:00", "event_type": t}
                         for d, t in ((2, "pricing_view"), (3, "demo_request"), (4, "webinar_attended"))])
    lead = {"contact_id": "X1", "created_at": "2026-01-05", "job_title": "Head of IT",
            "industry": "Manufacturing", "employees": 300.0, "country": "DE", "lead_source": "webinar",
            "events": events}
    rows = pd.DataFrame([{**lead, "as_of": "2026-03-05"}, {**lead, "as_of": "2026-09-01"},
                         {**lead, "contact_id": "X2", "as_of": "2026-03-05T00:00:00+00:00"}],
                        index=[7, 7, 3])  # any index: the answer is in row order
    together = model.predict(rows)
    alone = pd.concat([model.predict(rows.iloc[[i]]) for i in range(3)], ignore_index=True)
    assert together["contact_id"].tolist() == ["X1", "X1", "X2"]
    cols = ["probability", "score", "band"]
    pd.testing.assert_frame_equal(together[cols], alone[cols])
    # fresh activity counts at its own date, not at the other row's: six months on it has decayed
    assert together.loc[0, "probability"] != together.loc[1, "probability"]
    assert together.loc[0, "probability"] == together.loc[2, "probability"]


def test_gate_keeps_a_worse_model_as_challenger_and_rollback_restores(use_store):
    from training.tracking import log_training, promote, rollback

    ts = use_store.summary["training_set"]
    # a deliberately weak model: one tree on two features
    weak = train(ts, config=TrainConfig(num_boost_round=1), categorical=["country"], numeric=["employees"])
    summary = log_training(weak, training_set=ts, source="test", input_example=use_store.summary["input_example"])
    client = MlflowClient()
    assert not summary["promoted"] and summary["alias"] == "challenger"
    assert str(client.get_model_version_by_alias("lead-scoring", "champion").version) == use_store.summary["version"]
    assert "does not beat" in summary["reason"] or "worse" in summary["reason"]
    promote(summary["version"])
    assert str(client.get_model_version_by_alias("lead-scoring", "champion").version) == summary["version"]
    rollback()
    assert str(client.get_model_version_by_alias("lead-scoring", "champion").version) == use_store.summary["version"]


def test_same_seed_and_data_give_identical_predictions(trained_store):
    ts = trained_store.summary["training_set"]
    a = train(ts, config=TrainConfig(seed=5, num_boost_round=80))
    b = train(ts, config=TrainConfig(seed=5, num_boost_round=80))
    assert np.array_equal(a.test_predictions["model"], b.test_predictions["model"])
    assert a.model.booster.model_to_string() == b.model.booster.model_to_string()


def test_a_planted_label_copy_is_excluded_not_rewarded(trained_store):
    ts = trained_store.summary["training_set"].copy()
    ts["days_in_stage"] = ts["converted"] * 1000.0 + np.random.default_rng(0).random(len(ts))
    result = train(ts, config=TrainConfig(num_boost_round=80))
    assert "days_in_stage" in result.excluded
    assert "days_in_stage" not in result.model.columns
    assert result.comparison.loc["model", "roc_auc"] < 0.97


def test_too_few_converters_means_the_rules_stay_in_charge(trained_store):
    ts = trained_store.summary["training_set"]
    with pytest.raises(NotEnoughData, match="converters"):
        train(ts, config=TrainConfig(gate={"min_train_positives": 10**6}))


def test_reasons_name_readable_features_with_the_leads_values(trained_store):
    result = trained_store.summary["result"]
    ts = trained_store.summary["training_set"]
    out = result.model.score(ts.head(50), scored_at=pd.Timestamp("2026-07-01"))
    reasons = [r for rs in out["reasons"] for r in rs]
    assert reasons and all({"feature", "value", "effect"} <= set(r) for r in reasons)
    assert not any("_" in r["feature"] for r in reasons)  # business-readable, not column names


def test_lineage_schema_equals_mlflows_inference_on_the_whole_frame():
    """The run's dataset schema is MLflow's own, also for a column whose only missing value
    lies beyond the sample the types are read from."""


    from training.tracking import lineage_dataset

    rng = np.random.default_rng(0)
    n = 30_000
    frame = pd.DataFrame({
        "x": rng.normal(size=n),
        "late_missing": np.r_[np.ones(n - 1), np.nan],
        "segment": pd.array(rng.choice(["a", "b"], n), dtype="str"),
        "as_of": pd.Timestamp("2025-01-01"),
        "converted": rng.integers(0, 2, n).astype("int8"),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = mlflow.data.from_pandas(frame, source="t", name="training_set", targets="converted").schema
        got = lineage_dataset(frame, "t", "converted")
    assert got.schema == expected
    assert not {c.name: c for c in got.schema.inputs}["late_missing"].required
    assert got.profile["num_rows"] == n and got.targets == "converted"
    changed = frame.copy()
    changed.loc[n - 1, "x"] += 1  # beyond the first 10,000 rows MLflow's own digest reads
    assert lineage_dataset(changed, "t", "converted").digest != got.digest
    assert lineage_dataset(frame.copy(), "t", "converted").digest == got.digest
