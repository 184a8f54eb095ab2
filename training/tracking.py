"""MLflow: log a training run, register the model, apply the promotion gate, move aliases.

Embedded default store: ``sqlite:///mlflow.db`` with artifacts under ``./mlartifacts`` in
the working directory; ``MLFLOW_TRACKING_URI`` points elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.config import CHALLENGER, CHAMPION, REGISTERED_MODEL, GateConfig
from training.pyfunc import ARTIFACT, signature
from training.train import TrainResult

log = logging.getLogger(__name__)
EXPERIMENT = "lead-scoring"


_EMBEDDED_URIS: set[str] = set()  # the embedded stores configure_tracking chose


def configure_tracking(workdir: Path | str = ".") -> str:
    """Use ``MLFLOW_TRACKING_URI`` or the embedded SQLite store in ``workdir``; returns the URI."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: a URI we set earlier in this
    # process is not the user's choice, so another workdir gets its own store
    if not uri or uri in _EMBEDDED_URIS:
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        _EMBEDDED_URIS.add(uri)
        mlflow.set_tracking_uri(uri)
        artifacts = (workdir / "mlartifacts").as_uri()
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    else:
        mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    return uri


@dataclass
class GateDecision:
    promoted: bool
    alias: str
    reason: str


def gate(new: dict[str, float], rules: dict[str, float], champion: dict[str, float] | None,
         config: GateConfig) -> GateDecision:
    """Champion only if the new model beats the rules and is not worse than the champion."""
    m = config.metric
    if new[m] <= rules[m] + config.min_gain_over_rules:
        return GateDecision(False, CHALLENGER, f"{m} {new[m]:.4f} does not beat the rule scorer's "
                            f"{rules[m]:.4f} by {config.min_gain_over_rules}")
    if new.get("ece", 0.0) > config.max_ece:
        return GateDecision(False, CHALLENGER, f"calibration error {new['ece']:.4f} > {config.max_ece}")
    if champion is not None and m in champion and new[m] < champion[m] - config.max_loss_vs_champion:
        return GateDecision(False, CHALLENGER, f"{m} {new[m]:.4f} is worse than the champion's "
                            f"{champion[m]:.4f} on the same test window")
    vs = f", champion {champion[m]:.4f}" if champion and m in champion else ", no champion yet"
    return GateDecision(True, CHAMPION, f"{m} {new[m]:.4f} vs rules {rules[m]:.4f}{vs}")


def champion_version(client: MlflowClient, name: str = REGISTERED_MODEL) -> Any | None:
    """The model version under alias ``champion``, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _requirements() -> list[str]:
    """Pinned versions of what the logged model imports (leadscore itself must be installed)."""
    from importlib.metadata import version

    pkgs = ("mlflow", "lightgbm", "scikit-learn", "feature-engine", "pandas", "numpy", "pyarrow",
            "email-validator", "phonenumbers", "pyyaml", "pydantic", "scipy")
    return [f"{p}=={version(p)}" for p in pkgs]


def _plots(result: TrainResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from training.metrics import decile_table

    preds = result.test_predictions
    y = preds[result.label].to_numpy()
    scorers = [c for c in ("model", "rules", "logistic", "oracle") if c in result.comparison.index]
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(5, 4))
    for s in scorers:
        fpr, tpr, _ = roc_curve(y, preds[s])
        ax.plot(fpr, tpr, label=s)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(title="ROC curve (test window)", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend()
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for s in scorers:
        prec, rec, _ = precision_recall_curve(y, preds[s])
        ax.plot(rec, prec, label=s)
    ax.set(title="Precision-recall (test window)", xlabel="recall", ylabel="precision")
    ax.legend()
    save(fig, "pr.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    rel = result.reliability
    ax.plot(rel["mean_predicted"], rel["observed_rate"], "o-", label="model")
    lim = float(max(rel["mean_predicted"].max(), rel["observed_rate"].max()))
    ax.plot([0, lim], [0, lim], "k:", lw=0.8, label="perfect")
    ax.set(title="Calibration (test window)", xlabel="mean predicted probability",
           ylabel="observed conversion rate")
    ax.legend()
    save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for s in scorers:
        d = decile_table(y, preds[s])
        ax.plot(np.r_[0, d["decile"] * 10], np.r_[0, d["cumulative_recall"]] * 100, marker=".", label=s)
    ax.plot([0, 100], [0, 100], "k:", lw=0.8, label="random")
    ax.set(title="Gain chart (test window)", xlabel="% of contacts called (by score)",
           ylabel="% of converters reached")
    ax.legend()
    save(fig, "gain.png")

    fig, ax = plt.subplots(figsize=(6, 6))
    top = result.importance.head(20)[::-1]
    ax.barh(top.index, top.to_numpy())
    ax.set(title="Feature importance (gain)", xlabel="total gain")
    save(fig, "importance.png")
    return paths


def lineage_dataset(frame: pd.DataFrame, source: str, label: str) -> Any:
    """The training set as an MLflow dataset (digest, schema, rows) for the run's lineage.

    MLflow's own digest maps ``type`` over every value of the frame (an object copy of it:
    gigabytes at millions of rows) and then hashes only the first 10,000 rows; its schema
    inference checks every value in Python. Here the digest hashes every row and column
    name (vectorised), the column types come from a sample and each column's "required"
    flag from a vectorised check of the whole frame, which is the schema MLflow infers.
    """
    import hashlib

    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.md5(rows.tobytes() + "\x1f".join(map(str, frame.columns)).encode(),
                         usedforsecurity=False).hexdigest()[:8]
    dataset = mlflow.data.from_pandas(frame, source=source, name="training_set", targets=label,
                                      digest=digest)
    sample = infer_signature(frame.head(10_000)).inputs
    has_missing = frame.isna().any()
    dataset.__dict__["schema"] = Schema([  # the value functools.cached_property would store
        ColSpec(c.type, c.name, required=not bool(has_missing[c.name])) for c in sample.inputs])
    return dataset


def log_training(
    result: TrainResult,
    *,
    training_set: pd.DataFrame,
    source: str,
    input_example: pd.DataFrame,
    gate_config: GateConfig | None = None,
    extra_params: dict[str, Any] | None = None,
    registered_name: str = REGISTERED_MODEL,
) -> dict[str, Any]:
    """Log the run (params, metrics, lineage, plots, tables, model), register the model and
    apply the gate. Returns a summary with run_id, version, alias and the gate's reason."""
    client = MlflowClient()
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params({k: v for k, v in {**result.params, **(extra_params or {})}.items()
                           if not isinstance(v, (dict, list))})
        for scorer, row in result.comparison.iterrows():
            mlflow.log_metrics({f"{scorer}_{k}": float(v) for k, v in row.items()
                                if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v)})
        mlflow.log_metrics({f"calibration_logloss_{k}": v for k, v in result.calibration_losses.items()})
        with warnings.catch_warnings():  # source ambiguity and int-column hints: not actionable
            warnings.simplefilter("ignore", UserWarning)
            mlflow.log_input(lineage_dataset(training_set, source, result.label), context="training")
        mlflow.set_tags({"split." + k: v for k, v in result.split.description.items()})
        if result.excluded:
            mlflow.log_dict(result.excluded, "excluded_features.json")
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            for p in _plots(result, tmp_path):
                mlflow.log_artifact(str(p), "plots")
            result.comparison.to_csv(tmp_path / "comparison.csv")
            result.deciles.to_csv(tmp_path / "deciles.csv", index=False)
            result.reliability.to_csv(tmp_path / "reliability.csv", index=False)
            for name in ("comparison.csv", "deciles.csv", "reliability.csv"):
                mlflow.log_artifact(str(tmp_path / name), "evaluation")
            model_dir = result.model.save(tmp_path / ARTIFACT)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code
                artifacts={ARTIFACT: str(model_dir)},
                signature=signature(result.model),
                input_example=input_example,
                pip_requirements=_requirements(),  # explicit: skips a slow inference subprocess
                registered_model_name=registered_name,
            )
        version = str(info.registered_model_version)
        champ = champion_version(client, registered_name)
        champ_metrics = None
        if champ is not None:
            champ_metrics = json.loads(client.get_model_version(registered_name, champ.version)
                                       .tags.get("test_metrics", "null") or "null")
        new = result.comparison.loc["model"].to_dict()
        decision = gate(new, result.comparison.loc["rules"].to_dict(), champ_metrics,
                        gate_config or GateConfig())
        client.set_model_version_tag(registered_name, version, "test_metrics",
                                     json.dumps({k: float(v) for k, v in new.items()}))
        client.set_model_version_tag(registered_name, version, "gate", decision.reason)
        client.set_model_version_tag(registered_name, version, "run_id", run.info.run_id)
        if decision.promoted and champ is not None:
            client.set_model_version_tag(registered_name, version, "previous_champion", str(champ.version))
        client.set_registered_model_alias(registered_name, decision.alias, version)
        mlflow.set_tags({"gate": decision.reason, "alias": decision.alias})
    return {"run_id": run.info.run_id, "version": version, "alias": decision.alias,
            "promoted": decision.promoted, "reason": decision.reason}


def promote(version: str, name: str = REGISTERED_MODEL) -> str:
    """Give ``version`` the champion alias; the previous champion is remembered for rollback."""
    client = MlflowClient()
    client.get_model_version(name, version)  # raises when the version does not exist
    champ = champion_version(client, name)
    if champ is not None and str(champ.version) != str(version):
        client.set_model_version_tag(name, str(version), "previous_champion", str(champ.version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return f"version {version} is now {CHAMPION}" + (f" (was {champ.version})" if champ else "")


def rollback(name: str = REGISTERED_MODEL) -> str:
    """Move the champion alias back to the version it replaced."""
    client = MlflowClient()
    champ = champion_version(client, name)
    if champ is None:
        raise LookupError(f"{name} has no {CHAMPION}: nothing to roll back")
    previous = champ.tags.get("previous_champion")
    if not previous:
        raise LookupError(f"{CHAMPION} version {champ.version} replaced no earlier champion")
    client.set_registered_model_alias(name, CHAMPION, previous)
    return f"{CHAMPION} rolled back from version {champ.version} to {previous}"
