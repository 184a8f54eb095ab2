"""The same engagement aggregation with four engines: the project's numpy kernels, pandas
groupby, DuckDB SQL and Polars (lazy). Prints one JSON line.

    pip install -e '.[bench]'                         # duckdb and polars
    python benchmarks/bench_feature_engines.py --data /tmp/d1m --work /tmp/engines-1m
    python benchmarks/bench_feature_engines.py --data /tmp/d100k --work /tmp/engines-100k

The aggregation, per contact at one as-of date (the data's end) over the clean events
(:func:`features.loading.load_base`), only events with ``ts <= as_of``: counts of each event
type over 7, 30 and 90 days, days since the last event of each type, time-decayed counts
per type (half-life 30 days) and their sum over the positive types, and distinct active
days over 30 and 90 days: 66 of the project's feature columns.

Steps:

1. Once per ``--work`` directory: load the base, write its events (``contact_id``, ``ts``,
   ``event_type``) and contact ids as Parquet, and the project's feature table
   (:meth:`~features.build.Snapshotter.features_at`, those columns) as the reference; the same
   for a sample of ``--sample`` contacts.
2. Every engine runs on the sample and must agree with the reference (counts exactly, floats
   to 1e-9 relative or 1e-6 absolute: the project rounds decay weights to 2**-32) before it
   is timed.
3. Every engine runs on the whole base in a fresh subprocess (so peak RSS is its own), reading
   the Parquet with its own reader (``read``) and then aggregating in memory (``compute``);
   the result is checked against the reference again.

Each engine reports wall and CPU seconds (user + system, all threads: DuckDB and Polars use
every core, numpy and pandas one) for both steps, and its peak RSS in GB; the machine's
1-minute load average is recorded when each engine starts. ``--threads 1`` limits DuckDB and
Polars to one thread.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features import schema

ENGINES = ("numpy", "pandas", "duckdb", "polars")
PACKAGES = {"numpy": "numpy", "pandas": "pandas", "duckdb": "duckdb", "polars": "polars"}
HALF_LIFE = 30.0
TYPES = schema.ENGAGEMENT_TYPES  # the 12 known types and "other"
NEGATIVE = ("unsubscribe", "email_bounce")
COUNTS = [f"{t}_{w}d" for t in TYPES for w in schema.WINDOWS_DAYS]
SINCE = [f"days_since_{t}" for t in schema.EVENT_TYPES]
DECAYED = [f"{t}_decayed" for t in schema.EVENT_TYPES] + ["engagement_decayed"]
ACTIVE = ["active_days_30d", "active_days_90d"]
COLUMNS = COUNTS + SINCE + DECAYED + ACTIVE
_DAY_US = 86_400 * 10**6


# --- the engines: (events file, contacts file, as-of) -> (read s, compute s, result) -------


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_numpy(events: Path, contacts: Path, as_of: pd.Timestamp, threads: int | None) -> dict:
    from features.engagement import encode_events, engagement_features

    (ev, ids), *read = _timed(lambda: (pd.read_parquet(events), pd.read_parquet(contacts)))

    def compute() -> pd.DataFrame:
        index = pd.Index(ids["contact_id"])
        feats = engagement_features(encode_events(ev, index), as_of, half_life_days=HALF_LIFE)
        return pd.DataFrame({"contact_id": index, **{c: feats[c] for c in COLUMNS}})

    return _report(read, *_timed(compute))


def run_pandas(events: Path, contacts: Path, as_of: pd.Timestamp, threads: int | None) -> dict:
    (ev, ids), *read = _timed(lambda: (pd.read_parquet(events), pd.read_parquet(contacts)))

    def compute() -> pd.DataFrame:
        e = ev[ev["ts"] <= as_of]
        age = (as_of - e["ts"]) / pd.Timedelta(days=1)
        e = e.assign(age=age, weight=np.exp2(-age / HALF_LIFE),
                     **{f"n{w}": age < w for w in schema.WINDOWS_DAYS})
        # per contact and type, then one column per type
        by_type = e.groupby(["contact_id", "event_type"], sort=False).agg(
            **{f"n{w}": (f"n{w}", "sum") for w in schema.WINDOWS_DAYS},
            since=("age", "min"), decayed=("weight", "sum"))
        wide = by_type.unstack("event_type")
        index = pd.Index(ids["contact_id"])
        parts = [wide[f"n{w}"].reindex(index=index, columns=list(TYPES)).fillna(0)
                 .astype("float64").set_axis([f"{t}_{w}d" for t in TYPES], axis=1)
                 for w in schema.WINDOWS_DAYS]
        parts.append(wide["since"].reindex(index=index, columns=list(schema.EVENT_TYPES))
                     .set_axis(SINCE, axis=1))
        decayed = wide["decayed"].reindex(index=index, columns=list(TYPES)).fillna(0.0)
        parts += [decayed[list(schema.EVENT_TYPES)].set_axis(DECAYED[:-1], axis=1),
                  decayed.drop(columns=list(NEGATIVE)).sum(axis=1).rename("engagement_decayed")]
        # active days: a calendar day counts over w days when its most recent event is
        recent = e[e["age"] < 90].assign(day=lambda f: f["ts"].dt.floor("D"))
        first = recent.groupby(["contact_id", "day"], sort=False)["age"].min()
        days = (first.to_frame().assign(d30=first < 30, d90=True)
                .groupby(level="contact_id", sort=False)[["d30", "d90"]].sum())
        parts.append(days.reindex(index, fill_value=0).astype("float64")
                     .set_axis(ACTIVE, axis=1))
        return pd.concat(parts, axis=1)[COLUMNS].rename_axis("contact_id").reset_index()

    return _report(read, *_timed(compute))


def run_duckdb(events: Path, contacts: Path, as_of: pd.Timestamp, threads: int | None) -> dict:
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")

    def read() -> None:
        con.execute("CREATE TABLE ev AS SELECT * FROM read_parquet(?)", [str(events)])
        con.execute("CREATE TABLE ids AS SELECT * FROM read_parquet(?)", [str(contacts)])

    _, *read_s = _timed(read)
    t = f"TIMESTAMP '{as_of.isoformat(sep=' ')}'"
    windows = ", ".join(f"count(*) FILTER (WHERE age < {w}) AS n{w}" for w in schema.WINDOWS_DAYS)
    wide = [f"sum(n{w}) FILTER (WHERE event_type = '{ty}') AS {ty}_{w}d"
            for ty in TYPES for w in schema.WINDOWS_DAYS]
    wide += [f"min(since) FILTER (WHERE event_type = '{ty}') AS days_since_{ty}"
             for ty in schema.EVENT_TYPES]
    wide += [f"sum(decayed) FILTER (WHERE event_type = '{ty}') AS {ty}_decayed"
             for ty in schema.EVENT_TYPES]
    negative = ", ".join(f"'{ty}'" for ty in NEGATIVE)
    wide += [f"sum(decayed) FILTER (WHERE event_type NOT IN ({negative})) AS engagement_decayed"]
    fill = [f"coalesce({c}, 0)::DOUBLE AS {c}" for c in COUNTS + DECAYED + ACTIVE]
    query = f"""
        WITH e AS (
            SELECT contact_id, event_type, ts,
                   (epoch_us({t}) - epoch_us(ts)) / {_DAY_US}.0 AS age
            FROM ev WHERE ts <= {t}),
        by_type AS (
            SELECT contact_id, event_type, {windows}, min(age) AS since,
                   sum(pow(2.0, -age / {HALF_LIFE})) AS decayed
            FROM e GROUP BY contact_id, event_type),
        wide AS (SELECT contact_id, {", ".join(wide)} FROM by_type GROUP BY contact_id),
        days AS (  -- a calendar day counts over w days when its most recent event is
            SELECT contact_id, count(*) FILTER (WHERE first < 30) AS active_days_30d,
                   count(*) AS active_days_90d
            FROM (SELECT contact_id, CAST(ts AS DATE) AS day, min(age) AS first
                  FROM e WHERE age < 90 GROUP BY contact_id, day)
            GROUP BY contact_id)
        SELECT ids.contact_id, {", ".join(fill)}, {", ".join(SINCE)}
        FROM ids LEFT JOIN wide USING (contact_id) LEFT JOIN days USING (contact_id)"""
    return _report(read_s, *_timed(lambda: con.execute(query).to_arrow_table()))


def run_polars(events: Path, contacts: Path, as_of: pd.Timestamp, threads: int | None) -> dict:
    if threads:
        os.environ["POLARS_MAX_THREADS"] = str(int(threads))  # read when polars is imported
    import polars as pl

    (ev, ids), *read = _timed(lambda: (pl.read_parquet(events), pl.read_parquet(contacts)))
    t = as_of.to_pydatetime()
    age, kind = pl.col("age"), pl.col("event_type")
    e = (ev.lazy().filter(pl.col("ts") <= t)
         .with_columns(age=(pl.lit(t) - pl.col("ts")).dt.total_microseconds() / _DAY_US))
    by_type = e.group_by("contact_id", "event_type").agg(
        *[(age < w).sum().alias(f"n{w}") for w in schema.WINDOWS_DAYS],
        since=age.min(), decayed=pl.lit(2.0).pow(-age / HALF_LIFE).sum())
    wide = [pl.col(f"n{w}").filter(kind == ty).sum().cast(pl.Float64).alias(f"{ty}_{w}d")
            for ty in TYPES for w in schema.WINDOWS_DAYS]
    wide += [pl.col("since").filter(kind == ty).min().alias(f"days_since_{ty}")
             for ty in schema.EVENT_TYPES]
    wide += [pl.col("decayed").filter(kind == ty).sum().alias(f"{ty}_decayed")
             for ty in schema.EVENT_TYPES]
    wide += [pl.col("decayed").filter(~kind.is_in(list(NEGATIVE))).sum().alias("engagement_decayed")]
    # a calendar day counts over w days when its most recent event is
    days = (e.filter(age < 90).group_by("contact_id", pl.col("ts").dt.date().alias("day"))
            .agg(first=age.min())
            .group_by("contact_id")
            .agg(active_days_30d=(pl.col("first") < 30).sum().cast(pl.Float64),
                 active_days_90d=pl.len().cast(pl.Float64)))
    result = (ids.lazy()
              .join(by_type.group_by("contact_id").agg(wide), on="contact_id", how="left")
              .join(days, on="contact_id", how="left")
              .with_columns([pl.col(c).fill_null(0.0) for c in COUNTS + DECAYED + ACTIVE]))
    return _report(read, *_timed(lambda: result.collect()))


def _report(read: list[float], result: Any, compute_wall: float, compute_cpu: float) -> dict:
    return {"read_s": read[0], "read_cpu_s": read[1], "compute_s": compute_wall,
            "compute_cpu_s": compute_cpu, "result": result}


RUNNERS = {"numpy": run_numpy, "pandas": run_pandas, "duckdb": run_duckdb, "polars": run_polars}


def _as_pandas(result: Any) -> pd.DataFrame:
    if isinstance(result, pd.DataFrame):
        return result
    if isinstance(result, pa.Table):
        return result.to_pandas()
    return result.to_pandas()  # polars


def _peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(engine: str, folder: Path, out: Path, threads: int | None) -> None:
    """One engine on one prepared folder: timings and peak RSS as a JSON line on stdout, the
    result as Parquet in ``out`` (written after the peak is taken)."""
    meta = json.loads((folder / "meta.json").read_text())
    got = RUNNERS[engine](folder / "events.parquet", folder / "contacts.parquet",
                          pd.Timestamp(meta["as_of"]), threads)
    peak = _peak_rss_gb()
    result = _as_pandas(got.pop("result"))
    result[["contact_id", *COLUMNS]].to_parquet(out, index=False)
    print(json.dumps({**{k: round(v, 2) for k, v in got.items()}, "peak_rss_gb": round(peak, 2),
                      "rows": len(result)}))


# --- preparation, agreement and the driver ------------------------------------------------


def prepare(data: Path, work: Path, sample: int) -> dict:
    """Events, contact ids and the reference features of ``data`` (and of a sample) in ``work``."""
    meta_path = work / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    from features.build import Snapshotter
    from features.loading import load_base

    base = load_base(data)
    feats = Snapshotter(base.contacts, base.events, base.stages).features_at(base.until,
                                                                             eligible_only=False)
    rng = np.random.default_rng(0)
    ids = base.contacts["contact_id"]
    chosen = pd.Index(rng.choice(ids.to_numpy(), size=min(sample, len(ids)), replace=False))
    meta = {"data": str(data), "as_of": str(base.until), "contacts": len(ids),
            "events": len(base.events), "sample_contacts": len(chosen)}
    for folder, keep in ((work, None), (work / "sample", chosen)):
        folder.mkdir(parents=True, exist_ok=True)
        events = base.events[["contact_id", "ts", "event_type"]]
        contacts, ref = base.contacts[["contact_id"]], feats[["contact_id", *COLUMNS]]
        if keep is not None:
            events = events[events["contact_id"].isin(keep)]
            contacts, ref = contacts[contacts["contact_id"].isin(keep)], ref[ref["contact_id"].isin(keep)]
        pq.write_table(pa.Table.from_pandas(events, preserve_index=False), folder / "events.parquet")
        contacts.to_parquet(folder / "contacts.parquet", index=False)
        ref.to_parquet(folder / "reference.parquet", index=False)
        (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def disagreement(result: Path, reference: Path) -> str | None:
    """Why ``result`` differs from the reference features, or None when it agrees."""
    got = pd.read_parquet(result).set_index("contact_id")
    want = pd.read_parquet(reference).set_index("contact_id")
    if len(got) != len(want) or not got.index.sort_values().equals(want.index.sort_values()):
        return f"contacts differ: {len(got)} rows vs {len(want)}"
    got = got.loc[want.index]
    for c in COLUMNS:
        a, b = got[c].to_numpy(dtype="float64"), want[c].to_numpy(dtype="float64")
        if c in COUNTS or c in ACTIVE:
            bad = (a != b) & ~(np.isnan(a) & np.isnan(b))
        else:
            bad = ~np.isclose(a, b, rtol=1e-9, atol=1e-6, equal_nan=True)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"{c}: {a[i]} vs {b[i]} (contact {want.index[i]}, {int(bad.sum())} rows)"
    return None


def run_engine(engine: str, folder: Path, out: Path, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--work", str(folder), "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{engine} failed:\n{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_1m": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="data directory (contacts, events, stages)")
    ap.add_argument("--work", type=Path, required=True, help="prepared inputs and results (reused)")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--sample", type=int, default=2000, help="contacts of the agreement check")
    ap.add_argument("--threads", type=int, help="threads of DuckDB and Polars (default: all cores)")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.work, args.out, args.threads)
        return
    missing = [e for e in args.engines if importlib.util.find_spec(PACKAGES[e]) is None]
    if missing:
        sys.exit(f"not installed: {', '.join(missing)}; install them with "
                 f"pip install -e '.[bench]' (or leave them out with --engines)")
    if args.data is None and not (args.work / "meta.json").exists():
        ap.error("--data is needed to prepare a new --work directory")
    meta = prepare(args.data, args.work, args.sample)
    for engine in args.engines:  # agreement first, on the sample
        out = args.work / "sample" / f"result-{engine}.parquet"
        run_engine(engine, args.work / "sample", out, args.threads)
        why = disagreement(out, args.work / "sample" / "reference.parquet")
        if why:
            sys.exit(f"{engine} disagrees with the project's features on the sample: {why}")
    results = {}
    for engine in args.engines:
        out = args.work / f"result-{engine}.parquet"
        results[engine] = run_engine(engine, args.work, out, args.threads)
        why = disagreement(out, args.work / "reference.parquet")
        if why:
            sys.exit(f"{engine} disagrees with the project's features: {why}")
        results[engine]["version"] = importlib.metadata.version(PACKAGES[engine])
        results[engine]["agrees"] = True
    print(json.dumps({"date": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
                      "cpus": os.cpu_count(), "threads": args.threads or "all", **meta,
                      "columns": len(COLUMNS), "engines": results}))


if __name__ == "__main__":
    main()
