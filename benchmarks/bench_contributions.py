"""Reasons of one lead from the tree SHAP table (:mod:`training.contributions`): the first
call for a row that meets a pattern the table lacks, against a row it knows, against
LightGBM's own ``pred_contrib`` on the same row. One JSON line.

    python benchmarks/bench_contributions.py [--trees 51 300] [--rows 2000]

Boosters of ``--trees`` trees with 7 leaves (the training default) on made-up data of 30
features (10 % NaN). Each table is warmed as the service warms it
(:meth:`~training.contributions.TreeContributions.warm`), then fed ``--rows`` new rows drawn
like the training rows, one at a time. Two tables are fed the same rows side by side: the
current one, and one whose fill looks at every tree for a new pattern, as before 2026-11-23
(the change this measures). Times are wall milliseconds of single calls; the machine's load
average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.contributions import TreeContributions


class EveryTreeFill(TreeContributions):
    """The fill before 2026-11-23: every tree looked at for a new pattern."""

    def _fill(self, X: np.ndarray, idx: np.ndarray) -> None:
        with self._lock:
            for t in range(self.n_trees):
                new, first = np.unique(idx[:, t], return_index=True)
                todo = ~self._filled[new]
                if todo.any():
                    self._table[new[todo]] = self._booster.predict(
                        X[first[todo]], pred_contrib=True, start_iteration=t, num_iteration=1,
                        num_threads=1)
                    self._filled[new[todo]] = True


def _ms(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1e3
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.quantile(a, 0.9)), 3)} if len(a) else {}


def run(trees: int, rows: int, seed: int = 0) -> dict[str, Any]:
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    n, f = 20_000, 30
    X = rng.normal(size=(n, f))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nansum(X[:, :6], axis=1) + rng.normal(size=n) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "learning_rate": 0.05,
                         "verbose": -1, "num_threads": 1, "seed": seed}, lgb.Dataset(X, y), trees)
    now, before = TreeContributions.of(booster), EveryTreeFill.of(booster)
    t0 = time.perf_counter()
    now.warm()
    warm_ms = (time.perf_counter() - t0) * 1e3
    warmed = int(now._filled.sum())
    before.warm()
    fresh = rng.normal(size=(rows, f))
    fresh[rng.random(fresh.shape) < 0.1] = np.nan
    cold_now, cold_before, warm, lgbm, cold = [], [], [], [], []
    for r in fresh:
        new = bool((~now._filled[now.patterns(r[None, :])[0]]).any())
        t = time.perf_counter()
        got = now.one(r)
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        before.one(r)
        elapsed_before = time.perf_counter() - t
        t = time.perf_counter()
        ref = booster.predict(r[None, :], pred_contrib=True, num_threads=1)[0]
        lgbm.append(time.perf_counter() - t)
        if not np.allclose(got, ref, rtol=0, atol=1e-12):
            raise AssertionError("the table disagrees with pred_contrib")
        cold.append(new)
        if new:
            cold_now.append(elapsed)
            cold_before.append(elapsed_before)
        else:
            warm.append(elapsed)
    return {"trees": trees, "leaves": 7, "rows": rows, "warm_up_ms": round(warm_ms, 1),
            "patterns_after_warm_up": warmed, "share_of_rows_meeting_a_new_pattern": round(float(np.mean(cold)), 4),
            "first_100_rows": round(float(np.mean(cold[:100])), 2), "last_100_rows": round(float(np.mean(cold[-100:])), 2),
            "new_pattern_ms": _ms(cold_now), "new_pattern_ms_every_tree_fill": _ms(cold_before),
            "known_patterns_ms": _ms(warm), "pred_contrib_ms": _ms(lgbm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, nargs="+", default=[51, 300])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = [run(t, args.rows) for t in args.trees]
    print(json.dumps({"benchmark": "contributions", "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                  "loadavg_1m_before": round(load, 2),
                                  "loadavg_1m_after": round(os.getloadavg()[0], 2)},
                      "results": results}))


if __name__ == "__main__":
    main()
