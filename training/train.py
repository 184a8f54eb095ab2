"""Train the LightGBM propensity model beside the rule scorer and a logistic baseline.

Steps compute, callers log: :func:`train` returns a :class:`TrainResult` and writes
nothing; ``training.tracking`` logs it to MLflow and applies the promotion gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from features import schema
from features.config import FeatureConfig
from features.transformers import lightgbm_preprocessor, linear_preprocessor
from training.calibration import Calibrator, choose_calibration
from training.config import TrainConfig
from training.leakage import probable_leaks, single_feature_auc
from training.metrics import binary_metrics, compare, decile_table, reliability_curve
from training.model import LeadModel
from training.rules import RuleScorer
from training.scoring import ScoreScale
from training.split import Split, random_split, time_split

log = logging.getLogger(__name__)


class NotEnoughData(ValueError):
    """Too little data to train a model: the rule scorer stays in charge."""


@dataclass
class TrainResult:
    """What one training produced, ready to be evaluated, logged and registered."""

    model: LeadModel
    baseline: Pipeline
    rules: RuleScorer
    split: Split
    comparison: pd.DataFrame  # one row per scorer on the test window
    test_predictions: pd.DataFrame  # contact_id, as_of, converted, model, rules, logistic[, oracle]
    deciles: pd.DataFrame
    reliability: pd.DataFrame
    excluded: dict[str, str]
    calibration_losses: dict[str, float]
    importance: pd.Series
    label: str = schema.LABEL
    params: dict[str, Any] = field(default_factory=dict)


def _lgb_params(config: TrainConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **config.lgbm_params,
        **(overrides or {}),
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": config.num_threads,
    }


def fit_booster(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
    *, categorical_idx: list[int], feature_names: list[str], config: TrainConfig,
    overrides: dict[str, Any] | None = None,
) -> lgb.Booster:
    """LightGBM with native categorical features and early stopping on the validation set."""
    params = _lgb_params(config, overrides)
    dtrain = lgb.Dataset(X_train, y_train, feature_name=feature_names,
                         categorical_feature=categorical_idx, free_raw_data=True)
    dval = lgb.Dataset(X_val, y_val, reference=dtrain)
    return lgb.train(
        params, dtrain, num_boost_round=config.num_boost_round, valid_sets=[dval],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )


def tune(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_trials: int,
    categorical_idx: list[int], feature_names: list[str], config: TrainConfig,
) -> dict[str, Any]:
    """Optuna search inside the training window: the last as-of date of the window is the
    inner validation set. Returns the best parameter overrides."""
    import optuna
    from sklearn.metrics import log_loss

    inner_val = groups == np.max(groups)
    if inner_val.all() or not inner_val.any():
        raise NotEnoughData("tuning needs at least two as-of dates in the training window")

    def objective(trial: optuna.Trial) -> float:
        overrides = {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 8, 128, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 20, 500, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30, log=True),
        }
        b = fit_booster(X[~inner_val], y[~inner_val], X[inner_val], y[inner_val],
                        categorical_idx=categorical_idx, feature_names=feature_names,
                        config=config, overrides=overrides)
        return log_loss(y[inner_val], b.predict(X[inner_val]), labels=[0, 1])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    study.optimize(objective, n_trials=n_trials)
    return dict(study.best_params)


def fit_baseline(frame: pd.DataFrame, y: np.ndarray, categorical: list[str], numeric: list[str],
                 *, config: TrainConfig) -> Pipeline:
    """Logistic regression on one-hot categories and scaled log numbers (the simple baseline)."""
    if len(frame) > config.max_baseline_rows:
        keep = np.random.default_rng(config.seed).choice(len(frame), config.max_baseline_rows, replace=False)
        frame, y = frame.iloc[np.sort(keep)], y[np.sort(keep)]
    model = Pipeline([
        ("prep", linear_preprocessor(categorical, numeric)),
        ("lr", LogisticRegression(C=0.5, max_iter=2000, random_state=config.seed)),
    ])
    return model.fit(frame, y)


def train(
    data: pd.DataFrame,
    *,
    config: TrainConfig | None = None,
    feature_config: FeatureConfig | None = None,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    label: str = schema.LABEL,
    time_column: str | None = "as_of",
    rules: RuleScorer | None = None,
    truth: pd.DataFrame | None = None,
    tune_trials: int = 0,
) -> TrainResult:
    """Train, calibrate and evaluate on a training set (one row per contact and as-of date).

    Parameters
    ----------
    data
        The point-in-time training set (or a CRM table) with the label column.
    categorical, numeric
        Feature columns; default :data:`schema.CATEGORICAL_FEATURES` / ``NUMERIC_FEATURES``.
    time_column
        Column to split by time; ``None`` for a stratified random split.
    truth
        Optional ``contact_id, as_of, p_convert_90d`` (the generator's oracle) for evaluation.
    """
    config = config or TrainConfig()
    feature_config = feature_config or FeatureConfig()
    categorical = list(schema.CATEGORICAL_FEATURES if categorical is None else categorical)
    numeric = list(schema.NUMERIC_FEATURES if numeric is None else numeric)
    data = data.reset_index(drop=True)
    y = data[label].to_numpy(dtype="int64")
    split = (time_split(data[time_column], config.split, horizon_days=feature_config.horizon_days)
             if time_column else random_split(data[label], config.split, seed=config.seed))

    n_pos = int(y[split.train].sum())
    if n_pos < config.gate.min_train_positives:
        raise NotEnoughData(f"{n_pos} converters in the training window, fewer than "
                            f"gate.min_train_positives={config.gate.min_train_positives}")
    if y[split.validation].sum() < 10 or y[split.test].sum() < 10:
        raise NotEnoughData("fewer than 10 converters in the validation or test window")

    aucs = single_feature_auc(data.loc[split.train], y[split.train], categorical + numeric, seed=config.seed)
    excluded = probable_leaks(aucs, config.leak_auc_threshold)
    for col, why in excluded.items():
        log.warning("excluded feature %s: %s", col, why)
    categorical = [c for c in categorical if c not in excluded]
    numeric = [c for c in numeric if c not in excluded]

    prep = lightgbm_preprocessor(categorical, numeric).fit(data.loc[split.train])
    X = prep.transform(data).to_numpy(dtype="float64")
    names = [*categorical, *numeric]
    cat_idx = list(range(len(categorical)))

    overrides: dict[str, Any] = {}
    if tune_trials:
        groups = (pd.to_datetime(data.loc[split.train, time_column]).to_numpy().astype("int64")
                  if time_column else np.arange(split.train.sum()) % 5)
        overrides = tune(X[split.train], y[split.train], groups, n_trials=tune_trials,
                         categorical_idx=cat_idx, feature_names=names, config=config)
    booster = fit_booster(X[split.train], y[split.train], X[split.validation], y[split.validation],
                          categorical_idx=cat_idx, feature_names=names, config=config, overrides=overrides)

    raw_val = booster.predict(X[split.validation])
    method, losses = (choose_calibration(raw_val, y[split.validation], seed=config.seed)
                      if config.calibration == "auto" else (config.calibration, {}))
    calibrator = Calibrator.fit(raw_val, y[split.validation], method)
    scale = ScoreScale.fit(calibrator.transform(raw_val), config.band_thresholds)

    rules = rules or RuleScorer()
    rules = rules.calibrate(rules.points(data.loc[split.train])[0], y[split.train])

    baseline = fit_baseline(data.loc[split.train], y[split.train], categorical, numeric, config=config)

    model = LeadModel(
        feature_config=feature_config, categorical=categorical, numeric=numeric,
        preprocessor=prep, booster=booster, calibrator=calibrator, scale=scale, rules=rules,
        top_k=config.reasons_top_k,
    )
    test = data.loc[split.test]
    preds = pd.DataFrame({
        "contact_id": test["contact_id"].to_numpy() if "contact_id" in test else np.arange(len(test)),
        label: y[split.test],
        "model": calibrator.transform(booster.predict(X[split.test])),
        "rules": rules.predict_proba(test),
        "logistic": baseline.predict_proba(test)[:, 1],
    })
    if time_column:
        preds.insert(1, "as_of", test[time_column].to_numpy())
    if truth is not None and time_column:
        t = truth.rename(columns={"p_convert_90d": "oracle"})[["contact_id", "as_of", "oracle"]]
        preds = preds.merge(t, on=["contact_id", "as_of"], how="left")
    if "oracle" in preds and preds["oracle"].isna().any():
        # merged duplicates and the like: compare every scorer on the rows the oracle knows
        log.warning("truth table misses %d of %d test rows; they are left out of the comparison",
                    int(preds["oracle"].isna().sum()), len(preds))
        preds = preds[preds["oracle"].notna()].reset_index(drop=True)
    scorers = {c: preds[c].to_numpy() for c in ("model", "rules", "logistic", "oracle") if c in preds}
    comparison = compare(scorers, preds[label].to_numpy()).set_index("scorer")
    model.metadata = {
        "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "metrics": {k: float(v) for k, v in comparison.loc["model"].items() if _is_number(v)},
        "split": split.description,
        "best_iteration": booster.best_iteration,
        "calibration": method,
        "excluded_features": excluded,
        "rows": {"train": int(split.train.sum()), "validation": int(split.validation.sum()),
                 "test": int(split.test.sum())},
        "positives": {"train": n_pos, "validation": int(y[split.validation].sum()),
                      "test": int(y[split.test].sum())},
        "tuned": overrides,
    }
    importance = pd.Series(booster.feature_importance("gain"), index=names).sort_values(ascending=False)
    return TrainResult(
        model=model, baseline=baseline, rules=rules, split=split, comparison=comparison,
        test_predictions=preds,
        deciles=decile_table(preds[label], preds["model"]),
        reliability=reliability_curve(preds[label], preds["model"]),
        excluded=excluded, calibration_losses=losses, importance=importance, label=label,
        params={**_lgb_params(config, overrides), "num_boost_round": config.num_boost_round,
                "early_stopping_rounds": config.early_stopping_rounds, "calibration": method,
                "half_life_days": feature_config.half_life_days,
                "horizon_days": feature_config.horizon_days, "tune_trials": tune_trials},
    )


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating))
