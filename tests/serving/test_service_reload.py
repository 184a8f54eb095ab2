"""The HTTP service when its registry misbehaves, and under a large body: a real ``bentoml
serve`` process on its own SQLite MLflow store (polled every second, the default 32 MB body
limit), a real HTTP client.

- ``POST /reload`` while the registry cannot be read keeps the model answering and says why;
- a champion version that failed to load is retried by the poll (with a backoff) and picked
  up once its artifact is readable;
- a body of tens of megabytes is validated off the event loop, a lead at a time: ``/readyz``
  keeps answering meanwhile.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving import api_types as T

pytestmark = pytest.mark.slow

LEAD = {"contact": {"contact_id": "a", "created_at": "2026-01-01T00:00:00Z"},
        "events": [{"ts": "2026-02-01T10:00:00Z", "event_type": "pricing_view"}]}


@pytest.fixture(scope="module")
def reload_store(session_dir: Path, trained, kit) -> Path:
    """A store of its own whose champion is the trained model (version 1)."""
    path = session_dir / "reload-store"
    kit.register(path, trained.model)
    return path


@pytest.fixture(scope="module")
def reload_server(reload_store: Path, session_dir: Path, kit):
    srv = kit.start_server(reload_store, session_dir, reload_seconds=1,
                           extra_env={"LEADSCORE_MAX_BODY_BYTES": str(T.MAX_BODY_BYTES)})
    try:
        kit.wait_ready(srv)
        yield srv
    finally:
        kit.stop_server(srv)


def _scorer(c: httpx.Client) -> tuple[str, str]:
    r = c.post("/score", json={"leads": [LEAD]})
    assert r.status_code == 200, r.text
    s = r.json()["scores"][0]
    return s["scorer"], s["model_version"]


def test_reload_with_an_unreadable_registry_keeps_the_model(reload_server, reload_store):
    """The registry database is unreadable (not a database any more) while ``POST /reload``
    runs: the model keeps answering, the answer and the log say why (the kind of failure
    only); once the registry is back, a reload loads the champion again."""
    db = reload_store / "mlflow.db"
    good = db.read_bytes()
    with reload_server.client() as c:
        assert _scorer(c) == ("model", "1")
        try:
            db.write_bytes(b"not a database\n" * 4096)  # in place: the server's connections see it
            r = c.post("/reload")
            during = _scorer(c)
            model = c.get("/model").json()
        finally:
            db.write_bytes(good)
        assert r.status_code == 200, r.text
        info = r.json()
        assert (info["scorer"], info["version"]) == ("model", "1"), info
        assert "MlflowException" in info["reload_error"], info
        assert during == ("model", "1") and model["scorer"] == "model"
        again = c.post("/reload").json()
        assert (again["scorer"], again["version"]) == ("model", "1") and "reload_error" not in again
        assert _scorer(c) == ("model", "1")
    log = reload_server.log_text()
    assert "could not be loaded (model unavailable (MlflowException)" in log
    assert "version 1 keeps answering" in log


def test_a_champion_that_failed_to_load_is_retried_by_the_poll(reload_server, reload_store,
                                                               trained, kit):
    """A new champion whose artifact is unreadable (an artifact store outage, say) leaves the
    model answering; once the artifact is readable again the poll retries it (after a
    backoff) and serves it, without a POST /reload."""
    with reload_server.client() as c:
        broken = kit.register(reload_store, trained.model, corrupt=True)
        deadline = time.monotonic() + 60
        while c.get("/model").json().get("champion_not_loaded") != broken:
            assert time.monotonic() < deadline, "the poll never tried the new champion"
            time.sleep(0.3)
        assert _scorer(c) == ("model", "1")
        good = next(p for p in (reload_store / "mlartifacts").rglob("booster.txt")
                    if not p.read_text().startswith("this is not"))
        for booster in (reload_store / "mlartifacts").rglob("booster.txt"):
            if booster.read_text().startswith("this is not"):
                shutil.copyfile(good, booster)  # the outage is over
        deadline = time.monotonic() + 90
        while c.get("/model").json()["version"] != broken:
            assert time.monotonic() < deadline, "the poll never retried the champion"
            time.sleep(0.5)
        info = c.get("/model").json()
        assert info["scorer"] == "model" and "champion_not_loaded" not in info
        assert _scorer(c) == ("model", broken)


def test_a_large_body_is_validated_off_the_event_loop(reload_server):
    """About 30 MB of leads whose timestamps the fast decoder leaves to pydantic, the last lead
    invalid: validated in a worker thread a lead per call, so ``/readyz`` answers meanwhile
    (validated in one call, it waited for the whole body's validation: about a second);
    the 422 names the field as for a small body."""
    events = [{"ts": f"2026-01-{1 + i % 28:02d}T10:00:00.5+02:00", "event_type": "page_view"}
              for i in range(T.MAX_EVENTS_PER_LEAD)]
    leads = [{"contact": {"contact_id": f"c{i}"}, "events": events} for i in range(250)]
    leads[-1] = {"contact": {"contact_id": "x", "first_name": "Ann"}, "events": events}
    body = json.dumps({"leads": leads}, separators=(",", ":")).encode()
    assert 20e6 < len(body) < T.MAX_BODY_BYTES
    answer: dict = {}

    def post() -> None:
        t0 = time.perf_counter()
        with reload_server.client() as c:
            answer["response"] = c.post("/score", content=body,
                                        headers={"Content-Type": "application/json"})
        answer["seconds"] = time.perf_counter() - t0

    latencies = []
    with httpx.Client(base_url=reload_server.url, timeout=60) as c:
        c.get("/readyz")
        sender = threading.Thread(target=post)
        sender.start()
        while sender.is_alive():
            t0 = time.perf_counter()
            assert c.get("/readyz").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.01)
        sender.join()
    r = answer["response"]
    assert r.status_code == 422, r.text[:300]
    assert [d["field"] for d in r.json()["detail"]] == ["leads.249.contact.first_name"]
    assert len(latencies) >= 5, latencies
    assert max(latencies) < 0.3 * answer["seconds"], (max(latencies), answer["seconds"])
