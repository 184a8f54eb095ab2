"""Per-call CPU cost of the feature kernels, for one lead (the HTTP service's request) and
for a whole base (the nightly batch), plus a bit-for-bit check against saved outputs.

    python benchmarks/bench_kernels.py --data /tmp/d100k                  # measure
    python benchmarks/bench_kernels.py --data /tmp/d100k --save /tmp/ref  # save reference outputs
    python benchmarks/bench_kernels.py --data /tmp/d100k --check /tmp/ref # compare to them

One lead: the kernels (:func:`~features.engagement.engagement_features`,
:func:`~features.lifecycle.lifecycle_features`) and :func:`~features.build.lead_feature_columns`
on a lead with about ``--events`` events, encoded as the service encodes a request
(:func:`~features.engagement.encode_event_records`, :func:`~features.build.encode_stage_records`);
CPU microseconds per call (``time.process_time``), the best of ``--repeats`` rounds of
``--calls`` calls. Whole base: the kernels on the encoded base at its end date and
:func:`~features.build.build_features` (encoding included), CPU seconds, best of
``--repeats``. The 1-minute load average is printed with the figures (the machine may be
shared). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.build import (
    Snapshotter,
    build_features,
    encode_stage_records,
    lead_feature_columns,
)
from features.config import FeatureConfig
from features.engagement import encode_event_records, engagement_features
from features.lifecycle import lifecycle_features
from features.loading import load_base


def cpu_per_call(fn: Callable[[], Any], calls: int, repeats: int) -> float:
    """Best-of-``repeats`` CPU seconds per call over ``calls`` calls."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls)
    return best


def cpu_once(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def base_tables(data: Path, cache: Path | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """The clean base (cached as a pickle: hygiene is not what is measured here)."""
    if cache is not None and cache.exists():
        with cache.open("rb") as f:
            return pickle.load(f)
    base = load_base(data)
    out = (base.contacts, base.events, base.stages, base.until)
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump(out, f, protocol=5)
    return out


def lead_inputs(contacts: pd.DataFrame, events: pd.DataFrame, stages: pd.DataFrame,
                cid: str) -> tuple[dict[str, np.ndarray], np.ndarray, Any, Any]:
    """One lead as the service gets it: contact columns, creation time, encoded events and
    stage changes (all rows 0)."""
    one = contacts[contacts["contact_id"] == cid]
    ev, st = events[events["contact_id"] == cid], stages[stages["contact_id"] == cid]
    fields = {k: np.array([None if pd.isna(v) else v], dtype=object)
              for k, v in one.iloc[0].items()
              if k not in ("contact_id", "created_at", "email_quality", "has_phone")}
    created = pd.to_datetime(one["created_at"]).to_numpy(dtype="datetime64[ns]").view("int64")
    ev_ts = pd.to_datetime(ev["ts"]).to_numpy(dtype="datetime64[ns]").view("int64")
    camp = ev["campaign_id"].tolist() if "campaign_id" in ev else None
    if camp is not None:
        camp = [None if pd.isna(c) else c for c in camp]
    evs = encode_event_records(np.zeros(len(ev), dtype=np.int64), ev_ts,
                               ev["event_type"].tolist(), camp, 1)
    st_ts = pd.to_datetime(st["ts"]).to_numpy(dtype="datetime64[ns]").view("int64")
    sts = encode_stage_records(np.zeros(len(st), dtype=np.int64), st_ts, st["stage"].tolist(), 1)
    return fields, created, evs, sts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a data directory (contacts, events, stages)")
    ap.add_argument("--cache", type=Path, help="pickle of the clean base (written when absent)")
    ap.add_argument("--events", type=int, default=50, help="events of the measured lead (about)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-base", action="store_true", help="skip the whole-base figures")
    ap.add_argument("--leads", type=int, default=300, help="leads compared by --save/--check")
    ap.add_argument("--save", type=Path, help="directory to save reference outputs into")
    ap.add_argument("--check", type=Path, help="directory of reference outputs to compare with")
    args = ap.parse_args()

    contacts, events, stages, until = base_tables(args.data, args.cache)
    config = FeatureConfig()
    as_of = pd.Timestamp(until)
    out: dict[str, Any] = {"load_1m_start": os.getloadavg()[0]}

    counts = events["contact_id"].value_counts()
    cid = (counts - args.events).abs().idxmin()
    fields, created, evs, sts = lead_inputs(contacts, events, stages, cid)
    out["lead_events"] = len(evs.ts)
    out["lead_stage_changes"] = len(sts.ts)
    t = as_of.as_unit("ns")
    us = 1e6
    out["lead_engagement_us"] = us * cpu_per_call(
        lambda: engagement_features(evs, t, half_life_days=config.half_life_days), args.calls, args.repeats)
    out["lead_lifecycle_us"] = us * cpu_per_call(
        lambda: lifecycle_features(sts, t), args.calls, args.repeats)
    out["lead_feature_columns_us"] = us * cpu_per_call(
        lambda: lead_feature_columns(fields, created, evs, sts, as_of=as_of, config=config),
        args.calls, args.repeats)

    if args.save or args.check:
        rng = np.random.default_rng(0)
        ids = events["contact_id"].unique()
        picked = rng.choice(ids, size=min(args.leads, len(ids)), replace=False)
        leads = {}
        for c in picked:
            f, cr, e, s = lead_inputs(contacts, events, stages, c)
            leads[c] = lead_feature_columns(f, cr, e, s, as_of=as_of, config=config)
        frame = build_features(contacts, events, stages, as_of, config=config, eligible_only=False)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(args.save / "kern_before.parquet")
            with (args.save / "kern_leads.pkl").open("wb") as fh:
                pickle.dump(leads, fh, protocol=5)
        if args.check:
            ref = pd.read_parquet(args.check / "kern_before.parquet")
            pd.testing.assert_frame_equal(frame, ref, check_exact=True)
            with (args.check / "kern_leads.pkl").open("rb") as fh:
                ref_leads = pickle.load(fh)
            assert ref_leads.keys() == leads.keys()
            for c, cols in leads.items():
                assert cols.keys() == ref_leads[c].keys(), c
                for k, v in cols.items():
                    r = ref_leads[c][k]
                    assert v.dtype == r.dtype and v.shape == r.shape, (c, k, v.dtype, r.dtype)
                    if v.dtype.kind == "f":  # bit for bit, NaN included
                        assert np.array_equal(v.view(np.int64), r.view(np.int64)), (c, k, v, r)
                    else:
                        assert np.array_equal(v, r), (c, k, v, r)
            out["check"] = f"identical: base {frame.shape}, {len(leads)} leads"

    if not args.no_base:
        snap = Snapshotter(contacts, events, stages, config)
        out["base_contacts"] = snap.events.n_contacts
        out["base_events"] = len(snap.events.ts)
        r = max(1, args.repeats // 2)
        out["base_engagement_s"] = cpu_once(
            lambda: engagement_features(snap.events, t, half_life_days=config.half_life_days), r)
        out["base_lifecycle_s"] = cpu_once(lambda: lifecycle_features(snap.stages, t), r)
        out["base_features_at_s"] = cpu_once(lambda: snap.features_at(t), r)
        out["base_build_features_s"] = cpu_once(
            lambda: build_features(contacts, events, stages, as_of, config=config), 1)
    out["load_1m_end"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
