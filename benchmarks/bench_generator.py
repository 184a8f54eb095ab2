"""Benchmark of the synthetic data generator: generate + write, one JSON line on stdout.

Usage::

    .venv/bin/python benchmarks/bench_generator.py --contacts 100000 --seed 7 [--out DIR]

Reports wall time of ``generate`` and ``write_tables``, peak RSS of the process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), row counts, events per contact and the
size of the written Parquet files. Output files go to a temporary directory (removed
afterwards) unless ``--out`` is given.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.synthetic import generate, write_tables


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb / 1024, 1)


def run(contacts: int, seed: int, out: Path | None) -> dict[str, object]:
    """Generate and write ``contacts`` contacts; return the measurements."""
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    tables = generate(contacts, seed)
    t1 = time.perf_counter()
    rss_generate = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        target = out if out is not None else Path(tmp)
        paths = write_tables(tables, target)
        t2 = time.perf_counter()
        sizes = {name: round(p.stat().st_size / 2**20, 1) for name, p in paths.items()}
    rows = {name: len(df) for name, df in tables.items()}
    return {
        "benchmark": "generator",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    # other processes compete for the CPUs when this is above the CPU count
                    "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "contacts": contacts,
        "seed": seed,
        "generate_s": round(t1 - t0, 2),
        "write_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "peak_rss_mb_after_generate": rss_generate,
        "peak_rss_mb": _peak_rss_mb(),
        "rows": rows,
        "events_per_contact": round(rows["events"] / max(rows["contacts"], 1), 1),
        "parquet_mb": sizes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="keep the Parquet files here")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.contacts, args.seed, args.out)), flush=True)


if __name__ == "__main__":
    main()
