"""HTTP scoring benchmark: our BentoML service vs ``mlflow models serve`` vs a bare ASGI endpoint.

Everything runs side by side in one run, on loopback, against the same logged model (the
``champion`` of ``lead-scoring`` in the store of ``--workdir``) with the same lead:

* ``leadscore``: ``bentoml serve serving.service:LeadScoringService`` (1 worker, API key on),
  single-lead requests carrying 50 events (features computed per request) with reasons
  ``all``, ``top`` and ``none`` (``--reasons``), then 100-lead requests (reasons all / top /
  none) on one server per worker count of ``--bulk-workers`` (default 1 and one worker per
  CPU, each then pinned to its CPU: ``LEADSCORE_CPU_AFFINITY=auto``), taking turns for
  ``--bulk-rounds`` rounds, then a soak at concurrency 16 on the first server.
* ``mlflow``: ``mlflow models serve --env-manager local -m models:/lead-scoring@champion``
  with the same lead as a ``dataframe_split`` (the columns of the model's signature).
* ``bare-starlette`` / ``bare-fastapi``: uvicorn + one endpoint that reads the body and calls
  ``Booster.predict`` on a prebuilt row of the same booster: the practical ceiling.

The single-lead configurations (ours in each reasons mode and the two bare endpoints) run
side by side: all servers are up together and the configurations take turns for
``--rounds`` rounds, so a change in the machine's load hits them alike; the ratios are
medians of the per-round ratios. uvicorn picks ``httptools`` and ``uvloop`` when they are
installed, for every server here alike (``machine.versions`` says which were).

Load generator: ``hey`` (``apt-get install -y hey``), one process on the same machine: it
shares the CPU cores with the servers. Server CPU per request is read from ``/proc`` (user +
system time of the server's process tree over the run). Results: a table on stdout and JSON
in ``--out``.

Usage::

    .venv/bin/python benchmarks/bench_serving.py --workdir DIR [--duration 20] [--soak 60]

``DIR`` holds ``data/`` and an MLflow store with a champion, e.g. made with
``leadscore demo-data --contacts 100000 --out DIR/data && leadscore train --data DIR/data
--workdir DIR``; ``--prepare N`` does that first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "bench-key"
KNOWN_EVENTS = {
    "page_view", "pricing_view", "content_download", "webinar_registered", "webinar_attended",
    "email_open", "email_click", "form_submit", "demo_request", "chat", "unsubscribe", "email_bounce",
}


# -- the bare ceiling (run by uvicorn --factory in its own process) ------------------------------
def make_bare_starlette():
    """Starlette app: read the body, ``Booster.predict`` a prebuilt row, answer JSON."""
    import lightgbm as lgb
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    booster = lgb.Booster(model_file=os.environ["BENCH_BOOSTER"])
    row = np.zeros((1, booster.num_feature()))

    async def score(request):
        await request.body()
        p = booster.predict(row, num_threads=1)
        return Response(json.dumps({"probability": float(p[0])}), media_type="application/json")

    return Starlette(routes=[Route("/score", score, methods=["POST"])])


def make_bare_fastapi():
    """The same endpoint in FastAPI (the issue's reference ceiling)."""
    import lightgbm as lgb
    from fastapi import FastAPI, Request

    booster = lgb.Booster(model_file=os.environ["BENCH_BOOSTER"])
    row = np.zeros((1, booster.num_feature()))
    app = FastAPI()

    async def score(request: Request) -> dict:
        await request.body()
        return {"probability": float(booster.predict(row, num_threads=1)[0])}

    score.__annotations__ = {"request": Request, "return": dict}  # resolvable despite __future__
    app.post("/score")(score)
    return app


# -- helpers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


class Process:
    """A server we start (own process group) and stop."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], url: str, ready: str,
                 log_dir: Path) -> None:
        self.name, self.url, self.ready = name, url, ready
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float = 180, headers: dict[str, str] | None = None) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + self.ready, timeout=2, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


#: 100-lead bodies: (body, run name)
_BULK_RUNS = (("hundred_all", "100x50ev_reasons_all"), ("hundred_top", "100x50ev_reasons_top"),
              ("hundred_none", "100x50ev_reasons_none"), ("recent_all", "100_recent_reasons_all"),
              ("recent_none", "100_recent_reasons_none"))


def hey(url: str, body: Path, *, seconds: float, concurrency: int,
        headers: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
           "-T", "application/json", "-D", str(body)]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors_block = out.split("Error distribution:")[1] if "Error distribution:" in out else ""
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors_block))
    pct = {f"p{int(p)}": float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    ok = statuses.get(200, 0)
    return {"rps": rps, "ok": ok, "non_2xx": sum(n for c, n in statuses.items() if c >= 300),
            "errors": errors, "latency_ms": pct, "statuses": statuses}


def run_load(server: Process, path: str, body: Path, *, seconds: float, concurrency: int,
             headers: dict[str, str] | None = None, warmup: float = 3) -> dict[str, Any]:
    url = server.url + path
    hey(url, body, seconds=warmup, concurrency=concurrency, headers=headers)
    pids = tree_pids(server.proc.pid)
    load0, c0 = os.getloadavg()[0], cpu_seconds(pids)
    result = hey(url, body, seconds=seconds, concurrency=concurrency, headers=headers)
    c1 = cpu_seconds(pids)
    result["server_cpu_ms_per_request"] = round((c1 - c0) * 1000 / max(result["ok"], 1), 3)
    result["loadavg_1m_before"] = round(load0, 2)
    result["concurrency"], result["seconds"] = concurrency, seconds
    return result


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's rounds as one result: mean req/s, median p50/p99 over rounds,
    CPU per request over all rounds, summed errors; the rounds are kept."""
    seconds = sum(r["seconds"] for r in rounds)
    ok = sum(r["ok"] for r in rounds)
    cpu = sum(r["server_cpu_ms_per_request"] * r["ok"] for r in rounds)
    out = {"rps": round(sum(r["rps"] * r["seconds"] for r in rounds) / seconds, 1), "ok": ok,
           "non_2xx": sum(r["non_2xx"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
           "latency_ms": {p: float(np.median([r["latency_ms"][p] for r in rounds]))
                          for p in rounds[0]["latency_ms"]},
           "server_cpu_ms_per_request": round(cpu / max(ok, 1), 3),
           "concurrency": rounds[0]["concurrency"], "seconds": seconds,
           "loadavg_1m_before": [r["loadavg_1m_before"] for r in rounds],
           "rounds": [{k: r[k] for k in ("rps", "latency_ms", "server_cpu_ms_per_request",
                                         "loadavg_1m_before")} for r in rounds]}
    return out


def round_ratio(runs: dict[str, Any], ours: str, other: str) -> float:
    """Median over rounds of ours' req/s over the other's in the same round."""
    pairs = zip(runs[ours]["rounds"], runs[other]["rounds"])
    return round(float(np.median([a["rps"] / b["rps"] for a, b in pairs])), 3)


# -- inputs ------------------------------------------------------------------------------------
def _clean(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    return v


def make_bodies(data: Path, out: Path, *, n_events: int = 50, n_leads: int = 100,
                seed: int = 7) -> dict[str, Path]:
    """Request bodies from the demo data, scored at the data's end: leads with at least
    ``n_events`` events of known types, each with its ``n_events`` latest events (the
    stress case), and ``n_leads`` random leads with their events of the last 90 days (what a
    CRM sends as "recent events")."""
    contacts = pd.read_parquet(data / "contacts.parquet")
    events = pd.read_parquet(data / "events.parquet")
    stages = pd.read_parquet(data / "stages.parquet")
    as_of = stages["ts"].max()
    events = events[events["event_type"].isin(KNOWN_EVENTS) & (events["ts"] <= as_of)]
    counts = events.groupby("contact_id").size()
    ids = counts[counts >= n_events].index[: n_leads]
    contacts = contacts.drop_duplicates("contact_id").set_index("contact_id", drop=False)
    leads, mlflow_rows = [], []
    for cid in ids:
        row = contacts.loc[cid]
        contact = {k: _clean(v) for k, v in row.items()}
        contact = {k: v for k, v in contact.items() if v is not None}
        ev = events[events["contact_id"] == cid].sort_values("ts").tail(n_events)
        evs = [{k: _clean(v) for k, v in r.items() if k != "contact_id" and _clean(v) is not None}
               for r in ev.to_dict("records")]
        leads.append({"contact": contact, "events": evs})
        mlflow_rows.append((contact, evs))
    rng = np.random.default_rng(seed)
    recent_ids = rng.choice(contacts.loc[contacts["created_at"] <= as_of, "contact_id"].to_numpy(),
                            n_leads, replace=False)
    window = events[events["ts"] > as_of - pd.Timedelta(days=90)]
    recent = []
    for cid in recent_ids:
        contact = {k: _clean(v) for k, v in contacts.loc[cid].items()}
        ev = window[window["contact_id"] == cid].sort_values("ts").tail(2000)
        recent.append({"contact": {k: v for k, v in contact.items() if v is not None},
                       "events": [{k: _clean(v) for k, v in r.items()
                                   if k != "contact_id" and _clean(v) is not None}
                                  for r in ev.to_dict("records")]})
    as_of_s = as_of.isoformat()
    bodies = {
        "recent_all": {"leads": recent, "as_of": as_of_s, "reasons": "all"},
        "recent_none": {"leads": recent, "as_of": as_of_s, "reasons": "none"},
        "single": {"leads": leads[:1], "as_of": as_of_s},
        "single_top": {"leads": leads[:1], "as_of": as_of_s, "reasons": "top"},
        "single_noreasons": {"leads": leads[:1], "as_of": as_of_s, "reasons": "none"},
        "hundred_all": {"leads": leads, "as_of": as_of_s, "reasons": "all"},
        "hundred_top": {"leads": leads, "as_of": as_of_s, "reasons": "top"},
        "hundred_none": {"leads": leads, "as_of": as_of_s, "reasons": "none"},
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(body))
    paths["mlflow_single"] = out / "mlflow_single.json"
    paths["mlflow_single"].write_text(json.dumps(_mlflow_body(mlflow_rows[:1], as_of_s)))
    return paths


def _mlflow_body(rows: list[tuple[dict, list]], as_of: str) -> dict:
    """The same leads in the pyfunc's signature (``dataframe_split``)."""
    import mlflow

    info = mlflow.models.get_model_info("models:/lead-scoring@champion")
    columns = [c["name"] for c in json.loads(info.signature.to_dict()["inputs"])]
    data = []
    for contact, evs in rows:
        values = {**contact, "events": json.dumps(evs), "as_of": as_of}
        data.append([values.get(c) for c in columns])
    return {"dataframe_split": {"columns": columns, "data": data}}


def champion_booster(workdir: Path) -> Path:
    import mlflow

    from training.pyfunc import ARTIFACT

    local = Path(mlflow.artifacts.download_artifacts("models:/lead-scoring@champion"))
    return local / "artifacts" / ARTIFACT / "booster.txt"


# -- main ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("bentoml", "mlflow", "lightgbm", "uvicorn", "starlette", "fastapi", "pydantic",
                "httptools", "uvloop"):
        try:
            versions[pkg] = __import__("importlib.metadata").metadata.version(pkg)
        except Exception:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg": os.getloadavg(), "versions": versions, "load_generator": "hey (same machine)"}


def prepare(workdir: Path, contacts: int) -> None:
    leadscore = str(BIN / "leadscore")
    subprocess.run([leadscore, "demo-data", "--contacts", str(contacts), "--out",
                    str(workdir / "data")], check=True)
    subprocess.run([leadscore, "train", "--data", str(workdir / "data"), "--workdir", str(workdir)],
                   check=True)


_SINGLE_BODIES = {"all": "single", "top": "single_top", "none": "single_noreasons"}
_SINGLE_RUNS = {"all": "leadscore_single", "top": "leadscore_single_top",
                "none": "leadscore_single_noreasons"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--prepare", type=int, default=0, help="first generate N demo contacts and train")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds per configuration (per round for the single-lead ones)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the single-lead comparison")
    ap.add_argument("--reasons", default="all,top,none",
                    help="reasons modes of the single-lead runs (comma-separated: all, top, none)")
    ap.add_argument("--soak", type=float, default=60.0, help="seconds of the concurrency-16 soak (0: skip)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--skip-mlflow", action="store_true")
    ap.add_argument("--skip-batches", action="store_true", help="skip the 100-lead requests")
    ap.add_argument("--workers", type=int, default=1,
                    help="LEADSCORE_WORKERS of our service for the single-lead runs and the soak")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap.add_argument("--bulk-workers", type=lambda v: sorted({int(w) for w in v.split(",")}),
                    default=sorted({1, cpus}),
                    help="worker counts for the 100-lead requests, one server each, side by side "
                         "(default: 1 and the CPU count)")
    ap.add_argument("--bulk-rounds", type=lambda v: max(int(v), 1), default=2,
                    help="rounds of the 100-lead requests (at least 1)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "serving.json")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.reasons.split(",") if m.strip()]
    if not modes or set(modes) - set(_SINGLE_BODIES):
        ap.error(f"--reasons: comma-separated modes among {sorted(_SINGLE_BODIES)}")
    if shutil.which("hey") is None:
        sys.exit("hey is needed: apt-get install -y hey")
    workdir = args.workdir.resolve()
    if args.prepare:
        prepare(workdir, args.prepare)
    sys.path.insert(0, str(REPO))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from training.tracking import configure_tracking

    uri = configure_tracking(workdir)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bodies = make_bodies(workdir / "data", tmp)
    booster = champion_booster(workdir)
    base_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    base_env.update({"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp / "bentoml"),
                     "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    auth = {"Authorization": f"Bearer {API_KEY}"}
    results: dict[str, Any] = {"machine": machine(), "command": " ".join([sys.executable, *sys.argv]),
                               "model": {"tracking_uri": uri}, "runs": {}}
    import lightgbm as lgb

    results["model"]["trees"] = lgb.Booster(model_file=str(booster)).num_trees()
    runs = results["runs"]
    d, c = args.duration, args.concurrency

    def start(name: str, cmd: list[str], env: dict[str, str], port: int, ready: str,
              headers: dict[str, str] | None = None) -> Process:
        p = Process(name, cmd, env, f"http://127.0.0.1:{port}", ready, tmp)
        p.wait(headers=headers)
        return p

    # 1. single leads: our service in each reasons mode and the bare ceilings, side by side
    port = free_port()
    ours_env = {**base_env, "LEADSCORE_WORKDIR": str(workdir), "LEADSCORE_API_KEYS": API_KEY,
                "LEADSCORE_RELOAD_SECONDS": "0", "LEADSCORE_WORKERS": str(args.workers)}
    ours = start("leadscore", [str(BIN / "bentoml"), "serve", "serving.service:LeadScoringService",
                               "--host", "127.0.0.1", "--port", str(port)], ours_env, port, "/readyz")
    servers = [ours]
    try:
        import httpx

        lead = httpx.post(ours.url + "/score", content=bodies["single_noreasons"].read_bytes(),
                          headers={**auth, "Content-Type": "application/json"}, timeout=60).json()
        results["model"]["single_lead_band"] = lead["scores"][0]["band"]
        bare: dict[str, Process] = {}
        for name, factory in (("bare_starlette", "make_bare_starlette"),
                              ("bare_fastapi", "make_bare_fastapi")):
            bport = free_port()
            bare[name] = Process(name, [str(BIN / "uvicorn"), "--factory", f"bench_serving:{factory}",
                                        "--app-dir", str(REPO / "benchmarks"), "--host", "127.0.0.1",
                                        "--port", str(bport), "--log-level", "warning",
                                        "--no-access-log"],
                                 {**base_env, "BENCH_BOOSTER": str(booster)},
                                 f"http://127.0.0.1:{bport}", "/score", tmp)
            servers.append(bare[name])
            _wait_post(bare[name])
        configs = [(_SINGLE_RUNS[m], ours, bodies[_SINGLE_BODIES[m]], auth) for m in modes]
        configs += [(name, p, bodies["single"], None) for name, p in bare.items()]
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in configs}
        for r in range(args.rounds):
            for name, server, body, headers in configs:
                rounds[name].append(run_load(server, "/score", body, seconds=d, concurrency=c,
                                             headers=headers, warmup=3 if r == 0 else 1))
        for name, rs in rounds.items():
            runs[name] = combine(rs)
        for p in bare.values():
            p.stop()

        # 2. 100-lead requests, one server per worker count, side by side; then the soak
        if not args.skip_batches:
            bulk = {args.workers: ours}
            for w in args.bulk_workers:
                if w not in bulk:
                    bport = free_port()
                    bulk[w] = Process(f"leadscore-w{w}", [str(BIN / "bentoml"), "serve",
                                                          "serving.service:LeadScoringService",
                                                          "--host", "127.0.0.1", "--port", str(bport)],
                                      {**ours_env, "LEADSCORE_WORKERS": str(w)},
                                      f"http://127.0.0.1:{bport}", "/readyz", tmp)
                    servers.append(bulk[w])  # stopped by the finally below, even if not up
                    bulk[w].wait()
            bulk_rounds: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.bulk_rounds):
                for body, name in _BULK_RUNS:
                    for w in args.bulk_workers:
                        bulk_rounds.setdefault(f"leadscore_w{w}_{name}", []).append(
                            run_load(bulk[w], "/score", bodies[body], seconds=d, concurrency=c,
                                     headers=auth, warmup=3 if r == 0 else 1))
            for body, name in _BULK_RUNS:
                events = sum(len(lead.get("events", []))
                             for lead in json.loads(bodies[body].read_text())["leads"])
                for w in args.bulk_workers:
                    run = runs[f"leadscore_w{w}_{name}"] = combine(bulk_rounds[f"leadscore_w{w}_{name}"])
                    run["workers"], run["leads_per_second"] = w, round(run["rps"] * 100, 1)
                    run["events_per_request"] = events
            for w, p in bulk.items():
                if p is not ours:
                    p.stop()
        if args.soak:
            runs["leadscore_soak_c16"] = run_load(ours, "/score", bodies["single"], seconds=args.soak,
                                                  concurrency=16, headers=auth)
    finally:
        for p in servers:
            p.stop()

    # 3. mlflow models serve
    if not args.skip_mlflow:
        port = free_port()
        ml = start("mlflow", [str(BIN / "mlflow"), "models", "serve", "--env-manager", "local",
                              "-m", "models:/lead-scoring@champion", "-h", "127.0.0.1", "-p", str(port)],
                   {**base_env, "MLFLOW_TRACKING_URI": uri}, port, "/ping")
        try:
            runs["mlflow_single"] = run_load(ml, "/invocations", bodies["mlflow_single"], seconds=d,
                                             concurrency=c)
        finally:
            ml.stop()

    ratios: dict[str, Any] = {}
    for m in modes:
        key = _SINGLE_RUNS[m]
        ratios[f"reasons_{m}"] = {
            "vs_bare_starlette": round_ratio(runs, key, "bare_starlette"),
            "vs_bare_fastapi": round_ratio(runs, key, "bare_fastapi"),
            "vs_mlflow": round(runs[key]["rps"] / runs["mlflow_single"]["rps"], 2)
            if "mlflow_single" in runs else None,
        }
    results["ratios"] = ratios
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    _print(results)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def _wait_post(p: Process, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(p.url + "/score", content=b"{}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{p.name} did not come up:\n{p.log.read_text()[-2000:]}")


def _print(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"# {m['date']}  {m['cpu']}  {m['cores']} cores  load {m['loadavg']} -> "
          f"{m.get('loadavg_end')}  trees {results['model']['trees']}  single lead in band "
          f"{results['model'].get('single_lead_band')}  load generator: {m['load_generator']}")
    print(f"{'configuration':40s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'cpu ms/req':>10s} "
          f"{'non-2xx':>7s} {'errors':>6s}")
    for name, r in results["runs"].items():
        lat = r["latency_ms"]
        extra = (f"  ({r['leads_per_second']:.0f} leads/s, {r['events_per_request']} events/request)"
                 if "leads_per_second" in r else "")
        print(f"{name:40s} {r['rps']:9.1f} {lat.get('p50', float('nan')):8.1f} "
              f"{lat.get('p99', float('nan')):8.1f} {r['server_cpu_ms_per_request']:10.3f} "
              f"{r['non_2xx']:7d} {r['errors']:6d}{extra}")
    for mode, r in results["ratios"].items():
        print(f"ratios {mode}: " + ", ".join(f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
