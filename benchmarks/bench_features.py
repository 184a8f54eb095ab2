"""Feature building, stage by stage: read, hygiene, one as-of date over the whole base, an
optional multi-snapshot training set, and one lead. Prints one JSON line.

    python benchmarks/bench_features.py --contacts 100000          # generate a base, then measure
    python benchmarks/bench_features.py --data /tmp/d1m --snapshots 0   # an existing data directory

Each stage reports wall seconds, CPU seconds (user + system, all threads), the RSS at its
start and the peak RSS reached during it (GB, Linux: the high-water mark is reset through
``/proc/self/clear_refs`` before each stage; elsewhere the process's peak so far) and the
1-minute load average at its start (the machine may be shared). Stages:

- ``read``: :func:`features.io.read_tables` (Parquet or CSV, then validation);
  ``--feature-columns`` reads only the event columns the features use.
- ``hygiene``: :func:`features.hygiene.clean` (deduplication, id remapping, rejects).
- ``features``: :class:`~features.build.Snapshotter` + ``features_at`` at the data's end
  (what ``leadscore features`` and the nightly batch run after loading).
- ``training_set``: :func:`~features.build.build_training_set` over the last
  ``--snapshots`` monthly as-of dates (0 skips it).

``read`` + ``hygiene`` is :func:`features.loading.load_base`. Between ``hygiene`` and
``features`` the memory Arrow's allocator caches is released (it would otherwise show in
every later stage's RSS). The single-lead figures are
the mean of 200 calls on the contact with the most events (first 200 of them):
``features_for_leads`` (records in, DataFrame out: the MLflow pyfunc's path) and
``lead_feature_columns`` on already encoded arrays (the kernels the HTTP service runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.build import (
    Snapshotter,
    build_training_set,
    features_for_leads,
    lead_feature_columns,
    monthly_as_of_dates,
)
from features.hygiene import clean
from features.io import read_tables
from features.loading import data_end
from features.synthetic import generate, write_tables


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_gb(field: str) -> float | None:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in GB; None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def _peak_rss_gb() -> float:
    peak = _rss_gb("VmHWM")
    return peak if peak is not None else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def measure(stages: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` as stage ``name``, record its figures in ``stages`` and return its result."""
    reset = _reset_peak()
    load, start = os.getloadavg()[0], _rss_gb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    stages[name] = {"wall_s": round(time.perf_counter() - wall, 2),
                    "cpu_s": round(time.process_time() - cpu, 2),
                    "peak_rss_gb": round(_peak_rss_gb(), 2), "load_1m": round(load, 2)}
    if start is not None:
        stages[name]["rss_at_start_gb"] = round(start, 2)
    if not reset:
        stages[name]["peak_rss_is_process_peak"] = True
    return result


def per_call_ms(fn: Callable[[], Any], n: int = 200) -> dict[str, float]:
    """Mean wall and CPU milliseconds of ``fn`` over ``n`` calls (after one warm-up call)."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return {"wall_ms": round((time.perf_counter() - wall) / n * 1000, 3),
            "cpu_ms": round((time.process_time() - cpu) / n * 1000, 3)}


def run(data: Path, *, snapshots: int, feature_columns: bool) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    columns = {"events": ["campaign_id"]} if feature_columns else None
    tables = measure(stages, "read", lambda: read_tables(data, columns=columns))
    until = data_end(tables.stages, tables.events)
    base = measure(stages, "hygiene", partial(clean, tables, export_date=until))
    del tables
    # Arrow's allocator keeps what read and hygiene freed (~3 GB at 1M contacts): hand it
    # back so that the next stages' peaks are their own
    pa.default_memory_pool().release_unused()
    contacts, events, stages_table = base.contacts, base.events, base.stages
    feats = measure(stages, "features", lambda: Snapshotter(contacts, events, stages_table)
                    .features_at(until))
    out: dict[str, Any] = {"contacts": len(contacts), "events": len(events),
                           "stage_changes": len(stages_table), "as_of": str(until),
                           "one_date_rows": len(feats), "stages": stages}
    del feats
    out["read_hygiene_features_wall_s"] = round(
        sum(stages[s]["wall_s"] for s in ("read", "hygiene", "features")), 2)
    out["read_hygiene_features_cpu_s"] = round(
        sum(stages[s]["cpu_s"] for s in ("read", "hygiene", "features")), 2)
    if snapshots:
        dates = monthly_as_of_dates(contacts["created_at"].min(), until,
                                    horizon_days=90)[-snapshots:]
        ts = measure(stages, "training_set",
                     lambda: build_training_set(contacts, events, stages_table, dates))
        out["training_set_snapshots"], out["training_set_rows"] = len(dates), len(ts)
        del ts
    out.update(single_lead(contacts, events, stages_table, until))
    out["peak_rss_gb"] = max(stage["peak_rss_gb"] for stage in stages.values())
    return out


def single_lead(contacts: pd.DataFrame, events: pd.DataFrame, stages: pd.DataFrame,
                as_of: pd.Timestamp) -> dict[str, Any]:
    """Per-call cost of featurising the contact with the most events (its first 200, and its
    stage changes), given as an online request gives it: without the hygiene columns."""
    cid = events["contact_id"].value_counts().index[0]
    one = contacts[contacts["contact_id"] == cid].drop(columns=["email_quality", "has_phone"])
    ev, st = events[events["contact_id"] == cid].head(200), stages[stages["contact_id"] == cid]
    contact = {k: None if pd.isna(v) else v for k, v in one.iloc[0].items()}  # as JSON gives it
    ev_records, st_records = ev.to_dict("records"), st.to_dict("records")
    snap = Snapshotter(one, ev, st)  # the same lead encoded, as the service's parser does
    fields = {k: np.array([v], dtype=object) for k, v in contact.items()
              if k not in ("contact_id", "created_at")}

    def kernels() -> dict[str, np.ndarray]:
        return lead_feature_columns(fields, snap.created_ns, snap.events, snap.stages, as_of=as_of)

    return {"single_lead_events": len(ev_records), "single_lead_stage_changes": len(st_records),
            "single_lead_features_for_leads": per_call_ms(
                lambda: features_for_leads([contact], ev_records, st_records, as_of=as_of)),
            "single_lead_kernels": per_call_ms(kernels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="an existing data directory (contacts, events, stages)")
    src.add_argument("--contacts", type=int, default=100_000, help="generate a base of this size")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--snapshots", type=int, default=12,
                    help="monthly as-of dates of the training-set stage (0: skip it)")
    ap.add_argument("--feature-columns", action="store_true",
                    help="read only the event columns the features use")
    args = ap.parse_args()
    head = {"date": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "feature_columns_only": args.feature_columns}
    if args.data:
        out = run(args.data, snapshots=args.snapshots, feature_columns=args.feature_columns)
        head["data"] = str(args.data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_tables(generate(args.contacts, seed=args.seed), Path(tmp))
            out = run(Path(tmp), snapshots=args.snapshots, feature_columns=args.feature_columns)
        head["generated"] = {"contacts": args.contacts, "seed": args.seed}
    print(json.dumps({**head, **out}))


if __name__ == "__main__":
    main()
