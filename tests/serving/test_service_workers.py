"""The HTTP service with two worker processes: a real ``bentoml serve`` with
``LEADSCORE_WORKERS=2`` and ``LEADSCORE_CPU_AFFINITY=on`` on its own SQLite MLflow store
(not polled), real HTTP clients on new connections.

- each worker process, every thread of it, is pinned to one CPU, a different one for each
  when the machine lets the tests use two;
- every worker answers with the champion; with the alias poll off, a ``POST /reload``
  answered by one worker makes every worker load the new champion.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from serving.service import worker_cpu

pytestmark = pytest.mark.slow

LEAD = {"contact": {"contact_id": "a", "created_at": "2026-01-01T00:00:00Z"},
        "events": [{"ts": "2026-02-01T10:00:00Z", "event_type": "pricing_view"}]}


def test_which_cpu_a_worker_is_pinned_to():
    cpus = {0, 1, 2, 3}
    assert [worker_cpu("on", w, 2, cpus) for w in (1, 2, 5)] == [0, 1, 0]
    assert [worker_cpu("auto", w, 4, cpus) for w in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert worker_cpu("auto", 1, 1, cpus) is None  # a lone worker on a shared host moves freely
    assert worker_cpu("auto", 1, 2, cpus) is None
    assert worker_cpu("on", 2, 2, {5, 7}) == 7  # the CPUs the process may use, in order
    assert worker_cpu("auto", 1, 1, {3}) == 3
    assert worker_cpu("off", 1, 4, cpus) is None
    assert worker_cpu("on", None, 1, cpus) is None  # not a BentoML worker (tests, scripts)
    with pytest.raises(ValueError, match="LEADSCORE_CPU_AFFINITY='pin': expected one of auto"):
        worker_cpu("pin", 1, 1, cpus)


def test_a_bad_affinity_or_worker_count_stops_the_service_by_name(monkeypatch, tmp_path):
    import subprocess
    import sys

    from serving.service import LeadScoringService

    monkeypatch.setenv("LEADSCORE_CPU_AFFINITY", "sometimes")
    monkeypatch.setenv("LEADSCORE_RELOAD_SECONDS", "0")
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))
    with pytest.raises(ValueError, match="LEADSCORE_CPU_AFFINITY='sometimes'"):
        LeadScoringService.inner()
    env = {**os.environ, "LEADSCORE_WORKERS": "0"}
    env.pop("LEADSCORE_CPU_AFFINITY")
    done = subprocess.run([sys.executable, "-c", "import serving.service"], env=env, check=False,
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode != 0
    assert "LEADSCORE_WORKERS='0': expected a whole number from 1 to 256" in done.stderr


@pytest.fixture(scope="module")
def workers_store(session_dir: Path, trained, kit) -> Path:
    path = session_dir / "workers-store"
    kit.register(path, trained.model)
    return path


@pytest.fixture(scope="module")
def two_workers(workers_store: Path, session_dir: Path, kit):
    srv = kit.start_server(workers_store, session_dir, reload_seconds=0,
                           extra_env={"LEADSCORE_WORKERS": "2", "LEADSCORE_CPU_AFFINITY": "on"})
    try:
        kit.wait_ready(srv)
        yield srv
    finally:
        kit.stop_server(srv)


def _workers(srv) -> list[psutil.Process]:
    deadline = time.monotonic() + 60
    while True:
        found = [p for p in psutil.Process(srv.process.pid).children(recursive=True)
                 if "_bentoml_impl.worker" in " ".join(p.cmdline())]
        if len(found) == 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_each_worker_and_its_threads_are_pinned_to_a_cpu(two_workers):
    workers = _workers(two_workers)
    assert len(workers) == 2
    allowed = sorted(os.sched_getaffinity(0))
    pinned = []
    for w in workers:
        per_thread = {frozenset(os.sched_getaffinity(t.id)) for t in w.threads()}
        assert len(per_thread) == 1, per_thread  # every thread on the same CPU
        (cpus,) = per_thread
        assert len(cpus) == 1 and cpus <= set(allowed)
        pinned.append(next(iter(cpus)))
    if len(allowed) >= 2:
        assert sorted(pinned) == allowed[:2]
    assert two_workers.log_text().count("pinned to CPU") == 2


def _versions_seen(srv, n: int = 24) -> set[tuple[str, str]]:
    """The scorer and model version of ``n`` answers, each on a new connection (the kernel
    hands connections to either worker)."""
    seen = set()
    for _ in range(n):
        with srv.client() as c:
            r = c.post("/score", json={"leads": [LEAD]})
            assert r.status_code == 200, r.text
            s = r.json()["scores"][0]
            seen.add((s["scorer"], s["model_version"]))
    return seen


def _loads(srv, version: str) -> int:
    """How many workers have logged loading ``version``."""
    return srv.log_text().count(f"scorer loaded: model lead-scoring version {version} ")


def test_a_reload_answered_by_one_worker_reaches_every_worker(two_workers, workers_store,
                                                              trained, kit):
    assert _versions_seen(two_workers) == {("model", "1")}
    assert _loads(two_workers, "1") == 2
    new = kit.register(workers_store, trained.model)
    time.sleep(2.5)  # the signal is looked at every second: nothing was sent
    assert _versions_seen(two_workers) == {("model", "1")} and _loads(two_workers, new) == 0
    with two_workers.client() as c:
        assert c.post("/reload").json()["version"] == new
    deadline = time.monotonic() + 30
    while _loads(two_workers, new) < 2:
        assert time.monotonic() < deadline, "the other worker never reloaded"
        time.sleep(0.3)
    assert _versions_seen(two_workers) == {("model", new)}
    assert _loads(two_workers, new) == 2  # once each: the worker that answered not twice


def test_the_reload_signal_is_seen_once_and_not_by_its_sender(tmp_path):
    from serving.service import ReloadSignal

    path = tmp_path / "reload-1"
    path.touch()  # left by an earlier server whose parent had the same process id
    os.utime(path, ns=(1, 1))
    sender, other = ReloadSignal(path), ReloadSignal(path)
    assert not other.received()
    sender.send()
    assert not sender.received()
    assert other.received() and not other.received()
    assert ReloadSignal.for_workers(1) is None
