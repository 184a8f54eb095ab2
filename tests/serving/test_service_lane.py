"""``POST /score`` taken in front of BentoML's middlewares, and the request timeout: real
``bentoml serve`` processes, real sockets.

- in the default configuration (no tracing, metrics, access log or CORS) the service puts
  ``/score`` in front of BentoML's middlewares, which would do nothing for it;
- with one of them on (here BentoML's metrics), ``/score`` goes through all of them, and the
  metrics count its requests;
- either way a request that is not answered within ``LEADSCORE_TIMEOUT_SECONDS`` (here a body
  that never finishes arriving) gets a 504 in about that time, and the worker goes on.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

def test_which_middlewares_leave_score_alone():
    """BentoML's own classes, by identity: its timeout (whose value the lane keeps), its
    request context, and tracing that excludes the path."""
    from _bentoml_impl.server.app import ContextMiddleware
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import ExcludeList
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from serving.service import idle_for

    def tracing(*urls):
        return Middleware(OpenTelemetryMiddleware, excluded_urls=ExcludeList(list(urls)))

    timeout, context = Middleware(TimeoutMiddleware, timeout=7), Middleware(ContextMiddleware)
    assert idle_for([tracing("/score", "/model"), timeout, context], "/score") == (7.0, [])
    assert idle_for([tracing("/model"), timeout, context], "/score") == (None, ["tracing of /score"])
    assert idle_for([tracing("/score"), timeout, Middleware(CORSMiddleware), context], "/score") \
        == (None, ["CORSMiddleware"])
    assert idle_for([tracing("/score"), context], "/score") == (None, ["not BentoML's middlewares"])

    class TimeoutMiddleware:  # a namesake is not BentoML's
        pass

    assert idle_for([Middleware(TimeoutMiddleware), context], "/score")[0] is None
    assert idle_for([], "/score")[0] is None  # another app, not BentoML's


LEAD = {"contact": {"contact_id": "a", "created_at": "2026-01-01T00:00:00Z"},
        "events": [{"ts": "2026-02-01T10:00:00Z", "event_type": "pricing_view"}]}
TIMEOUT = 1  # LEADSCORE_TIMEOUT_SECONDS of the servers below


@pytest.fixture(scope="module")
def lane_servers(empty_store: Path, session_dir: Path, kit):
    """Two services side by side on the empty registry (the rules answer): the default
    configuration, and BentoML's metrics on; both with a 1 s request timeout."""
    settings = {"default": {}, "metrics": {"LEADSCORE_METRICS": "1"}}
    started = {name: kit.launch_server(empty_store, session_dir, extra_env={
        "LEADSCORE_TIMEOUT_SECONDS": str(TIMEOUT), **env}) for name, env in settings.items()}
    try:
        for srv in started.values():
            kit.wait_up(srv)
            kit.wait_ready(srv)
            _score(srv)  # a worker decides on its first /score
        yield started
    finally:
        for srv in started.values():
            kit.stop_server(srv)


def _score(srv) -> dict:
    with srv.client() as client:
        answer = client.post("/score", json={"leads": [LEAD]})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_score_is_taken_before_bentoml_middlewares_only_when_they_are_idle(lane_servers):
    default, metrics = lane_servers["default"], lane_servers["metrics"]
    for srv in (default, metrics):
        for _ in range(3):
            assert _score(srv)["scores"][0]["scorer"] == "rules"
    assert "POST /score taken before BentoML's middlewares (none active for it; timeout 1 s)" \
        in default.log_text()
    assert "goes through" not in default.log_text()
    assert "POST /score goes through BentoML's middlewares (RunnerTrafficMetricsMiddleware)" \
        in metrics.log_text()
    assert "taken before" not in metrics.log_text()
    with metrics.client() as client:
        text = client.get("/metrics").text
    counted = [line for line in text.splitlines() if line.startswith("bentoml_service_request_total")
               and 'endpoint="/score"' in line and 'http_response_code="200"' in line]
    assert len(counted) == 1 and float(counted[0].rsplit(" ", 1)[1]) >= 3, text[:2000]


def _stalled_request(url: str) -> tuple[float, int, dict]:
    """Send the headers and a tenth of a body, then nothing: (seconds to the answer, status,
    JSON answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n" + b'{"leads": [' + b" " * 89)
        start, data = time.monotonic(), b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - start
    head, _, body = data.partition(b"\r\n\r\n")
    return took, int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(("config", "error"), [
    ("default", "not answered within 1 s"),  # the lane's timeout
    ("metrics", "Not able to process the request in 1.0 seconds"),  # BentoML's
])
def test_a_request_not_answered_in_time_is_a_504(lane_servers, config, error):
    srv = lane_servers[config]
    took, status, answer = _stalled_request(srv.url)
    assert status == 504 and answer["error"] == error
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 10
    assert _score(srv)["scores"][0]["contact_id"] == "a"  # the worker goes on
