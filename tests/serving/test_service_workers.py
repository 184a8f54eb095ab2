"""The HTTP service with two worker processes: a real ``bentoml serve`` with
``LEADSCORE_WORKERS=2`` and ``LEADSCORE_CPU_AFFINITY=on`` on its own SQLite MLflow store
(not polled), real HTTP clients on new connections.

- each worker process, every thread of it, is pinned to one CPU, a different one for each
  when the machine lets the tests use two;
- every worker answers with the champion; with the alias poll off, a ``POST /reload``
  answered by one worker makes every worker load the new champion.
"""

from __future__ import annotations

import json
import os
import re
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


@pytest.mark.parametrize(("setting", "message"), [
    ({"LEADSCORE_WORKERS": "0"}, "LEADSCORE_WORKERS='0': expected a whole number from 1 to 256"),
    ({"LEADSCORE_CPU_AFFINITY": "sometimes"},
     "LEADSCORE_CPU_AFFINITY='sometimes': expected one of auto, on, off"),
    ({"LEADSCORE_TIMEOUT_SECONDS": "0"}, "LEADSCORE_TIMEOUT_SECONDS='0': expected a number at least 1"),
    ({"LEADSCORE_HANDOVER_BYTES": "64k"}, "LEADSCORE_HANDOVER_BYTES='64k': expected a whole number"),
])
def test_a_bad_setting_read_at_import_stops_the_service_by_name(setting, message):
    """Checked when the service is defined, before BentoML starts any worker."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    done = subprocess.run([sys.executable, "-c", "import serving.service"], env={**env, **setting},
                          check=False, capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode != 0
    assert message in done.stderr


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
        kit.wait_ready(srv)  # one worker is ready: wait for the other too
        deadline = time.monotonic() + 60
        while _loads(srv, "1") != {1, 2}:
            assert time.monotonic() < deadline, srv.log_text()[-2000:]
            time.sleep(0.2)
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


def _loads(srv, version: str) -> set[int]:
    """The workers that have logged loading ``version``."""
    pattern = rf"scorer loaded: model lead-scoring version {version} in \S+ \(worker (\d+)\)"
    return {int(w) for w in re.findall(pattern, srv.log_text())}


def test_a_reload_answered_by_one_worker_reaches_every_worker(two_workers, workers_store,
                                                              trained, kit):
    assert _versions_seen(two_workers) == {("model", "1")}
    new = kit.register(workers_store, trained.model)
    time.sleep(2.5)  # the signal is looked at every second: nothing was sent
    assert _versions_seen(two_workers) == {("model", "1")} and _loads(two_workers, new) == set()
    with two_workers.client() as c:
        assert c.post("/reload").json()["version"] == new
    deadline = time.monotonic() + 30
    while _loads(two_workers, new) != {1, 2}:
        assert time.monotonic() < deadline, "the other worker never reloaded"
        time.sleep(0.3)
    assert _versions_seen(two_workers) == {("model", new)}
    time.sleep(1.5)  # the worker that answered does not take its own signal
    assert two_workers.log_text().count(f"version {new} in ") == 2


def test_the_reload_signal_is_seen_once_and_not_by_its_sender(tmp_path):
    from serving.service import ReloadSignal

    path = tmp_path / "reload-1"
    path.write_bytes(b"0123456789abcdef")  # left by an earlier server of the same parent pid
    sender, other = ReloadSignal(path), ReloadSignal(path)
    assert not other.received()
    sender.send()
    assert not sender.received()
    assert other.received() and not other.received()
    sender.send()
    sender.send()
    assert other.received() and not other.received()  # two signals before a look: one reload
    path.unlink()  # removed when a worker stops: no signal
    assert not other.received() and not sender.received()
    assert ReloadSignal.for_workers(1) is None


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="POSIX")
def test_the_reload_signal_does_not_follow_symbolic_links(tmp_path):
    from serving.service import ReloadSignal

    target = tmp_path / "someone-elses-file"
    target.write_bytes(b"keep")
    (tmp_path / "reload-1").symlink_to(target)
    signal = ReloadSignal(tmp_path / "reload-1")
    signal.send()  # logged, not raised
    assert target.read_bytes() == b"keep" and not signal.received()


def _bulk_body(min_bytes: int = 70_000) -> dict:
    """A body of event leads larger than ``min_bytes`` once encoded."""
    events = [{"ts": f"2026-02-{d:02d}T10:00:00Z", "event_type": "page_view"} for d in range(1, 29)]
    leads = []
    while len(json.dumps({"leads": leads}, separators=(",", ":"))) <= min_bytes:  # as httpx sends it
        leads.append({"contact": {"contact_id": f"c{len(leads)}", "created_at": "2026-01-01T00:00:00Z"},
                      "events": events})
    return {"leads": leads}


def test_bulk_answers_close_their_connection_when_there_are_several_workers(two_workers, server):
    """So that the client's next connection goes to whichever worker is free: with two
    workers, the answer to a body over 64 KiB says ``Connection: close``; small ones keep the
    connection, and a lone worker keeps every connection."""
    bulk = _bulk_body()
    for srv, closes in ((two_workers, True), (server, False)):
        ports = []  # the client's end of each bulk request's connection

        def port(response) -> None:  # (before the body is read and a closed connection gone)
            if response.request.url.path == "/score" and len(response.request.content) > 1000:
                ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])

        with srv.client(event_hooks={"response": [port]}) as c:
            for _ in range(3):  # the client reconnects after each close
                small = c.post("/score", json={"leads": [LEAD]})
                assert small.status_code == 200 and "connection" not in small.headers
                answer = c.post("/score", json=bulk)
                assert answer.status_code == 200, answer.text
                assert len(answer.json()["scores"]) == len(bulk["leads"])
                assert (answer.headers.get("connection") == "close") is closes
        assert len(set(ports)) == (3 if closes else 1), ports
