"""Benchmark of batch rescoring (``leadscore score``): end to end, and the scoring stage alone.

Usage::

    # demo data once (reused), and a champion in an MLflow store (WORK/mlflow.db)
    leadscore demo-data --contacts 1000000 --out /tmp/d1m
    (cd WORK && leadscore train --data /tmp/d250k)
    .venv/bin/python benchmarks/bench_batch.py end-to-end --workdir WORK \\
        --data /tmp/d250k --data /tmp/d1m [--engine local --engine spark] [--reasons top]
    .venv/bin/python benchmarks/bench_batch.py stage --workdir WORK --data /tmp/d250k \\
        [--rows 200000]

``end-to-end`` runs ``leadscore score`` as a subprocess per data directory and engine and
reports wall time, the CPU time and the peak resident memory of the whole process tree (the
CLI, its worker processes, Spark's JVM and Python workers), sampled every 0.2 s with psutil
(peak: the largest sum of the tree's RSS, what the machine must hold at once, and the same
with PSS, where pages shared by several processes, e.g. a memory-mapped file, count once; CPU:
user + system seconds of every process seen in the tree), and the machine's 1-minute load average
(at the start, at the end and averaged over the run: the machine may be shared).
``--keep DIR`` keeps each run's scores and rejects (``DIR/<data>-<engine>.*``) for comparisons.

``stage`` builds the feature table of a data directory once (cached next to it), then times
on the same rows: ``Booster.predict`` with 2 threads (the reference), the batch's predict
step (compiled with lleaves when installed, else the booster; one process per core), the
whole scoring stage as the batch runs it (feature matrix, predict, calibration, score, band,
reasons for A and B, output table) in one process per core, ``pred_contrib`` vs predict per
row, and the three reasons modes.

Each measurement is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, object]:
    import psutil

    return {"cpus": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TreeMemory:
    """Peak of the summed RSS of a process and all its descendants, their CPU time, the load."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0  # the same with shared pages divided among the processes sharing them
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> user + system seconds
        self.kind: dict[tuple[int, float], str] = {}  # (pid, start time) -> what the process is
        self.loads: list[float] = []
        self.peak_parts: dict[str, int] = {}  # what the tree held at its peak, by process kind
        self.peak_at = 0.0  # seconds after the start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    @property
    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, sec in self.cpu.items():
            out[self.kind[key]] = round(out.get(self.kind[key], 0.0) + sec, 1)
        return out

    def _kind(self, p: Any) -> str:  # a psutil.Process
        cmd = " ".join(p.cmdline())
        if "java" in p.name():
            return "jvm"
        if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
            return "spark python workers"
        if p.pid == self.proc.pid:
            return "main"
        return "worker processes"

    @property
    def load_avg(self) -> float:
        return sum(self.loads) / len(self.loads) if self.loads else float("nan")

    def _run(self) -> None:
        import psutil

        last_load = 0.0
        start = time.monotonic()
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = pss = 0
                parts: dict[str, int] = {}
                for p in procs:
                    try:
                        with p.oneshot():
                            rss = p.memory_info().rss
                            t = p.cpu_times()
                            key = (p.pid, p.create_time())
                            self.cpu[key] = t.user + t.system
                            self.kind[key] = self._kind(p)  # again: spark-submit execs java
                        total += rss
                        parts[self.kind[key]] = parts.get(self.kind[key], 0) + rss
                        pss += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                self.peak_pss = max(self.peak_pss, pss)
                if total > self.peak:
                    self.peak, self.peak_parts = total, parts
                    self.peak_at = time.monotonic() - start
            except psutil.NoSuchProcess:
                return
            now = time.monotonic()
            if now - last_load >= 1.0:
                self.loads.append(os.getloadavg()[0])
                last_load = now
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def end_to_end(args: argparse.Namespace) -> None:
    import pandas as pd
    import pyarrow.dataset as pa_ds

    leadscore = str(Path(sys.executable).with_name("leadscore"))
    for data in args.data:
        contacts = pa_ds.dataset(Path(data) / "contacts.parquet").count_rows()
        events = pa_ds.dataset(Path(data) / "events.parquet").count_rows()  # a file or a directory
        for engine in args.engine:
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                out = Path(tmp) / "scores.parquet"
                cmd = [leadscore, "score", "--data", str(data), "--out", str(out), "--engine", engine,
                       "--reasons", args.reasons, "--chunk-size", str(args.chunk_size),
                       "--workdir", str(args.workdir)]
                env = {**os.environ, "COLUMNS": "400"}
                load_start = os.getloadavg()[0]
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        cwd=tmp)
                with TreeMemory(proc.pid) as mem:
                    output, _ = proc.communicate()
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(output.decode()[-3000:], file=sys.stderr)
                    raise SystemExit(f"leadscore score failed on {data} ({engine})")
                scored = pd.read_parquet(out, columns=["band"])
                if args.keep:
                    keep = Path(args.keep)
                    keep.mkdir(parents=True, exist_ok=True)
                    stem = f"{Path(data).name}-{engine}-{args.reasons}"
                    for src, what in ((out, "scores"), (out.with_name("scores.rejects.parquet"), "rejects")):
                        dst = keep / f"{stem}.{what}.parquet"
                        if dst.is_dir():
                            shutil.rmtree(dst)
                        elif dst.exists():
                            dst.unlink()
                        shutil.move(str(src), dst)
                print(json.dumps({
                    "benchmark": "batch_end_to_end", "date": _now(), "machine": machine(),
                    "command": " ".join(cmd), "data": str(data), "engine": engine,
                    "contacts": contacts, "events": events, "scored": len(scored),
                    "reasons": args.reasons, "chunk_size": args.chunk_size,
                    "wall_s": round(wall, 1), "contacts_per_s": round(contacts / wall),
                    "cpu_s": round(mem.cpu_seconds, 1), "cpu_s_by_process": mem.cpu_by_kind,
                    "peak_rss_tree_mb": round(mem.peak / 2**20), "peak_at_s": round(mem.peak_at, 1),
                    "peak_pss_tree_mb": round(mem.peak_pss / 2**20),
                    "peak_rss_by_process_mb": {k: round(v / 2**20) for k, v in mem.peak_parts.items()},
                    "load_avg_1m_at_start": round(load_start, 2),
                    "load_avg_1m_mean": round(mem.load_avg, 2),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "log_tail": [ln for ln in output.decode().splitlines() if ln.strip()][-6:],
                }), flush=True)


# ---------------------------------------------------------------------------
# The scoring stage alone
# ---------------------------------------------------------------------------

_STAGE: dict[str, object] = {}


def _stage_init(model_dir: str, threads: int, compiled: bool) -> None:
    from training.compiled import compiled_predict
    from training.model import LeadModel

    model = LeadModel.load(model_dir, num_threads=threads)
    _STAGE["model"] = model
    _STAGE["predict"] = compiled_predict(model, threads=threads) if compiled else None


def _stage_task(path: str, what: str, reasons: str) -> tuple[int, float]:
    import pandas as pd

    from serving.batch import score_features

    model = _STAGE["model"]
    feats = pd.read_parquet(path)
    X = model.matrix(feats) if what != "stage" else None
    t0 = time.perf_counter()
    if what == "stage":
        score_features(model, feats, scored_at=pd.Timestamp("2026-01-01"), as_of=pd.Timestamp("2026-01-01"),
                       reasons=reasons, predict=_STAGE["predict"])
    elif what == "predict":
        predict = _STAGE["predict"] or model.predict_raw
        predict(X)
    return len(feats), time.perf_counter() - t0


def _parallel(model_dir: str, parts: list[str], what: str, reasons: str, *, compiled: bool,
              repeat: int = 3) -> float:
    """Rows/s of ``what`` with one process per part (1 LightGBM thread each), best of ``repeat``."""
    with ProcessPoolExecutor(len(parts), initializer=_stage_init, initargs=(model_dir, 1, compiled)) as pool:
        list(pool.map(_stage_task, parts, ["predict"] * len(parts), [reasons] * len(parts)))  # warm-up
        best = float("inf")
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = list(pool.map(_stage_task, parts, [what] * len(parts), [reasons] * len(parts)))
            # the timed part of each task excludes reading the file
            wall = max(r[1] for r in res)
            rows = sum(r[0] for r in res)
            best = min(best, wall)
            _ = t0
    return rows / best


def stage(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd

    from features.build import build_features
    from features.loading import load_base
    from training.compiled import available, compile_booster, verify
    from training.registry import load_model
    from training.tracking import configure_tracking

    configure_tracking(args.workdir)
    model = load_model(args.model)
    data = Path(args.data[0])
    cache = Path(args.tmp) / f"features-{data.name}.parquet"
    if not cache.exists():
        base = load_base(data)
        feats = build_features(base.contacts, base.events, base.stages, base.until,
                               config=model.feature_config)
        feats.to_parquet(cache)
    feats = pd.read_parquet(cache).head(args.rows)
    X = model.matrix(feats)
    info = {"benchmark": "batch_scoring_stage", "date": _now(), "machine": machine(),
            "model": f"{model.model_name} v{model.model_version}", "trees": model.booster.num_trees(),
            "leaves": int(model.booster.dump_model()["tree_info"][0]["num_leaves"]) if model.booster.num_trees() else 0,
            "features": len(model.columns), "rows": len(X), "lleaves": available()}

    def best_rate(fn, n: int, repeat: int = 3) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return n / best

    ref = best_rate(lambda: model.booster.predict(X, num_threads=2), len(X))
    n_c = min(len(X), 20_000)
    contrib_1t = best_rate(lambda: model.booster.predict(X[:n_c], pred_contrib=True, num_threads=1), n_c, 1)
    predict_1t = best_rate(lambda: model.booster.predict(X[:n_c], num_threads=1), n_c)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        model_dir = str(model.save(Path(tmp) / "model"))
        halves = np.array_split(np.arange(len(feats)), 2)
        parts = []
        for i, h in enumerate(halves):
            p = Path(tmp) / f"part{i}.parquet"
            feats.iloc[h].to_parquet(p)
            parts.append(str(p))
        results = {
            "booster_predict_2threads_rows_s": round(ref),
            "booster_predict_2procs_rows_s": round(_parallel(model_dir, parts, "predict", "none", compiled=False)),
        }
        if available():
            compiled = compile_booster(model.booster)
            info["lleaves_max_abs_diff"] = verify(compiled, model.booster, X[:50_000])
            results["compiled_predict_2procs_rows_s"] = round(
                _parallel(model_dir, parts, "predict", "none", compiled=True))
        for reasons in ("none", "top"):
            results[f"stage_reasons_{reasons}_rows_s"] = round(
                _parallel(model_dir, parts, "stage", reasons, compiled=available(), repeat=1))
        # reasons for every row: ~100x a prediction per row, measured on fewer rows
        small = []
        for i, h in enumerate(np.array_split(np.arange(min(len(feats), args.rows_all)), 2)):
            q = Path(tmp) / f"small{i}.parquet"
            feats.iloc[h].to_parquet(q)
            small.append(str(q))
        results["stage_reasons_all_rows_s"] = round(
            _parallel(model_dir, small, "stage", "all", compiled=available(), repeat=1))
        results["pred_contrib_cost_vs_predict_per_row"] = round(predict_1t / contrib_1t, 1)
        band_ab = float(np.isin(model.scale.band(model.scale.score(model.calibrator.transform(
            model.booster.predict(X, num_threads=2)))), ["A", "B"]).mean())
        results["share_of_rows_in_bands_a_b"] = round(band_ab, 3)
        for k in list(results):
            if k.endswith("_rows_s") and k != "booster_predict_2threads_rows_s":
                results[k.replace("_rows_s", "_vs_booster_2threads")] = round(results[k] / ref, 2)
    print(json.dumps({**info, **results}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["end-to-end", "stage"])
    ap.add_argument("--data", action="append", required=True, help="data directory (repeatable)")
    ap.add_argument("--workdir", required=True, help="directory of the MLflow store with a champion")
    ap.add_argument("--model", default=None, help="model URI (default: the champion)")
    ap.add_argument("--engine", action="append", choices=["local", "spark"], default=None)
    ap.add_argument("--reasons", default="top", choices=["top", "all", "none"])
    ap.add_argument("--chunk-size", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=200_000, help="rows for the stage benchmark")
    ap.add_argument("--rows-all", type=int, default=20_000, help="rows for --reasons all")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where outputs and caches go")
    ap.add_argument("--keep", default=None, help="keep each run's scores and rejects here")
    args = ap.parse_args()
    args.engine = args.engine or ["local"]
    args.workdir = str(Path(args.workdir).resolve())
    (end_to_end if args.what == "end-to-end" else stage)(args)


if __name__ == "__main__":
    main()
