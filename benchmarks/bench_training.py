"""Benchmark of training quality and cost on demo data: one JSON line on stdout.

Usage::

    .venv/bin/python benchmarks/bench_training.py --contacts 100000 --seed 7 [--data DIR]
        [--keep DIR] [--params '{"learning_rate": 0.03}'] [--table]

Stages: ``generate`` (``features.synthetic.generate`` + ``write_tables`` into a temporary
directory, skipped with ``--data``), ``training_set`` (read, hygiene and snapshots bucket by
bucket: ``features.training_set.partitioned_training_set``, as ``leadscore train`` does) and
``train`` (``training.train.train(..., truth=...)``). For each stage: wall time and the peak
RSS of the process so far (``ru_maxrss``, so a stage's figure includes the earlier ones);
``peak_rss_children_mb`` is the largest worker process's.

Quality: the test-window comparison (model / rules / logistic / oracle: ROC AUC, PR AUC,
log loss, ECE, top-decile lift) as ``train`` computes it, and the model's raw (uncalibrated)
ROC AUC and log loss on the *validation* window, which is what hyperparameters should be
chosen on (the test window is for reporting only). ``--params`` overrides LightGBM
parameters (JSON) on top of ``training.config`` defaults, for tuning runs; ``--table``
also prints the comparison as a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from features.config import FeatureConfig
from features.synthetic import generate, write_tables
from features.training_set import partitioned_training_set
from training.cli import _truth
from training.config import TrainConfig
from training.train import train

_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift", "recall_top10")


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Stages:
    """Wall time and peak RSS per stage."""

    def __init__(self) -> None:
        self.out: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        self.out[name] = {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": _peak_rss_mb()}
        return value


def _validation_quality(result, ts) -> dict[str, float]:
    """Raw booster quality on the validation window (for choosing hyperparameters)."""
    val = ts.loc[result.split.validation]
    y = val[result.label].to_numpy()
    raw = result.model.predict_raw(result.model.matrix(val))
    return {"roc_auc": round(float(roc_auc_score(y, raw)), 4),
            "log_loss": round(float(log_loss(y, np.clip(raw, 1e-15, 1 - 1e-15))), 5),
            "rows": len(y), "positives": int(y.sum())}


def run(contacts: int, seed: int, data: Path | None, keep: Path | None,
        params: dict[str, Any], *, tune_trials: int = 0) -> tuple[dict[str, Any], Any]:
    load_before = os.getloadavg()[0]
    stages = _Stages()
    fcfg = FeatureConfig()
    tcfg = TrainConfig()
    if params:
        tcfg = tcfg.model_copy(update={"lgbm_params": {**tcfg.lgbm_params, **params}})
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = keep if keep is not None else Path(tmp) / "data"

            def gen() -> None:
                write_tables(generate(contacts, seed), data)

            stages.run("generate", gen)
        built = stages.run("training_set", partitioned_training_set, data, config=fcfg)
        truth = _truth(data, built, tcfg)
    ts = built.frame
    result = stages.run("train", train, ts, config=tcfg, feature_config=fcfg, truth=truth,
                        tune_trials=tune_trials)
    cmp = result.comparison
    table = {s: {m: round(float(cmp.loc[s, m]), 4) for m in _METRICS if m in cmp}
             for s in cmp.index}
    gaps = {}
    if "oracle" in table:
        gaps["model_minus_oracle"] = round(table["model"]["roc_auc"] - table["oracle"]["roc_auc"], 4)
    gaps["model_minus_rules"] = round(table["model"]["roc_auc"] - table["rules"]["roc_auc"], 4)
    gaps["model_minus_logistic"] = round(table["model"]["roc_auc"] - table["logistic"]["roc_auc"], 4)
    out = {
        "benchmark": "training",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "generated": "generate" in stages.out,
        "contacts": contacts if "generate" in stages.out else None,
        "seed": seed if "generate" in stages.out else None,
        "data": None if "generate" in stages.out and keep is None else str(data),
        "rows": {"contacts": built.contacts, "events": built.events,
                 "training_set": len(ts), "as_of_dates": int(ts["as_of"].nunique()),
                 **result.model.metadata["rows"]},
        "positives": result.model.metadata["positives"],
        "split": result.split.description,
        "best_iteration": result.model.metadata["best_iteration"],
        "calibration": result.model.metadata["calibration"],
        "lgbm_overrides": params,
        "validation": _validation_quality(result, ts),
        "test": table,
        "gaps": gaps,
        "stages": stages.out,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    return out, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data", type=Path, default=None, help="reuse this data directory")
    parser.add_argument("--keep", type=Path, default=None, help="write the generated data here")
    parser.add_argument("--params", type=str, default="", help="LightGBM overrides (JSON)")
    parser.add_argument("--tune", type=int, default=0, help="Optuna trials (train --tune)")
    parser.add_argument("--table", action="store_true", help="comparison table on stderr")
    args = parser.parse_args(argv)
    params = json.loads(args.params) if args.params else {}
    out, result = run(args.contacts, args.seed, args.data, args.keep, params,
                      tune_trials=args.tune)
    if args.table:
        print(result.comparison[[m for m in _METRICS if m in result.comparison]].round(4)
              .to_string(), file=sys.stderr)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
