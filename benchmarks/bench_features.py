"""Feature building speed: a 12-snapshot training set and one as-of date over a whole base,
plus the single-lead path. Prints one JSON line.

    python benchmarks/bench_features.py --contacts 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from features.build import Snapshotter, build_training_set, features_for_leads, monthly_as_of_dates
from features.loading import load_base
from features.synthetic import generate, write_tables


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    out: dict = {"contacts": args.contacts, "date": pd.Timestamp.now().isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        write_tables(generate(args.contacts, seed=args.seed), Path(tmp))
        t = time.perf_counter()
        base = load_base(tmp)
        out["load_and_clean_s"] = round(time.perf_counter() - t, 2)
    out["events"] = len(base.events)
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until, horizon_days=90)[-12:]
    t = time.perf_counter()
    ts = build_training_set(base.contacts, base.events, base.stages, dates)
    out["training_set_12_snapshots_s"] = round(time.perf_counter() - t, 2)
    out["training_set_rows"] = len(ts)
    t = time.perf_counter()
    snap = Snapshotter(base.contacts, base.events, base.stages)
    feats = snap.features_at(base.until)
    out["one_date_whole_base_s"] = round(time.perf_counter() - t, 2)
    out["one_date_rows"] = len(feats)
    # single lead with 200 events, through the records path the pyfunc uses
    cid = base.events["contact_id"].value_counts().index[0]
    contact = base.contacts[base.contacts["contact_id"] == cid].iloc[0].to_dict()
    ev = base.events[base.events["contact_id"] == cid].head(200).to_dict("records")
    features_for_leads([contact], ev, [], as_of=base.until)
    n = 50
    t = time.perf_counter()
    for _ in range(n):
        features_for_leads([contact], ev, [], as_of=base.until)
    out["single_lead_ms"] = round((time.perf_counter() - t) / n * 1000, 2)
    out["single_lead_events"] = len(ev)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
