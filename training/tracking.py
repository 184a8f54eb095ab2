"""MLflow: log a training run, register the model, apply the promotion gate, move aliases.

Embedded default store: ``sqlite:///mlflow.db`` with artifacts under ``./mlartifacts`` in
the working directory; ``MLFLOW_TRACKING_URI`` points elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable
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
from training.train import TrainResult, by_chunks

log = logging.getLogger(__name__)
EXPERIMENT = "lead-scoring"


_EMBEDDED_URIS: set[str] = set()  # the embedded stores configure_tracking chose


def user_tracking_uri() -> str | None:
    """The user's ``MLFLOW_TRACKING_URI`` (used whatever the workdir); None when it is unset
    or is an embedded store :func:`configure_tracking` set earlier in this process
    (``mlflow.set_tracking_uri`` exports it: not the user's choice)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri not in _EMBEDDED_URIS else None


def configure_tracking(workdir: Path | str = ".") -> str:
    """Use ``MLFLOW_TRACKING_URI`` or the embedded SQLite store in ``workdir``; returns the URI."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = user_tracking_uri()
    if uri is None:  # another workdir gets its own store
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


class NotComparable(ValueError):
    """The champion cannot be scored on the new model's test rows (the message says why)."""


@dataclass
class ChampionComparison:
    """The current champion measured on the new model's test rows, or why it could not be.

    ``metrics`` are the champion's figures on exactly the rows behind the new model's test
    metrics (``window`` and ``rows`` describe them); ``None`` with ``why_not`` when the
    champion could not be scored there (another input kind, horizon or dataset, missing
    columns, a load failure).
    """

    version: str
    metrics: dict[str, float] | None = None
    window: str = ""
    rows: int = 0
    why_not: str | None = None

    def to_tag(self) -> dict[str, Any]:
        if self.metrics is None:
            return {"champion_version": self.version, "comparable": False, "why_not": self.why_not}
        return {"champion_version": self.version, "comparable": True, "test_window": self.window,
                "rows": self.rows, "champion_metrics": self.metrics}


def gate(new: dict[str, float], rules: dict[str, float],
         champion: ChampionComparison | None, config: GateConfig) -> GateDecision:
    """Champion only if the new model beats the rules and is not worse than the champion.

    Calibration fails when the ECE is above ``max_ece`` and also above what a calibrated model
    reaches by chance on these test rows (``ece_by_chance``, 95th percentile; at most twice
    ``max_ece``): on a few hundred rows chance alone gives about 0.05, and a sound model must
    not be held back by it, while on a hundred rows a model off by 0.10 must still be.

    ``champion``: the current champion's figures on the new model's own test rows
    (:func:`compare_with_champion`), ``None`` when there is no champion.
    A champion that could not be scored on those rows (``why_not``) is not replaced
    automatically: the new version stays challenger and the reason says why.
    """
    m = config.metric
    if new[m] <= rules[m] + config.min_gain_over_rules:
        return GateDecision(False, CHALLENGER, f"{m} {new[m]:.4f} does not beat the rule scorer's "
                            f"{rules[m]:.4f} by {config.min_gain_over_rules}")
    ece = new.get("ece", 0.0)
    chance = min(new.get("ece_by_chance", float("nan")), 2 * config.max_ece)  # NaN stays NaN
    if ece > config.max_ece and not ece <= chance:
        by_chance = (f" (and above the {chance:.4f} a calibrated model may reach by chance on "
                     "these rows)" if not math.isnan(chance) else "")
        return GateDecision(False, CHALLENGER, f"calibration error {ece:.4f} > {config.max_ece}{by_chance}")
    if champion is None:
        return GateDecision(True, CHAMPION, f"{m} {new[m]:.4f} vs rules {rules[m]:.4f}, no champion yet")
    if champion.metrics is None or m not in champion.metrics:
        why = champion.why_not or f"no {m} measured"
        return GateDecision(False, CHALLENGER, f"{m} {new[m]:.4f} vs rules {rules[m]:.4f}; not compared "
                            f"with champion version {champion.version}: {why}. It stays champion "
                            "until a version is promoted by hand (leadscore promote VERSION)")
    c = champion.metrics[m]
    n, window = champion.rows, champion.window
    where = ("the same test rows" if not n else
             f"the same {n} test rows{window[len(f'{n} rows'):]}" if window.startswith(f"{n} rows")
             else f"the same {n} test rows ({window})" if window else f"the same {n} test rows")
    if new[m] < c - config.max_loss_vs_champion:
        return GateDecision(False, CHALLENGER, f"{m} {new[m]:.4f} is worse than champion {c:.4f} "
                            f"(version {champion.version}) on {where}, by more than "
                            f"{config.max_loss_vs_champion}")
    return GateDecision(True, CHAMPION, f"{m} {new[m]:.4f} vs rules {rules[m]:.4f}, champion {c:.4f} "
                        f"(version {champion.version}) on {where}")


def _window_start(description: Any) -> pd.Timestamp | None:
    """First date of a split window's description (``"2026-03-01..2026-03-01 (1 date(s))"``);
    None for a random split's (``"402 rows (20%, ...)"``)."""
    import re

    match = re.match(r"\s*(\d{4}-\d{2}-\d{2})\.\.", str(description or ""))
    return pd.Timestamp(match.group(1)) if match else None


def incomparable(champion: Any, new: Any) -> str | None:
    """Why ``champion``'s figures on ``new``'s test rows would not be a fair comparison, or None.

    Both are :class:`training.model.LeadModel`. Not comparable: another input kind (events vs a
    CRM table), another label horizon or feature settings (the test rows' features and labels
    are built with the new model's), another dataset or target (tables), or a test window that
    starts before the champion's own (the champion may have been fitted on those rows).
    """
    if champion.input_kind != new.input_kind:
        return (f"it scores {champion.input_kind} input, the new model {new.input_kind} input "
                "(a CRM table and the event log are different inputs)")
    if new.input_kind == "events":
        a, b = champion.feature_config, new.feature_config
        if a.horizon_days != b.horizon_days:
            return (f"it predicts conversion within {a.horizon_days} days, the new model within "
                    f"{b.horizon_days} days")
        for key, value in b.model_dump().items():
            if getattr(a, key, None) != value:
                return (f"its features are built with {key}={getattr(a, key, None)!r}, the new "
                        f"model's with {value!r}")
    else:
        a, b = champion.dataset or {}, new.dataset or {}
        if a.get("name") != b.get("name"):
            return f"it was trained on dataset {a.get('name')!r}, the new model on {b.get('name')!r}"
        if a.get("target") != b.get("target"):
            return f"its target is {a.get('target')}, the new model's {b.get('target')}"
    ours = _window_start((new.metadata.get("split") or {}).get("test"))
    theirs = _window_start((champion.metadata.get("split") or {}).get("test"))
    if ours is not None and theirs is not None and ours < theirs:
        return (f"the new test window starts {ours.date()}, before the champion's own test window "
                f"({theirs.date()}): the champion may have been fitted on these rows")
    return None


def _input_columns(model: Any) -> list[str]:
    """The columns ``model`` reads from the rows it scores (a table's own column names)."""
    if model.input_kind == "table":
        from training.crm import table_column

        return [table_column(c) for c in model.columns]
    return list(model.columns)


def champion_probabilities(champion: Any, new: Any, rows: pd.DataFrame, *,
                           score: Callable[[Any, pd.DataFrame], np.ndarray] | None = None) -> np.ndarray:
    """``champion``'s probabilities for ``rows``, the inputs behind ``new``'s test predictions
    (:meth:`training.train.TrainResult.test_inputs`, or a table's raw rows with ``score``).

    Raises :class:`NotComparable` with the reason when the figures would not be comparable
    (:func:`incomparable`), a column it needs is missing or scoring fails.
    """
    why = incomparable(champion, new)
    if why:
        raise NotComparable(why)
    missing = [c for c in _input_columns(champion) if c not in rows.columns]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise NotComparable(f"the test rows lack column(s) it needs: {shown}")
    try:  # a chunk of rows at a time, as train() scores: a test window of millions of rows
        predict = (lambda part: score(champion, part)) if score else champion.predict_proba
        p = np.asarray(by_chunks(predict, rows), dtype="float64")
    except Exception as e:  # any failure to score: not comparable, said by kind (no row values)
        raise NotComparable(f"scoring the test rows failed ({type(e).__name__})") from e
    if p.shape != (len(rows),) or not np.isfinite(p).all():
        raise NotComparable(f"it gave {p.size} usable probabilities for {len(rows)} test rows")
    return p


def compare_with_champion(result: TrainResult, rows: pd.DataFrame, version: str, *,
                          registered_name: str = REGISTERED_MODEL,
                          score: Callable[[Any, pd.DataFrame], np.ndarray] | None = None) -> ChampionComparison:
    """Load champion ``version`` from the registry and measure it on ``rows``, the inputs behind
    ``result.test_predictions`` (same order), with the same labels: the gate's paired figures."""
    from training.metrics import compare
    from training.registry import load_model

    preds = result.test_predictions
    if len(rows) != len(preds):
        return ChampionComparison(version, why_not=f"{len(rows)} rows given for {len(preds)} test predictions")
    if "contact_id" in rows and "contact_id" in preds and not np.array_equal(
            rows["contact_id"].astype(str).to_numpy(), preds["contact_id"].astype(str).to_numpy()):
        return ChampionComparison(version, why_not="the rows given are not the test rows")
    try:
        champion = load_model(f"models:/{registered_name}/{version}")
    except Exception as e:  # noqa: BLE001 - a missing or unreadable artifact: not comparable, said so
        return ChampionComparison(version, why_not=f"it could not be loaded ({type(e).__name__})")
    try:
        p = champion_probabilities(champion, result.model, rows, score=score)
    except NotComparable as e:
        return ChampionComparison(version, why_not=str(e))
    row = compare({"champion": p}, preds[result.label].to_numpy()).set_index("scorer").loc["champion"]
    metrics = {k: float(v) for k, v in row.items() if _finite(v)}
    window = result.split.description.get("test", "")
    return ChampionComparison(version, metrics=metrics, window=window, rows=len(preds))


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
    champion_input: pd.DataFrame | None = None,
    champion_score: Callable[[Any, pd.DataFrame], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Log the run (params, metrics, lineage, plots, tables, model), register the model and
    apply the gate. Returns a summary with run_id, version, alias, the gate's reason and the
    champion comparison (``champion``: the tag written on the version, or None).

    The gate compares with the current champion scored on this run's own test rows (paired
    figures, :func:`compare_with_champion`): ``training_set`` must be the frame given to
    :func:`training.train.train`, or ``champion_input`` the rows to score instead (a CRM
    table's raw rows, scored by ``champion_score(model, rows)``).
    """
    client = MlflowClient()
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params({k: v for k, v in {**result.params, **(extra_params or {})}.items()
                           if not isinstance(v, (dict, list))})
        for scorer, row in result.comparison.iterrows():
            mlflow.log_metrics({f"{scorer}_{k}": float(v) for k, v in row.items() if _finite(v)})
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
        comparison = None
        if champ is not None:
            rows = champion_input if champion_input is not None else result.test_inputs(training_set)
            comparison = compare_with_champion(result, rows, str(champ.version),
                                               registered_name=registered_name, score=champion_score)
        new = result.comparison.loc["model"].to_dict()
        decision = gate(new, result.comparison.loc["rules"].to_dict(), comparison,
                        gate_config or GateConfig())
        test_window = result.split.description.get("test", "")
        preds_rows = len(result.test_predictions)
        client.set_model_version_tag(registered_name, version, "test_metrics",
                                     json.dumps({k: float(v) for k, v in new.items() if _finite(v)}))
        client.set_model_version_tag(registered_name, version, "test_window",
                                     f"{test_window}; {preds_rows} rows scored")
        client.set_model_version_tag(registered_name, version, "gate", decision.reason)
        client.set_model_version_tag(registered_name, version, "run_id", run.info.run_id)
        if comparison is not None:
            client.set_model_version_tag(registered_name, version, "gate_champion",
                                         json.dumps(comparison.to_tag()))
            mlflow.set_tags({"gate.champion_version": comparison.version,
                             "gate.champion_compared": "same test rows" if comparison.metrics
                             else f"not compared: {comparison.why_not}"})
            if comparison.metrics:  # the champion on this run's test rows (not its own window)
                mlflow.log_metrics({f"champion_{k}": v for k, v in comparison.metrics.items()})
        if decision.promoted and champ is not None:
            client.set_model_version_tag(registered_name, version, "previous_champion", str(champ.version))
        client.set_registered_model_alias(registered_name, decision.alias, version)
        mlflow.set_tags({"gate": decision.reason, "alias": decision.alias})
    return {"run_id": run.info.run_id, "version": version, "alias": decision.alias,
            "promoted": decision.promoted, "reason": decision.reason,
            "champion": comparison.to_tag() if comparison is not None else None}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and bool(np.isfinite(v))


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
