"""Train the LightGBM propensity model beside the rule scorer and a logistic baseline.

Steps compute, callers log: :func:`train` returns a :class:`TrainResult` and writes
nothing; ``training.tracking`` logs it to MLflow and applies the promotion gate.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from features import schema
from features.config import FeatureConfig
from features.transformers import lightgbm_preprocessor, linear_preprocessor
from training.calibration import Calibrator, choose_calibration
from training.config import TrainConfig
from training.leakage import probable_leaks, single_feature_auc
from training.metrics import compare, decile_table, reliability_curve
from training.model import LeadModel
from training.rules import RuleScorer
from training.scoring import ScoreScale
from training.split import Split, clear_before, random_split, time_split

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
    #: Positions, in the frame given to :func:`train`, of the rows of ``test_predictions``
    #: (same order). Fewer than the test window when the truth table misses some rows.
    test_rows: np.ndarray
    label: str = schema.LABEL
    params: dict[str, Any] = field(default_factory=dict)

    def test_inputs(self, data: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``data`` (the frame given to :func:`train`) behind ``test_predictions``,
        in their order: what another scorer must score to be compared with these figures."""
        return data.iloc[self.test_rows].reset_index(drop=True)


def _lgb_params(config: TrainConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **config.lgbm_params,
        **(overrides or {}),
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": config.num_threads,
    }


_JSON_SPECIAL = str.maketrans({c: "_" for c in '[]{}",:'})


def lightgbm_names(names: list[str]) -> list[str]:
    """Feature names LightGBM accepts (no JSON special characters, unique), same order.

    Column names of a CRM export can hold ``:``, ``,`` or brackets; LightGBM refuses them.
    The model keeps the original names; only the booster sees these.
    """
    out: list[str] = []
    for n in names:
        safe = str(n).translate(_JSON_SPECIAL) or "_"
        while safe in out:
            safe += "_"
        out.append(safe)
    return out


def merge_boosters(boosters: list[lgb.Booster]) -> lgb.Booster:
    """One booster whose raw score is the mean raw score (log-odds) of ``boosters``.

    The trees of every booster are concatenated with their leaf and internal values divided
    by the number of boosters; LightGBM's tree SHAP (``pred_contrib``) is linear in the trees,
    so contributions are the mean contributions too. All boosters must share objective and
    features (cross-fitting folds of one training set).
    """
    if len(boosters) == 1:
        return boosters[0]
    k = len(boosters)
    texts = [b.model_to_string() for b in boosters]
    head, _, _ = texts[0].partition("\nTree=0\n")
    head = "\n".join(line for line in head.split("\n") if not line.startswith("tree_sizes="))
    tail = texts[0].split("end of trees", 1)[1]
    trees: list[list[str]] = []
    for text in texts:
        body = text.partition("\nTree=0\n")[2].split("end of trees", 1)[0]
        for block in ("Tree=0\n" + body).strip().split("\n\n\n"):
            lines = []
            for line in block.strip().split("\n"):
                key, _, value = line.partition("=")
                if key in ("leaf_value", "internal_value"):
                    value = " ".join(repr(float(v) / k) for v in value.split())
                lines.append(f"{key}={value}")
            trees.append(lines)
    out = [head.rstrip("\n"), ""]
    for i, lines in enumerate(trees):
        out += [f"Tree={i}", *lines[1:], "", ""]
    out.append("end of trees" + tail)
    merged = lgb.Booster(model_str="\n".join(out))
    return lgb.Booster(model_str=merged.model_to_string())  # canonical text (tree_sizes back)


def model_matrix(prep: Pipeline, data: pd.DataFrame, rows: np.ndarray, *, width: int,
                 chunk_rows: int = 1 << 18) -> np.ndarray:
    """``prep.transform`` of the given rows of ``data`` as one float64 matrix, a chunk of rows
    at a time: the pipeline's intermediate frames stay the size of a chunk, not of the
    training set (millions of rows)."""
    out = np.empty((len(rows), width), dtype="float64")
    for start in range(0, len(rows), chunk_rows):
        part = rows[start:start + chunk_rows]
        out[start:start + len(part)] = prep.transform(data.iloc[part]).to_numpy(dtype="float64")
    return out


def by_chunks(predict: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame,
              chunk_rows: int = 1 << 17) -> np.ndarray:
    """``predict(frame)`` a chunk of rows at a time (the same values): a pipeline's one-hot
    frames of a test window of millions of rows would otherwise be held whole, twice."""
    if len(frame) <= chunk_rows:
        return np.asarray(predict(frame))
    return np.concatenate([np.asarray(predict(frame.iloc[i:i + chunk_rows]))
                           for i in range(0, len(frame), chunk_rows)])


def fit_booster(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
    *, categorical_idx: list[int], feature_names: list[str], config: TrainConfig,
    overrides: dict[str, Any] | None = None,
) -> lgb.Booster:
    """LightGBM with native categorical features and early stopping on the validation set."""
    params = _lgb_params(config, overrides)
    dtrain = lgb.Dataset(X_train, y_train, feature_name=lightgbm_names(feature_names),
                         categorical_feature=categorical_idx, free_raw_data=True)
    dval = lgb.Dataset(X_val, y_val, reference=dtrain)
    return lgb.train(
        params, dtrain, num_boost_round=config.num_boost_round, valid_sets=[dval],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )


def inner_time_split(groups: np.ndarray, *, config: TrainConfig,
                     horizon_days: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, validation)`` row masks of the tuning split of a training window by as-of date
    (``groups``: datetime64 values).

    The last date is the inner validation set; the inner training rows are the dates at least
    the gap (``config.split.gap_days``, default ``horizon_days``) before it and strictly
    earlier, the rule of :func:`training.split.time_split` (:func:`training.split.clear_before`).
    Raises ``ValueError`` when no such date is left: tuning would then fit on labels that look
    into its validation period.
    """
    if config.split.gap_days is None and horizon_days is None:
        raise ValueError("tuning by as-of date needs the label horizon (horizon_days)")
    gap = pd.Timedelta(days=horizon_days if config.split.gap_days is None else config.split.gap_days)
    t = np.asarray(groups)
    last = t.max()
    validation = t == last
    fit = clear_before(t, last, gap)
    if not fit.any():
        dates = np.unique(t)
        raise ValueError(
            f"--tune: the training window's {len(dates)} as-of date(s) "
            f"({pd.Timestamp(dates[0]).date()}..{pd.Timestamp(last).date()}) leave no date at least "
            f"{gap.days} days before its last one, the inner validation date; give a longer "
            "history, lower split.gap_days or train without --tune")
    return fit, validation


def tune(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, n_trials: int,
    categorical_idx: list[int], feature_names: list[str], config: TrainConfig,
    inner_folds: int = 3, horizon_days: int | None = None,
) -> dict[str, Any]:
    """Optuna search inside the training window. Returns the best parameter overrides.

    With ``groups`` (as-of dates) the last date of the window is the inner validation set and
    the inner training rows are the dates at least the split's gap (``split.gap_days``,
    default ``horizon_days``) before it, as :func:`training.split.time_split` separates its
    windows: no inner-training label looks into the inner-validation period. Without
    ``groups`` (a random split, e.g. a CRM table) every trial is scored by stratified
    ``inner_folds``-fold cross-validation of the training rows (mean log loss), which one
    small inner split is too noisy for.
    """
    import optuna
    from sklearn.metrics import log_loss

    if groups is None:
        cv = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=config.seed)
        inner = list(cv.split(X, y))  # (fit, validation) positions
    else:
        inner = [inner_time_split(groups, config=config, horizon_days=horizon_days)]

    def objective(trial: optuna.Trial) -> float:
        overrides = {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            # small trees keep the per-lead reasons (TreeSHAP) cheap; see training.config
            "num_leaves": trial.suggest_int("num_leaves", 4, 32, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 20, 500, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30, log=True),
        }
        losses = []
        for fit, val in inner:
            b = fit_booster(X[fit], y[fit], X[val], y[val], categorical_idx=categorical_idx,
                            feature_names=feature_names, config=config, overrides=overrides)
            losses.append(log_loss(y[val], b.predict(X[val]), labels=[0, 1]))
        return float(np.mean(losses))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    study.optimize(objective, n_trials=n_trials)
    return dict(study.best_params)


BaselineNumeric = Literal["log1p", "quantile_bins"]


def binned_linear_preprocessor(categorical: list[str], numeric: list[str], *, bins: int = 10,
                               rare_tol: float = 0.01) -> Pipeline:
    """One-hot categories and one-hot quantile bins of numbers (plus missing flags): the
    preparation of a scorecard-style logistic regression, which lets a linear model follow
    the non-monotone effects common in a CRM export's aggregates (time on site, visits)."""
    from feature_engine.encoding import RareLabelEncoder
    from feature_engine.imputation import CategoricalImputer
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder

    from features.transformers import MISSING, RARE, ColumnSelector

    steps: list[tuple[str, Any]] = [("select", ColumnSelector(categorical, numeric))]
    encoders: list[tuple[str, Any, list[str]]] = []
    if categorical:
        steps += [
            ("impute_cat", CategoricalImputer(fill_value=MISSING, variables=list(categorical),
                                              ignore_format=True)),
            ("rare", RareLabelEncoder(tol=rare_tol, n_categories=1, variables=list(categorical),
                                      replace_with=RARE, ignore_format=True)),
        ]
        encoders.append(("cat", OneHotEncoder(handle_unknown="ignore"), list(categorical)))
    if numeric:
        encoders.append(("num", Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True)),
            ("bins", KBinsDiscretizer(n_bins=bins, encode="onehot", strategy="quantile",
                                      quantile_method="averaged_inverted_cdf")),
        ]), list(numeric)))
    steps.append(("encode", ColumnTransformer(encoders)))
    return Pipeline(steps)


def fit_baseline(frame: pd.DataFrame, y: np.ndarray, categorical: list[str], numeric: list[str],
                 *, config: TrainConfig, numeric_encoding: BaselineNumeric = "log1p") -> Pipeline:
    """Logistic regression on one-hot categories and scaled log numbers (the simple baseline);
    with ``numeric_encoding="quantile_bins"`` on one-hot quantile bins of the numbers instead
    (:func:`binned_linear_preprocessor`)."""
    if len(frame) > config.max_baseline_rows:
        keep = np.random.default_rng(config.seed).choice(len(frame), config.max_baseline_rows, replace=False)
        frame, y = frame.iloc[np.sort(keep)], y[np.sort(keep)]
    prep = (binned_linear_preprocessor(categorical, numeric) if numeric_encoding == "quantile_bins"
            else linear_preprocessor(categorical, numeric))
    model = Pipeline([
        ("prep", prep),
        ("lr", LogisticRegression(C=0.5, max_iter=2000, random_state=config.seed)),
    ])
    with warnings.catch_warnings():  # constant or few-valued columns: bins merged, as intended
        warnings.filterwarnings("ignore", message=".*(Bins whose width|number of unique categories).*")
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
    split: Split | None = None,
    cross_fit: int = 0,
    baseline_numeric: BaselineNumeric = "log1p",
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
    split
        A ready split (e.g. a CRM table's split by its own time column); default: from
        ``time_column`` as above.
    cross_fit
        With ``k > 1``: the training and validation windows are pooled and split into ``k``
        stratified folds; each fold's booster is early-stopped on its held-out fold, the
        out-of-fold predictions choose and fit the calibration, and the model is the mean of
        the ``k`` boosters (:func:`merge_boosters`). Uses every labelled row outside the test
        window for fitting, which matters for small tables. Rules and baseline are fitted on
        the same pooled rows. Meant for random splits.
    baseline_numeric
        How the logistic baseline sees numbers (:func:`fit_baseline`).
    """
    config = config or TrainConfig()
    feature_config = feature_config or FeatureConfig()
    categorical = list(schema.CATEGORICAL_FEATURES if categorical is None else categorical)
    numeric = list(schema.NUMERIC_FEATURES if numeric is None else numeric)
    data = data.reset_index(drop=True)
    y = data[label].to_numpy(dtype="int64")
    if split is None:
        split = (time_split(data[time_column], config.split, horizon_days=feature_config.horizon_days)
                 if time_column else random_split(data[label], config.split, seed=config.seed))
    folds = int(cross_fit) if cross_fit and cross_fit > 1 else 0
    fit_rows = (split.train | split.validation) if folds else split.train

    n_pos = int(y[fit_rows].sum())
    if n_pos < config.gate.min_train_positives:
        raise NotEnoughData(f"{n_pos} converters in the training window, fewer than "
                            f"gate.min_train_positives={config.gate.min_train_positives}")
    if (not folds and y[split.validation].sum() < 10) or y[split.test].sum() < 10:
        raise NotEnoughData("fewer than 10 converters in the validation or test window")
    if folds and min(n_pos, int(fit_rows.sum()) - n_pos) < folds:
        raise NotEnoughData(f"too few rows of one class for {folds}-fold cross-fitting")

    aucs = single_feature_auc(data.loc[fit_rows], y[fit_rows], categorical + numeric, seed=config.seed)
    excluded = probable_leaks(aucs, config.leak_auc_threshold)
    for col, why in excluded.items():
        log.warning("excluded feature %s: %s", col, why)
    categorical = [c for c in categorical if c not in excluded]
    numeric = [c for c in numeric if c not in excluded]

    prep = lightgbm_preprocessor(categorical, numeric).fit(data.loc[fit_rows])
    names = [*categorical, *numeric]
    cat_idx = list(range(len(categorical)))
    used = split.train | split.validation | split.test  # rows between windows are never read
    X_used = model_matrix(prep, data, np.flatnonzero(used), width=len(names))
    at = np.cumsum(used) - 1  # row of ``data`` -> its row of ``X_used``

    def X(rows: np.ndarray) -> np.ndarray:
        """The model matrix of ``rows`` of ``data`` (a mask or positions, all in a window)."""
        return X_used[at[rows]]

    overrides: dict[str, Any] = {}
    if tune_trials:
        groups = pd.to_datetime(data.loc[fit_rows, time_column]).to_numpy() if time_column else None
        overrides = tune(X(fit_rows), y[fit_rows], groups, n_trials=tune_trials,
                         categorical_idx=cat_idx, feature_names=names, config=config,
                         horizon_days=feature_config.horizon_days)
    val_groups = None  # rows of one contact at several validation dates: one calibration fold
    if folds:
        rows = np.flatnonzero(fit_rows)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        raw_val = np.empty(len(rows))
        boosters = []
        for fit_idx, val_idx in cv.split(rows, y[rows]):
            X_val = X(rows[val_idx])
            b = fit_booster(X(rows[fit_idx]), y[rows[fit_idx]], X_val, y[rows[val_idx]],
                            categorical_idx=cat_idx, feature_names=names, config=config,
                            overrides=overrides)
            raw_val[val_idx] = b.predict(X_val, num_threads=config.num_threads)
            boosters.append(b)
        del X_val  # a window's matrix: not held through calibration and the baseline
        best_iteration: int | list[int] = [int(b.best_iteration) for b in boosters]
        booster = merge_boosters(boosters)
        y_val = y[rows]
        described = f"{int(fit_rows.sum())} rows (train + validation windows, {folds}-fold cross-fitted)"
        split = Split(fit_rows, np.zeros_like(fit_rows), split.test, {
            "train": described,
            "validation": f"out-of-fold predictions of the same rows ({folds} folds): "
                          "early stopping and calibration",
            "test": split.description["test"],
        })
    else:
        X_val, y_val = X(split.validation), y[split.validation]
        booster = fit_booster(X(split.train), y[split.train], X_val, y_val,
                              categorical_idx=cat_idx, feature_names=names, config=config,
                              overrides=overrides)
        best_iteration = booster.best_iteration
        raw_val = booster.predict(X_val, num_threads=config.num_threads)
        del X_val  # a window's matrix: not held through calibration and the baseline
        if "contact_id" in data:  # a contact's rows at the validation dates: one fold
            val_groups = data.loc[split.validation, "contact_id"].to_numpy()

    method, losses = (choose_calibration(raw_val, y_val, seed=config.seed, groups=val_groups)
                      if config.calibration == "auto" else (config.calibration, {}))
    calibrator = Calibrator.fit(raw_val, y_val, method)
    scale = ScoreScale.fit(calibrator.transform(raw_val), config.band_thresholds)

    rules = rules or RuleScorer()
    rules = rules.calibrate(rules.points(data.loc[fit_rows])[0], y[fit_rows])

    baseline = fit_baseline(data.loc[fit_rows], y[fit_rows], categorical, numeric, config=config,
                            numeric_encoding=baseline_numeric)

    model = LeadModel(
        feature_config=feature_config, categorical=categorical, numeric=numeric,
        preprocessor=prep, booster=booster, calibrator=calibrator, scale=scale, rules=rules,
        top_k=config.reasons_top_k,
    )
    test = data.loc[split.test]
    preds = pd.DataFrame({
        "contact_id": test["contact_id"].to_numpy() if "contact_id" in test else np.arange(len(test)),
        label: y[split.test],
        "model": calibrator.transform(booster.predict(X(split.test), num_threads=config.num_threads)),
        "rules": by_chunks(rules.predict_proba, test),
        "logistic": by_chunks(lambda part: baseline.predict_proba(part)[:, 1], test),
    })
    if time_column:
        preds.insert(1, "as_of", test[time_column].to_numpy())
    # each prediction's row of ``data``: a champion scored later must see the same rows
    preds["_row"] = np.flatnonzero(split.test)
    if truth is not None and time_column:
        t = truth.rename(columns={"p_convert_90d": "oracle"})[["contact_id", "as_of", "oracle"]]
        preds = preds.merge(t, on=["contact_id", "as_of"], how="left")
    if "oracle" in preds and preds["oracle"].isna().any():
        # merged duplicates and the like: compare every scorer on the rows the oracle knows
        log.warning("truth table misses %d of %d test rows; they are left out of the comparison",
                    int(preds["oracle"].isna().sum()), len(preds))
        preds = preds[preds["oracle"].notna()].reset_index(drop=True)
    test_rows = preds.pop("_row").to_numpy(dtype="int64")
    scorers = {c: preds[c].to_numpy() for c in ("model", "rules", "logistic", "oracle") if c in preds}
    comparison = compare(scorers, preds[label].to_numpy()).set_index("scorer")
    model.metadata = {
        "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "metrics": {k: float(v) for k, v in comparison.loc["model"].items() if _is_number(v)},
        "split": split.description,
        "best_iteration": best_iteration,
        "calibration": method,
        "excluded_features": excluded,
        "rows": {"train": int(split.train.sum()), "validation": int(split.validation.sum()),
                 "test": int(split.test.sum())},
        "positives": {"train": n_pos, "validation": int(y[split.validation].sum()),
                      "test": int(y[split.test].sum())},
        "cross_fit_folds": folds,
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
                "horizon_days": feature_config.horizon_days, "tune_trials": tune_trials,
                "cross_fit_folds": folds},
        test_rows=test_rows,
    )


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating))
