"""Benchmark of a CRM export (one row per lead): quality and cost of the whole run, one JSON line.

Usage::

    .venv/bin/python benchmarks/bench_crm.py                      # X Education, seed 42, logged
    .venv/bin/python benchmarks/bench_crm.py --seeds 10           # + 10 other random hold-outs
    .venv/bin/python benchmarks/bench_crm.py --cv 5               # + 5-fold cross-validation
    .venv/bin/python benchmarks/bench_crm.py --cli                # + the CLI command, timed
    .venv/bin/python benchmarks/bench_crm.py --table FILE --config dataset.yaml [--tune 30]

The timed run is what ``leadscore train --table FILE --config dataset.yaml`` does in-process:
``load`` (read the config and the table), ``train`` (:func:`training.crm.train_table`: checks,
cleaning, split, scorecard, cross-fitted LightGBM, calibration, logistic baseline, evaluation
on the held-out 20%) and ``log`` (:func:`training.crm.log_table_run`: MLflow run, plots, model,
registry, gate) into a fresh store in a temporary directory. Wall and CPU seconds per stage;
the machine's load average before and after (other processes share the CPUs when it is above
the CPU count). Interpreter start-up and imports are not included (about 3-5 s for the CLI).

Quality on the held-out 20% (stratified, ``training.seed``, the same rows for every model):
ROC AUC, PR AUC, ECE (10 quantile bins) and top-decile conversion rate of the platform's
LightGBM, its logistic baseline and its rule scorer, plus the issue's two reference models on
the same rows: an untuned ``LGBMClassifier()`` and a one-hot logistic regression, both on the
raw columns left after the config's exclusions (``Select`` kept as a value, as exported).
Each ROC AUC comes with a 95 % DeLong interval, and each scorer's difference with the
default ``LGBMClassifier`` with a paired one (both judged on the same rows), so the interval
is of the gain itself.

``--seeds N`` repeats train + evaluate (no logging) on N more random splits (seeds 0..N-1) and
reports mean and standard deviation of every scorer's metrics: one 20% hold-out of a table
this size moves by about ±0.006. ``--cv K`` evaluates every scorer by stratified K-fold
cross-validation over all labelled rows (folds shuffled with seed 0; each fold is the test set
of one training, :func:`training.crm.train_table` ``test_rows``), as the issue's reference
figures are given. ``--cli`` also runs ``leadscore train --table ... --config ...`` in a
temporary working directory (fresh MLflow store) and times it end to end, interpreter start-up
included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import pandas as pd

from training.metrics import compare, roc_auc_intervals

DEFAULT_TABLE = REPO.parent / "shared" / "data" / "x-education-leads" / "Leads.csv"
DEFAULT_CONFIG = REPO / "conf" / "datasets" / "x_education.yaml"
_METRICS = ("roc_auc", "pr_auc", "ece", "top_decile_conversion")


def _timed(fn, *args, **kwargs) -> tuple[Any, dict[str, float]]:
    w, c = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return value, {"wall_s": round(time.perf_counter() - w, 2), "cpu_s": round(time.process_time() - c, 2)}


def reference_models(frame: pd.DataFrame, trained) -> dict[str, np.ndarray]:
    """The issue's reference models on the platform's held-out rows: untuned LGBMClassifier
    and one-hot logistic regression on the raw remaining columns (no cleaning)."""
    import lightgbm as lgb
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from training.crm import table_features

    config, columns = trained.config, trained.columns
    keep_cols = [c for c in frame.columns
                 if c not in columns.excluded or columns.excluded[c].startswith(("constant", "empty"))]
    keep_cols = [c for c in keep_cols if c != config.target.column]
    labels = table_features(frame, config, [], [], with_target=True)
    labelled = labels["converted"].notna().to_numpy()
    raw = frame.loc[labelled, keep_cols].reset_index(drop=True)
    y = labels.loc[labelled, "converted"].to_numpy(dtype="int64")
    num = [c for c in keep_cols if c in columns.numeric]
    cat = [c for c in keep_cols if c not in num]
    raw[num] = raw[num].apply(pd.to_numeric, errors="coerce")
    split = trained.result.split
    fit, test = split.train | split.validation, split.test
    as_cat = raw.copy()
    for c in cat:
        as_cat[c] = as_cat[c].astype("category")
    gbm = lgb.LGBMClassifier(random_state=0, n_jobs=1, verbose=-1).fit(as_cat[fit], y[fit])
    onehot = Pipeline([
        ("prep", ColumnTransformer([
            ("cat", Pipeline([("fill", SimpleImputer(strategy="constant", fill_value="missing")),
                              ("onehot", OneHotEncoder(handle_unknown="ignore"))]), cat),
            ("num", Pipeline([("fill", SimpleImputer(strategy="median")),
                              ("scale", StandardScaler())]), num)])),
        ("lr", LogisticRegression(max_iter=5000)),
    ])
    for c in cat:
        raw[c] = raw[c].astype(object).where(raw[c].notna(), np.nan)
    onehot.fit(raw[fit], y[fit])
    return {"reference_lgbm_default": gbm.predict_proba(as_cat[test])[:, 1],
            "reference_onehot_logistic": onehot.predict_proba(raw[test])[:, 1]}


def _summary(tables: list[pd.DataFrame]) -> dict[str, Any]:
    """Mean and standard deviation of every metric of every scorer over several evaluations."""
    stacked = pd.concat(tables, keys=range(len(tables)), names=["run", "scorer"])[list(_METRICS)]
    grouped = stacked.groupby(level="scorer", sort=False)
    mean, std = grouped.mean(), grouped.std(ddof=1)
    return {s: {m: {"mean": round(float(mean.loc[s, m]), 4), "std": round(float(std.loc[s, m]), 4)}
                for m in _METRICS} for s in mean.index}


def _cli_run(table: Path, config_path: Path) -> dict[str, Any]:
    """``leadscore train --table FILE --config CONFIG`` in a fresh working directory, timed."""
    import subprocess

    exe = Path(sys.executable).with_name("leadscore")
    cmd = [str(exe) if exe.exists() else "leadscore", "train", "--table", str(table.resolve()),
           "--config", str(config_path.resolve())]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with tempfile.TemporaryDirectory() as tmp:
        before = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return {"command": "leadscore train --table " + table.name + " --config " + config_path.name,
            "wall_s": round(wall, 2), "loadavg_1m_before": round(before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def _scorers(trained, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every scorer's probabilities on the held-out rows, and their labels."""
    preds = trained.result.test_predictions
    scorers = {c: preds[c].to_numpy() for c in ("model", "logistic", "rules")}
    scorers.update(reference_models(frame, trained))
    return scorers, preds["converted"].to_numpy()


def _quality(scorers: dict[str, np.ndarray], y: np.ndarray) -> pd.DataFrame:
    table = compare(scorers, y).set_index("scorer")
    table["top_decile_conversion"] = table["top_decile_lift"] * table["positive_rate"]
    return table


def _intervals(scorers: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    """95 % DeLong intervals of every scorer's held-out ROC AUC, and of its paired difference
    with the issue's default LightGBM (:func:`training.metrics.roc_auc_intervals`)."""
    table = roc_auc_intervals(scorers, y, baseline="reference_lgbm_default")
    return {"method": "DeLong", "level": 0.95, "baseline": "reference_lgbm_default",
            **{s: {k: round(float(v), 4) for k, v in row.items()} for s, row in table.iterrows()}}


def _resampled(key: str, frame: pd.DataFrame, trainings: Iterable[tuple[int, Any]]) -> dict[str, Any]:
    """Quality over several held-out sets (one training per ``key``: a seed or a fold)."""
    rows, tables = [], []
    t0 = time.perf_counter()
    for k, trained in trainings:
        q = _quality(*_scorers(trained, frame))
        tables.append(q)
        rows.append({key: k, **{s: round(float(q.loc[s, "roc_auc"]), 4) for s in q.index}})
    per = pd.DataFrame(rows).set_index(key)
    return {
        "roc_auc_mean": per.mean().round(4).to_dict(),
        "roc_auc_std": per.std(ddof=1).round(4).to_dict(),
        "metrics": _summary(tables),
        "model_minus_reference_lgbm_min": round(float(
            (per["model"] - per["reference_lgbm_default"]).min()), 4),
        f"per_{key}": per.reset_index().to_dict("records"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def run(table: Path, config_path: Path, *, seeds: int, tune: int, log: bool, cv: int = 0,
        cli: bool = False) -> dict[str, Any]:
    from training.crm import (
        load_dataset_config,
        log_table_run,
        read_table,
        table_training_config,
        train_table,
    )
    from training.tracking import configure_tracking

    load_before = os.getloadavg()[0]
    stages: dict[str, dict[str, float]] = {}
    def load() -> tuple[Any, pd.DataFrame]:
        config = load_dataset_config(config_path)
        return config, read_table(table, config)

    (config, frame), stages["load"] = _timed(load)
    tcfg = table_training_config(config.training)
    trained, stages["train"] = _timed(train_table, frame, config, train_config=tcfg, tune_trials=tune)
    summary: dict[str, Any] = {}
    if log:
        with tempfile.TemporaryDirectory() as tmp:
            previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
            try:
                configure_tracking(tmp)
                summary, stages["log"] = _timed(log_table_run, trained, frame, source=str(table),
                                                gate_config=tcfg.gate)
            finally:
                if previous is not None:
                    os.environ["MLFLOW_TRACKING_URI"] = previous
    total = {k: round(sum(s[k] for s in stages.values()), 2) for k in ("wall_s", "cpu_s")}
    scorers, y_test = _scorers(trained, frame)
    quality = _quality(scorers, y_test)
    out: dict[str, Any] = {
        "benchmark": "crm_table",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["benchmarks/bench_crm.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "table": table.name, "rows": len(frame), "labelled": len(trained.frame),
        "positive_rate": round(float(trained.frame["converted"].mean()), 4),
        "features": {"categorical": len(trained.columns.categorical),
                     "numeric": len(trained.columns.numeric)},
        "excluded": len(trained.result.excluded),
        "split": trained.result.split.description,
        "seed": tcfg.seed, "tune_trials": tune,
        "cross_fit_folds": trained.model.metadata["cross_fit_folds"],
        "best_iteration": trained.model.metadata["best_iteration"],
        "calibration": trained.model.metadata["calibration"],
        "held_out": {s: {m: round(float(quality.loc[s, m]), 4) for m in _METRICS} for s in quality.index},
        "held_out_roc_auc_intervals": _intervals(scorers, y_test),
        "stages": stages, "total": total,
        "gate": summary.get("reason"), "alias": summary.get("alias"),
    }
    if seeds:
        out["repeated_splits"] = {"seeds": list(range(seeds)), **_resampled(
            "seed", frame, ((seed, train_table(frame, config, tune_trials=tune,
                                               train_config=tcfg.model_copy(update={"seed": seed})))
                            for seed in range(seeds)))}
    if cv:
        from sklearn.model_selection import StratifiedKFold

        y_all = table_labels(frame, config)
        labelled = np.flatnonzero(~np.isnan(y_all))
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=0)

        def fold_trainings():
            for k, (_, test_idx) in enumerate(folds.split(labelled, y_all[labelled])):
                mask = np.zeros(len(frame), dtype=bool)
                mask[labelled[test_idx]] = True
                yield k, train_table(frame, config, train_config=tcfg, tune_trials=tune, test_rows=mask)

        out["cross_validation"] = {"folds": cv, "shuffle_seed": 0, "rows": len(labelled),
                                   **_resampled("fold", frame, fold_trainings())}
    if cli:
        out["cli"] = _cli_run(table, config_path)
    return out


def table_labels(frame: pd.DataFrame, config) -> np.ndarray:
    """0/1 target of every row of the table (NaN where missing), as training reads it."""
    from training.crm import target_labels

    return target_labels(frame[config.target.column], config).to_numpy(dtype="float64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, default=0, help="extra random splits (no logging)")
    parser.add_argument("--tune", type=int, default=0, help="Optuna trials inside the training rows")
    parser.add_argument("--cv", type=int, default=0, help="K-fold cross-validation of every scorer")
    parser.add_argument("--cli", action="store_true", help="also time the CLI command end to end")
    parser.add_argument("--no-log", action="store_true", help="skip MLflow logging")
    args = parser.parse_args()
    if not args.table.exists():
        sys.exit(f"table not found: {args.table}")
    if args.cv == 1 or args.cv < 0:
        sys.exit("--cv: at least 2 folds")
    warnings.filterwarnings("ignore", category=UserWarning)
    print(json.dumps(run(args.table, args.config, seeds=args.seeds, tune=args.tune, log=not args.no_log,
                         cv=args.cv, cli=args.cli)))


if __name__ == "__main__":
    main()
