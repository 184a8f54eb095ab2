"""The HTTP scoring service: a BentoML service that CRMs call with a few leads at a time.

Start it with ``leadscore serve [--host H] [--port P] [--workdir DIR]`` or
``bentoml serve serving.service:LeadScoringService --host 127.0.0.1 --port 3000`` (the
embedded MLflow store is then looked up in ``LEADSCORE_WORKDIR``, default the current
directory, unless ``MLFLOW_TRACKING_URI`` is set). ``bentoml build`` reads ``bentofile.yaml``.

Endpoints
---------
``POST /score``
    For the event model: ``{"leads": [{"contact": {...}, "events": [...], "stages": [...]}],
    "as_of": ..., "reasons": "all"|"top"|"none"}``; for a model trained on a CRM export
    (``leadscore train --table``): ``{"rows": [{column: value, ...}], "reasons": ...}``, the
    table's own rows. Either answers ``{"scores": [...], "as_of": ...}`` in request order
    (types in :mod:`serving.api_types`). Bad input is a 4xx naming the field, a lead created
    after ``as_of`` included (``leads.3.contact.created_at``: the nightly batch leaves it out
    as ``created_after_as_of``). A lead the batch would not score because of its stage at
    ``as_of`` is scored all the same, its score saying why: ``"not_eligible": "converted"``
    (opportunity or later) or ``"disqualified"``; the key is absent for an eligible lead.
``GET /model``
    Which scorer answers (name, version, trained_at, metrics, band thresholds) and the
    ``input`` it takes: ``"events"`` or ``"table"`` (with the id column and feature columns).
``POST /reload``
    Load the registry's current champion now (it is also polled every
    ``LEADSCORE_RELOAD_SECONDS``, default 30; 0 turns the poll off). Answers as ``GET /model``,
    with ``reload_error`` (the kind of failure) when the champion could not be loaded: a
    model that answers keeps answering. With ``LEADSCORE_WORKERS`` > 1 the worker that
    answers tells the others (:class:`ReloadSignal`), which start loading within a second.
``GET /openapi.json``
    The OpenAPI 3.1 document of these endpoints (both request shapes, response schemas).
``GET /healthz``, ``/livez``, ``/readyz``
    BentoML's: alive; ready once a scorer (model or rules) is loaded.

Design (measured, see ``benchmarks/bench_serving.py`` and BENCHMARKS.md)
------------------------------------------------------------------------
* The API is a small Starlette app mounted with ``@bentoml.asgi_app``: BentoML's typed
  ``@bentoml.api`` IO layer rebuilds pydantic schemas per request, and FastAPI's request
  handling and BentoML's tracing (which these paths skip) cost more than the scoring of a
  lead. ``/score`` is a plain ASGI endpoint (:class:`ScoreEndpoint`), reached without the
  mounted app's own middlewares and router (:class:`_Api`): the body straight from
  ``receive``, the answer straight to ``send``. It is also taken in front of BentoML's
  middlewares (:class:`ScoreLane`) when they are idle for it, as they are by default:
  tracing with ``/score`` excluded, the request context, the timeout (a task and a timer per
  request; the lane keeps the timeout itself, ``LEADSCORE_TIMEOUT_SECONDS``), error pages
  and routing cost a single lead about 30 % of its CPU. With tracing of ``/score``,
  metrics, the access log, CORS or any other middleware on, ``/score`` goes through them all.
* uvicorn, inside BentoML's worker, uses ``httptools`` and ``uvloop`` when they are installed
  (``bentofile.yaml`` lists them): about half the HTTP handling cost of ``h11`` + asyncio.
* An event request is decoded from raw bytes by msgspec into typed structs
  (:func:`serving.api_types.decode_request`), then into column arrays, timestamps checked a
  column at a time (:func:`serving.api_types.request_columns`, or
  :func:`serving.api_types.merged_columns` for several requests); a body it does not take is validated by pydantic
  (:data:`serving.api_types.SCORE_REQUEST`, which names the fields of a 4xx) and turned into
  columns by :func:`serving.api_types.to_columns`: the same requests are accepted either way.
  The columns are featurised by the batch kernels (:func:`features.build.lead_feature_columns`)
  and scored by :class:`training.fastpath.FastScorer` (the same numbers as
  ``LeadModel.score``, tested); answers are written by msgspec. Table
  rows are validated
  (:data:`serving.api_types.TABLE_REQUEST`), checked against the model's columns
  (:class:`serving.api_types.TableSpec`) and scored by :func:`training.crm.score_table`.
* Event requests of up to 20 leads are scored near the event loop, and those received over
  consecutive passes of the loop are scored together (:class:`serving.microbatch.LoopBatcher`,
  :meth:`LeadScoringService.score_batch`): one featurisation and one scoring call for their
  leads, grouped by ``as_of`` and reasons mode, each request answered with its own leads'
  scores. A group that fails as a whole (a late lead, a timestamp left to pydantic, a
  model that raises) is answered request by request, so each gets the answer it gets
  alone. A lone request waits a few passes of the loop, never a timer; a batch waits at
  most 5 ms for more. When the model's reasons (LightGBM ``pred_contrib``) are slow (timed
  when the model loads), the scoring of a small request runs in one worker thread, where
  the trees release the GIL and the loop serves other requests meanwhile; otherwise on the
  loop. Requests of more than 20 leads or rows are scored in a thread; smaller table
  requests inline.
* A body above 4 MB (:data:`serving.api_types.LARGE_BODY_BYTES`) is decoded in a worker
  thread one lead or row per decoder call (:func:`serving.api_types.decode_large`): msgspec
  and pydantic hold the GIL for a whole call, so a thread alone would still stall the loop
  (a 30 MB body: about a second); between calls the loop gets the GIL back (the switch
  interval) and answers other requests and ``/readyz``. Same results and errors as one
  call (tested); smaller bodies are decoded inline as before.
* Never down: no registered champion, an artifact that does not load, or a prediction that
  raises -> the rule scorer answers with ``scorer: "rules"`` (a table model's own
  scorecard for table rows); the event is logged by kind only (no contact data, no request
  body). A champion promoted later is picked up by the alias poll or ``POST /reload``,
  without restart. A loaded model is never replaced by the rules: an unreadable registry or
  a champion whose artifact does not load leaves it answering. A version that failed to
  load is retried by the poll after the poll interval, then twice as long after each new
  failure, at most every 10 minutes (an artifact store that was down for a while);
  ``POST /reload`` retries at once.
* Access: ``LEADSCORE_API_KEYS`` (comma-separated, UTF-8) turns on ``Authorization: Bearer``
  checks for ``/score``, ``/model`` and ``/reload``: the scheme in any case (RFC 7235), the
  key's bytes compared in constant time with each key; without keys the service only starts
  on, and only answers on, a loopback address.
* LightGBM runs with ``num_threads=1``; one worker process by default (``LEADSCORE_WORKERS``);
  with as many workers as CPUs each is pinned to its own (:func:`worker_cpu`,
  ``LEADSCORE_CPU_AFFINITY``), so its event loop and scoring thread share one core's caches
  instead of handing the GIL across two. For 100-lead requests on two cores, two pinned
  workers beat one (BENCHMARKS.md). BentoML's access log and metrics are off by default
  (``LEADSCORE_ACCESS_LOG=1``, ``LEADSCORE_METRICS=1``), tracing of the API paths too
  (``LEADSCORE_TRACING=1``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import ipaddress
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import bentoml
import msgspec
import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from features import schema
from features.build import lead_feature_columns
from serving import api_types as T
from serving.microbatch import LoopBatcher

log = logging.getLogger("leadscore.service")

SERVICE_NAME = "leadscore"
_JSON = "application/json"
_RELOAD_DEFAULT_SECONDS = 30.0
#: BentoML's tracing of the API paths (``LEADSCORE_TRACING=1``); off, they are its excluded URLs
_TRACING = os.environ.get("LEADSCORE_TRACING", "0") == "1"
_INITIAL_LOAD_WAIT_SECONDS = 60.0
_INLINE_MAX_LEADS = 20  # larger requests are scored in a worker thread, off the event loop
#: Smaller ones received together are scored together, up to this weight per call: a request
#: weighs its body's bytes plus _BATCH_LEAD_BYTES per lead, so a call takes at most 64 leads
#: (about 26 leads of 50 events; a request alone may weigh more).
_BATCH_MAX_WEIGHT = 256 * 1024
_BATCH_LEAD_BYTES = 4096
#: A call takes its requests once this many passes of the event loop went by without a new one
#: (``LEADSCORE_BATCH_PATIENCE``, 0 to 1,000): under load, the requests of the next few passes
#: join the batch; alone, a request waits these passes only (microseconds). Whatever keeps
#: coming, a call takes its requests after _BATCH_MAX_WAIT_SECONDS.
_BATCH_PATIENCE = 8
_BATCH_MAX_PATIENCE = 1000
_BATCH_MAX_WAIT_SECONDS = 0.005
#: A champion version that failed to load is retried by the poll after the poll interval,
#: then twice as long at each failure, at most this many seconds apart.
_RETRY_MAX_SECONDS = 600.0


# -- access ------------------------------------------------------------------------------------
def parse_api_keys(value: str | None) -> tuple[bytes, ...]:
    """API keys from ``LEADSCORE_API_KEYS`` (comma-separated, blanks ignored), as UTF-8 bytes
    (the environment's own bytes where they are not UTF-8)."""
    return tuple(k.strip().encode("utf-8", "surrogateescape")
                 for k in (value or "").split(",") if k.strip())


@lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, api_keys: str) -> None:
    """Refuse a non-loopback address without API keys.

    Raises
    ------
    PermissionError
        ``host`` is not a loopback address and ``api_keys`` holds no key.
    """
    if not is_loopback(host) and not parse_api_keys(api_keys):
        raise PermissionError(
            f"refusing to listen on {host}: it is not a loopback address and LEADSCORE_API_KEYS "
            "is empty. Set LEADSCORE_API_KEYS (comma-separated keys, sent as "
            "'Authorization: Bearer <key>') or listen on 127.0.0.1."
        )


def authorized(header: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Whether an ``Authorization`` header carries one of ``keys``: the ``Bearer`` scheme in
    any case (RFC 7235), the key compared as bytes in constant time, every key compared.

    ``header`` is the header's bytes as received (the ASGI scope's): a key with non-ASCII
    characters matches when the client sends it in UTF-8, as :func:`parse_api_keys` reads it.
    """
    if not header:
        return False
    if header[:7].lower() != b"bearer ":
        return False
    given = header[7:].strip()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


def _listening_hosts() -> list[str]:
    """Addresses of the sockets BentoML handed this worker (``--fd N`` on its command line)."""
    import socket

    hosts = []
    for i, arg in enumerate(sys.argv[:-1]):
        if arg == "--fd":
            try:
                fd = int(sys.argv[i + 1])
                with socket.socket(fileno=os.dup(fd)) as s:
                    hosts.append(str(s.getsockname()[0]))
            except (ValueError, OSError):
                continue
    return hosts


# -- reloads reaching every worker ---------------------------------------------------------------
class ReloadSignal:
    """``POST /reload`` on one worker process reaches the others of the same server.

    The worker that answered it writes a new random token into a file the workers share
    (named after their parent, BentoML's arbiter, in a folder only the user can reach);
    every worker reads the file once a second and reloads when the token changed. A file
    left by an earlier server whose parent had the same process id, or a missing file, is
    no signal. Symbolic links are not followed, and file errors are logged, never raised:
    at worst a reload reaches one worker, as without the signal.
    """

    _TOKEN_BYTES = 8

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen = self._read()

    @classmethod
    def for_workers(cls, workers: int) -> ReloadSignal | None:
        """The signal of this worker's server, or None with a single worker (or a temporary
        folder that cannot be made private)."""
        if workers < 2:
            return None
        import stat
        import tempfile

        uid = os.getuid() if hasattr(os, "getuid") else 0
        folder = Path(tempfile.gettempdir()) / f"leadscore-{uid}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077 or (
                    hasattr(os, "getuid") and st.st_uid != uid):
                raise PermissionError("not a private folder of this user")
        except OSError as e:
            log.warning("POST /reload will reach one worker only; the others follow the "
                        "alias poll when it is on (%s)", type(e).__name__)
            return None
        return cls(folder / f"reload-{os.getppid()}")

    def _read(self) -> bytes | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # missing (or a symbolic link): no signal
            return None
        try:
            return os.read(fd, 2 * self._TOKEN_BYTES)
        except OSError:
            return None
        finally:
            os.close(fd)

    def send(self) -> None:
        """Tell the other workers (this one has reloaded already)."""
        token = os.urandom(self._TOKEN_BYTES).hex().encode()
        with self._lock:
            self._seen = token
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                         0o600)
            try:
                os.write(fd, token)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("POST /reload reached this worker only (%s)", type(e).__name__)

    def received(self) -> bool:
        """Whether another worker sent the signal since this one last looked."""
        token = self._read()
        with self._lock:
            if token is None or token == self._seen:
                return False
            self._seen = token
            return True

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


# -- scorer state ------------------------------------------------------------------------------
class ScorerState:
    """The scorer that answers, with its fast path and the rule scorer as the fallback.

    ``kind`` is the request it takes: ``"events"`` (``{"leads": [...]}``) or ``"table"``
    (``{"rows": [...]}``, a model trained on a CRM export: ``table`` checks the columns,
    ``dataset`` cleans the rows for its rule scorer).
    """

    def __init__(self, scorer: Any, rules: Any, loaded_at: str) -> None:
        from training.model import RulesOnly

        self.scorer = scorer
        self.rules = rules if rules is not None else scorer
        self.loaded_at = loaded_at
        self.kind = getattr(scorer, "input_kind", "events")
        self.fast = None
        self.table: T.TableSpec | None = None
        self.dataset = None
        self.offload_reasons = True
        if self.kind == "table":
            from training.crm import DatasetConfig

            self.table = T.TableSpec.from_model(scorer)
            self.dataset = DatasetConfig.model_validate(scorer.dataset)
            self.fast = _table_fast_scorer(scorer)
        elif not isinstance(scorer, RulesOnly):
            try:
                from training.fastpath import FastScorer

                self.fast = FastScorer(scorer)
                self.offload_reasons = _explaining_is_slow(self.fast)
            except NotImplementedError as e:
                log.warning("no fast path for this model (%s); using LeadModel.score", e)
        self.version = None if isinstance(scorer, RulesOnly) else str(scorer.model_version)

    def info(self) -> dict[str, Any]:
        out = {**_jsonable(self.scorer.info()), "loaded_at": self.loaded_at}
        out.setdefault("input", self.kind)
        return out


def _table_fast_scorer(model: Any) -> Any:
    """The fast path of a table model (its reasons named by the table's own columns, as
    ``LeadModel.score`` names them); None when its pipeline has no fast path."""
    try:
        from training.fastpath import FastScorer

        fast = FastScorer(model)
        names = model.reason_names or {}
        fast.names = [names.get(c, c) for c in fast.columns]
        return fast
    except Exception as e:  # NotImplementedError: another pipeline shape; score_table answers
        log.warning("no fast path for this table model (%s); using score_table", type(e).__name__)
        return None


#: Small requests are scored in the reasons' worker thread when one lead's reasons cost more
#: than this (seconds of C code that releases the GIL); with cheaper ones they are scored on
#: the event loop, sparing the thread hop.
_OFFLOAD_SECONDS = 150e-6


def _explaining_is_slow(fast: Any) -> bool:
    """Whether one lead's contributions take longer than :data:`_OFFLOAD_SECONDS` (timed
    on a row of zeros, best of five)."""
    try:
        row = np.zeros(len(fast.columns))
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            fast.contributions_one(row)
            best = min(best, time.perf_counter() - t0)
        return best > _OFFLOAD_SECONDS
    except Exception:  # a fast path without single-row contributions: keep the thread
        return True


def _setup_logging() -> None:
    """Our events on stderr beside BentoML's (kinds and versions only, never request data)."""
    logger = logging.getLogger("leadscore")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    registry = logging.getLogger("training.registry")  # its fallback warning, same handler
    if not registry.handlers:
        registry.addHandler(logger.handlers[0])
        registry.propagate = False


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _iso(d: dt.datetime) -> str:
    return d.isoformat(timespec="microseconds") + "Z"


# -- the API -----------------------------------------------------------------------------------
def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI 3.1 document (request and response schemas from
    :mod:`serving.api_types`), served at ``GET /openapi.json``."""
    components: dict[str, Any] = {}

    def model_schema(model: Any) -> dict[str, Any]:
        s = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(s.pop("$defs", {}))
        components[model.__name__] = s
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def adapter_schema(name: str, adapter: Any) -> dict[str, Any]:
        s = adapter.json_schema(ref_template="#/components/schemas/{model}")
        components.update(s.pop("$defs", {}))
        components[name] = s
        return {"$ref": f"#/components/schemas/{name}"}

    request = {"oneOf": [adapter_schema("ScoreRequest", T.SCORE_REQUEST),
                         adapter_schema("TableScoreRequest", T.TABLE_REQUEST)]}
    error = model_schema(T.ErrorResponse)

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {_JSON: {"schema": schema}}}

    auth = {"401": answer("Missing or wrong API key", error),
            "403": answer("API keys required off loopback", error)}
    info = model_schema(T.ModelInfo)
    paths = {
        "/score": {"post": {
            "operationId": "score", "summary": "Score 1 to 1,000 leads",
            "description": "Probability, score, band and reasons of each lead, in request order. "
                           "The body is a ScoreRequest (contacts with their events) for the event "
                           "model, or a TableScoreRequest (rows of a CRM export, by its own column "
                           "names) for a model trained on that table: GET /model says which "
                           "(`input`), and lists a table model's columns.",
            "requestBody": {"required": True, "content": {_JSON: {"schema": request}}},
            "responses": {"200": answer("Scores in request order", model_schema(T.ScoreResponse)),
                          "400": answer("The body is not JSON", error),
                          "413": answer("Body too large", error),
                          "422": answer("Invalid request (fields named in detail)", error), **auth},
        }},
        "/model": {"get": {"operationId": "model", "summary": "The scorer that answers",
                           "responses": {"200": answer("Scorer, version, thresholds, input", info),
                                         **auth}}},
        "/reload": {"post": {"operationId": "reload", "summary": "Load the registry's champion now",
                             "description": "Answers as GET /model, with reload_error when the "
                                            "champion could not be loaded (the scorer that "
                                            "answered keeps answering). With several worker "
                                            "processes, one worker reloads; the others poll.",
                             "responses": {"200": answer("The scorer after the reload", info), **auth}}},
    }
    for path, what in (("/healthz", "alive"), ("/readyz", "ready: a scorer is loaded")):
        paths[path] = {"get": {"operationId": path.strip("/"), "summary": what, "security": [],
                               "responses": {"200": {"description": what},
                                             "503": {"description": "not ready"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "leadscore", "version": "1",
                 "description": "Lead scoring: calibrated conversion probability, score, band, reasons."},
        "paths": paths,
        "security": [{"bearer": []}],  # when LEADSCORE_API_KEYS is set
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _error(status: int, error: str, detail: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "detail": detail or []}).encode()
    return Response(body, status_code=status, media_type=_JSON, headers=headers)


def _validation_details(exc: ValidationError | T.BodyInvalid) -> list[dict[str, str]]:
    out = []
    for e in exc.errors(include_url=False, include_context=False, include_input=False)[:T.MAX_ERRORS]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        message = e["msg"]
        if e["type"] == "string_pattern_mismatch":  # the only patterns are the timestamps'
            message = "expected an ISO 8601 timestamp such as 2026-03-01T09:30:00Z"
        out.append({"field": loc, "message": message, "type": e["type"]})
    return out


_SHAPES = {"events": ("leads", '{"leads": [{"contact": {...}, "events": [...]}]}'),
           "table": ("rows", '{"rows": [{column: value, ...}]} with the columns GET /model lists')}


def _invalid(exc: ValidationError | T.BodyInvalid, kind: str) -> Response:
    """The 400 (not JSON) or 422 answer to a body that failed validation."""
    details = _validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return _error(400, "the body is not valid JSON",
                      [{"field": "body", "message": d["message"], "type": d["type"]} for d in details])
    error = "invalid request"
    other = "table" if kind == "events" else "events"
    if any(d["field"] == _SHAPES[other][0] and d["type"] == "extra_forbidden" for d in details):
        error = (f"the model that answers takes {kind} input: send {_SHAPES[kind][1]} "
                 f"(a {_SHAPES[other][0]!r} body is for a model of {other} input)")
    return _error(422, error, details)


_JSON_HEADERS = [(b"content-type", b"application/json")]


_CLOSE = [(b"connection", b"close")]


async def _send_json(send: Any, body: bytes, close: bool = False) -> None:
    """A 200 with ``body``; ``close``: and the connection closed after it."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()),
                            *(_CLOSE if close else ())]})
    await send({"type": "http.response.body", "body": body})


def _handed_over(scope: dict[str, Any]) -> bool:
    """Whether to close the connection of this request after its answer: its declared
    ``Content-Length`` is over :data:`_HANDOVER_BYTES`.

    The workers share one listening socket and the kernel hands each new connection to one
    of them, for good: a client that opens its few connections at once may find them all on
    one worker while the other idles (seen in a benchmark round in about one of ten on two
    workers: half the throughput). Closing the connection after a bulk answer makes the
    client reconnect, and the kernel hands the new connection to a worker again (whichever
    accepts first). A reconnection costs far less than a request this large."""
    if not _HANDOVER_BYTES:  # one worker, or turned off
        return False
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.isdigit() and int(value) > _HANDOVER_BYTES
    return False


class ScoreEndpoint:
    """``POST /score`` as a plain ASGI app: the body straight from ``receive``, the answer
    straight to ``send`` (no Request/Response objects on the success path)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Behind BentoML's middlewares, whose timeout answers a request that takes too long."""
        await self.answer(scope, receive, send, None)

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any,
                     timeout: float | None) -> None:
        """Answer the request; a 504 when its answer is not ready within ``timeout`` seconds
        (None: no limit here). The work of a request in a thread goes on after its 504."""
        svc = _service()
        if timeout is None:
            result = await self.handle(svc, scope, receive)
        else:
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    result = await self.handle(svc, scope, receive)
            except TimeoutError:
                if not deadline.expired():
                    raise
                result = _error(504, f"not answered within {timeout:g} s")
        if isinstance(result, bytes):
            await _send_json(send, result, _handed_over(scope))
        else:
            await result(scope, receive, send)

    async def handle(self, svc: LeadScoringService, scope: dict[str, Any], receive: Any
                     ) -> bytes | Response:
        authorization = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
        denied = svc.check_access(authorization, scope.get("server"))
        if denied is not None:
            return denied
        body = await _receive_body(receive, svc.max_body, length)
        if not isinstance(body, bytes):
            return body
        state = svc._state or await svc.wait_state()
        large = len(body) > svc.large_body  # decoded in a thread, a lead or row per call
        if state.kind == "table":
            try:
                if large:
                    payload = await asyncio.to_thread(T.validate_table_large, body)
                else:
                    payload = T.TABLE_REQUEST.validate_json(body)
            except (ValidationError, T.BodyInvalid) as e:
                return _invalid(e, "table")
            if len(payload["rows"]) <= _INLINE_MAX_LEADS and not large:
                return svc.score_rows(payload, state)
            return await asyncio.to_thread(svc.score_rows, payload, state)
        now = _now()
        if large:
            decoded = await asyncio.to_thread(_decode_large, body, now)
        else:
            request = T.decode_request(body)
            if request is not None and len(request.leads) <= _INLINE_MAX_LEADS:
                return await svc.batcher.submit(_Pending(body, request, state))
            decoded = _decode(body, now, request)
        if isinstance(decoded, Response):
            return decoded
        cols, mode = decoded
        if len(cols.contact_ids) <= _INLINE_MAX_LEADS and not large:  # a body left to pydantic
            return _answer(await svc.scores_near_loop(cols, mode, now, state), cols)
        return await asyncio.to_thread(svc.score_columns, cols, mode, now, state)


@dataclass(frozen=True)
class _Pending:
    """A small event request waiting for its batch: the body, msgspec's struct of it, the
    scorer state it was received under."""

    body: bytes
    request: Any
    state: ScorerState


def _decode(body: bytes, now: dt.datetime, request: Any = None
            ) -> tuple[T.LeadColumns, str] | Response:
    """The columns and reasons mode of an event request's body, or its 4xx (``request``:
    the body's :func:`serving.api_types.decode_request` when already made)."""
    try:
        if request is None:
            request = T.decode_request(body)
        decoded = None if request is None else T.request_columns(request, now=now)
    except T.RequestError as e:
        return _error(422, "invalid request", e.errors)
    if decoded is not None:
        return decoded
    try:  # not for the fast decoder: pydantic accepts it, or names what is wrong
        payload = T.SCORE_REQUEST.validate_json(body)
    except ValidationError as e:
        return _invalid(e, "events")
    try:
        cols = T.to_columns(payload, now=now)
    except T.RequestError as e:
        return _error(422, "invalid request", e.errors)
    return cols, payload.get("reasons", "all")


def _decode_large(body: bytes, now: dt.datetime) -> tuple[T.LeadColumns, str] | Response:
    """:func:`_decode` of a body above :data:`serving.api_types.LARGE_BODY_BYTES`, a lead per
    decoder call (:func:`serving.api_types.decode_large`; run in a worker thread)."""
    try:
        return T.decode_large(body, now=now)
    except (ValidationError, T.BodyInvalid) as e:
        return _invalid(e, "events")
    except T.RequestError as e:
        return _error(422, "invalid request", e.errors)


async def model(request: Request) -> Response:
    """``GET /model``: name, version, training date, metrics, band thresholds and the input
    it takes (a table model: its id column and feature columns)."""
    svc = _service()
    denied = svc.deny(request)
    if denied is not None:
        return denied
    state = await svc.wait_state()
    return Response(json.dumps(svc.model_info(state)).encode(), media_type=_JSON)


async def reload(request: Request) -> Response:
    """``POST /reload``: load the registry's champion now (no restart needed)."""
    svc = _service()
    denied = svc.deny(request)
    if denied is not None:
        return denied
    await svc.wait_state()
    state, failure = await asyncio.to_thread(svc.reload_report, force=True)
    if svc.reload_signal is not None:  # the other workers reload too
        svc.reload_signal.send()
    info = svc.model_info(state)
    if failure is not None:
        info["reload_error"] = failure
    return Response(json.dumps(info).encode(), media_type=_JSON)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``."""
    return Response(_OPENAPI_JSON(), media_type=_JSON)


@lru_cache(maxsize=1)
def _OPENAPI_JSON() -> bytes:
    return json.dumps(openapi_document()).encode()


_current_service = bentoml.get_current_service  # bound once: a module attribute look-up less


def _service() -> LeadScoringService:
    return _current_service()


class _Api(Starlette):
    """Our routes, with ``POST /score`` handed straight to its endpoint: BentoML's middlewares
    already wrap this app, and this app's own (error pages, exception handlers) and router
    would cost the busiest path a few percent of its CPU for nothing it uses."""

    _lane_checked = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path, root = scope["path"], scope.get("root_path", "")
            if path == "/score" or (root and path == root + "/score"):
                if not self._lane_checked:  # the first /score: BentoML's app is scope["app"]
                    self._lane_checked = True
                    ScoreLane.install(scope.get("app"), path)
                return await _SCORE(scope, receive, send)
        await super().__call__(scope, receive, send)


_SCORE = ScoreEndpoint()


def idle_for(middleware: list[Any], path: str) -> tuple[float | None, list[str]]:
    """Whether BentoML's ``middleware`` (a Starlette app's ``user_middleware``) all leave
    requests to ``path`` alone: (BentoML's request timeout, []) when they are BentoML's
    timeout, its request context and tracing with ``path`` among its excluded URLs; else
    (None, what is not)."""
    try:  # BentoML's own classes, compared by identity
        from _bentoml_impl.server.app import ContextMiddleware
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError:  # another BentoML: its middlewares are not known here
        return None, ["BentoML's middlewares (not recognised)"]
    timeout, context, active = None, False, []
    for m in middleware:
        if m.cls is TimeoutMiddleware:
            timeout = m.kwargs.get("timeout")
        elif m.cls is ContextMiddleware:
            context = True
        elif m.cls is OpenTelemetryMiddleware:
            excluded = m.kwargs.get("excluded_urls")
            if excluded is None or not excluded.url_disabled(f"http://localhost{path}"):
                active.append(f"tracing of {path}")
        else:
            active.append(getattr(m.cls, "__name__", repr(m.cls)))
    if not (timeout and context):  # not BentoML's app, or no timeout to keep
        active.append("not BentoML's middlewares")
    return (None, active) if active else (float(timeout), [])


class ScoreLane:
    """BentoML's middleware stack with ``POST /score`` taken in front of it.

    BentoML wraps a mounted app in middlewares that, in this service's default
    configuration, do nothing for ``/score``: tracing (``/score`` is among its excluded
    URLs), the request context (which ``/score`` does not read), error pages, routing and
    the request timeout, which the lane keeps itself (with BentoML's value). Together they
    cost a single-lead request about 30 % of its CPU (BENCHMARKS.md). The lane is put in
    front only when the middlewares are those (:func:`idle_for`); with tracing of
    ``/score``, metrics, the access log, CORS, a concurrency limit or any other middleware
    on, ``/score`` goes through all of them.
    """

    def __init__(self, app: Any, path: str, timeout: float) -> None:
        self.app, self.path, self.timeout = app, path, timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            return await _SCORE.answer(scope, receive, send, self.timeout)
        await self.app(scope, receive, send)

    @classmethod
    def install(cls, app: Any, path: str) -> bool:
        """Put a lane for ``path`` (as the mounted app sees it) in front of the middleware
        stack of ``app``, BentoML's app, when its middlewares are idle for it; whether it did."""
        stack = getattr(app, "middleware_stack", None)
        if stack is None or isinstance(stack, cls):
            return False
        timeout, active = idle_for(getattr(app, "user_middleware", None) or [], path)
        if timeout is None:
            log.info("POST %s goes through BentoML's middlewares (%s)", path, ", ".join(active))
            return False
        app.middleware_stack = cls(stack, path, timeout)
        log.info("POST %s taken before BentoML's middlewares (none active for it; timeout %g s)",
                 path, timeout)
        return True


api = _Api(routes=[
    Route("/score", _SCORE, methods=["POST"]),
    Route("/model", model, methods=["GET"]),
    Route("/reload", reload, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
])


def _too_large(limit: int) -> Response:
    return _error(413, f"body larger than {limit} bytes",
                  [{"field": "body", "message": f"at most {limit} bytes", "type": "too_large"}])


async def _receive_body(receive: Any, limit: int, length: bytes | None) -> bytes | Response:
    """The request body from the ASGI ``receive`` channel, or a 413 as soon as it exceeds
    ``limit`` bytes (a 400 for a malformed ``Content-Length``)."""
    if length is not None:
        try:
            if int(length) > limit:
                return _too_large(limit)
        except ValueError:
            return _error(400, "invalid Content-Length header",
                          [{"field": "content-length", "message": "not an integer", "type": "header"}])
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= limit else _too_large(limit)
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            return _error(400, "the client disconnected", [{"field": "body", "message": "incomplete",
                                                            "type": "disconnect"}])
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _env_number(name: str, default: float, *, low: float = 0, high: float | None = None,
                whole: bool = False) -> Any:
    """A number from the environment, ``default`` when unset; a ValueError naming the
    variable when it is not a finite number in range (``whole``: a whole number, read as
    an int; ``1e6`` reads as 1000000)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= low and (high is None or value <= high)
            and (value.is_integer() or not whole)):
        bounds = f"at least {low:g}" if high is None else f"from {low:g} to {high:g}"
        raise ValueError(f"{name}={raw!r}: expected a {'whole ' if whole else ''}number {bounds}")
    return int(value) if whole else value


_AFFINITY_MODES = ("auto", "on", "off")


def worker_cpu(mode: str, worker: int | None, workers: int, allowed: set[int]) -> int | None:
    """The CPU worker process number ``worker`` (1-based) is pinned to, or None to leave it to
    the OS.

    A worker's Python code holds the GIL, so it uses about one core however many threads it
    has; its event loop and scoring thread handing the GIL to each other across two cores
    cost about 1.3-1.8x the CPU of the same work on one (BENCHMARKS.md). ``on`` pins worker i to
    the i-th CPU it may use (round robin); ``auto`` does so only when there are as many
    workers as such CPUs, one each (a lone worker on a shared host is left free to move);
    ``off`` never pins.
    """
    if mode not in _AFFINITY_MODES:
        raise ValueError(f"LEADSCORE_CPU_AFFINITY={mode!r}: expected one of "
                         f"{', '.join(_AFFINITY_MODES)}")
    cpus = sorted(allowed)
    if mode == "off" or worker is None or not cpus or (mode == "auto" and workers != len(cpus)):
        return None
    return cpus[(worker - 1) % len(cpus)]


def _worker_index() -> int | None:
    """This BentoML worker's number (1-based), None outside a BentoML worker."""
    from bentoml._internal.context import server_context

    return server_context.worker_index


def _worker_label() -> str:
    index = _worker_index()
    return "" if index is None else f" (worker {index})"


def _pin_worker(mode: str, workers: int) -> None:
    """Pin this worker process, every thread of it, to its CPU (see :func:`worker_cpu`)."""
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return
    cpu = worker_cpu(mode, _worker_index(), workers, os.sched_getaffinity(0))
    if cpu is None:
        return
    tasks = Path("/proc/self/task")
    pinned = 0
    for tid in [int(t) for t in os.listdir(tasks)] if tasks.is_dir() else [0]:
        try:
            os.sched_setaffinity(tid, {cpu})
            pinned += 1
        except OSError:  # a thread that has ended
            continue
    if pinned:
        log.info("worker %s pinned to CPU %d", _worker_index(), cpu)


#: worker processes (``LEADSCORE_WORKERS``, default 1), each its own model and event loop
_WORKERS = _env_number("LEADSCORE_WORKERS", 1, low=1, high=256, whole=True)
#: seconds a request may take before its 504 (``LEADSCORE_TIMEOUT_SECONDS``, default 60)
_TIMEOUT_SECONDS = _env_number("LEADSCORE_TIMEOUT_SECONDS", 60, low=1)
#: with several workers, the connection of a request whose body is larger than this is closed
#: after its answer (``LEADSCORE_HANDOVER_BYTES``, default 64 KiB; 0 never): see _handed_over
_HANDOVER_BYTES = _env_number("LEADSCORE_HANDOVER_BYTES", 65536, whole=True) * (_WORKERS > 1)
#: ``LEADSCORE_CPU_AFFINITY`` (see :func:`worker_cpu`), checked before any worker starts
_CPU_AFFINITY = os.environ.get("LEADSCORE_CPU_AFFINITY", "auto").strip().lower() or "auto"
worker_cpu(_CPU_AFFINITY, None, _WORKERS, set())


# -- the BentoML service -----------------------------------------------------------------------
@bentoml.service(
    name=SERVICE_NAME,
    workers=_WORKERS,
    traffic={"timeout": _TIMEOUT_SECONDS},
    http={"host": "127.0.0.1", "port": 3000},
    metrics={"enabled": os.environ.get("LEADSCORE_METRICS", "0") == "1"},
    logging={"access": {"enabled": os.environ.get("LEADSCORE_ACCESS_LOG", "0") == "1"}},
    tracing={"excluded_urls": [] if _TRACING else ["/score", "/model", "/reload", "/openapi.json"]},
)
@bentoml.asgi_app(api, path="/")
class LeadScoringService:
    """Lead scoring over HTTP: the MLflow champion of ``lead-scoring``, the rules as fallback.

    Configuration (environment): ``LEADSCORE_WORKDIR`` (embedded MLflow store, default ``.``;
    ``MLFLOW_TRACKING_URI`` wins), ``LEADSCORE_MODEL_URI`` (default the champion),
    ``LEADSCORE_API_KEYS``, ``LEADSCORE_RELOAD_SECONDS`` (default 30, 0: no poll),
    ``LEADSCORE_MAX_BODY_BYTES``, ``LEADSCORE_LARGE_BODY_BYTES`` (bodies above it are
    decoded lead by lead in a thread), ``LEADSCORE_BATCH_PATIENCE`` (default 8 passes of the
    loop), ``LEADSCORE_WORKERS`` (worker processes, default 1), ``LEADSCORE_CPU_AFFINITY``
    (``auto``: one worker per CPU when there are as many workers as CPUs; ``on``, ``off``).
    """

    def __init__(self) -> None:
        _setup_logging()
        _pin_worker(_CPU_AFFINITY, _WORKERS)
        self.keys = parse_api_keys(os.environ.get("LEADSCORE_API_KEYS"))
        for host in _listening_hosts():
            check_bind_allowed(host, os.environ.get("LEADSCORE_API_KEYS", ""))
        self.workdir = Path(os.environ.get("LEADSCORE_WORKDIR", "."))
        self.model_uri = os.environ.get("LEADSCORE_MODEL_URI") or None
        self.max_body = _env_number("LEADSCORE_MAX_BODY_BYTES", T.MAX_BODY_BYTES, low=1,
                                    whole=True)
        self.large_body = _env_number("LEADSCORE_LARGE_BODY_BYTES", T.LARGE_BODY_BYTES, low=1,
                                      whole=True)
        self.reload_seconds = _env_number("LEADSCORE_RELOAD_SECONDS", _RELOAD_DEFAULT_SECONDS)
        self._state: ScorerState | None = None
        self._failed_version: str | None = None  # a champion that did not load (GET /model)
        self._retries = 0  # its failures after the first
        self._retry_at = 0.0  # time.monotonic() after which the poll retries it
        self._reload_lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        #: with several workers, POST /reload on one reaches the others
        self.reload_signal = ReloadSignal.for_workers(_WORKERS)
        # small requests of a model whose reasons are slow: LightGBM releases the GIL in its
        # trees, the event loop goes on; a short GIL switch interval hands the result back
        # quickly (tail latency)
        sys.setswitchinterval(_env_number("LEADSCORE_SWITCH_INTERVAL", 0.001, low=1e-6))
        self._trees = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadscore-trees")
        #: small event requests received over consecutive passes of the loop, scored together
        self.batcher: LoopBatcher[_Pending, bytes | Response] = LoopBatcher(
            self.score_batch, max_weight=_BATCH_MAX_WEIGHT,
            patience=_env_number("LEADSCORE_BATCH_PATIENCE", _BATCH_PATIENCE,
                                 high=_BATCH_MAX_PATIENCE, whole=True),
            max_wait=_BATCH_MAX_WAIT_SECONDS,
            weight=lambda item: len(item.body) + _BATCH_LEAD_BYTES * len(item.request.leads))
        threading.Thread(target=self._background, name="leadscore-loader", daemon=True).start()

    # -- readiness and loading ---------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self._state is not None

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        if self.reload_signal is not None:
            self.reload_signal.remove()
        self._trees.shutdown(wait=False)

    def _background(self) -> None:
        """Load the scorer, then poll the champion alias."""
        from training.tracking import configure_tracking

        try:
            configure_tracking(self.workdir)
        except Exception as e:  # the store is unusable: rules answer, the poll retries
            log.warning("tracking store unavailable (%s)", type(e).__name__)
        self.reload(force=True)
        self._ready.set()
        signal, every = self.reload_signal, self.reload_seconds
        if signal is None and every <= 0:
            return
        tick = every if signal is None else min(every or 1.0, 1.0)
        next_poll = time.monotonic() + every
        while not self._stop.wait(tick):
            try:
                if signal is not None and signal.received():
                    next_poll = time.monotonic() + every
                    self.reload(force=True)  # another worker answered POST /reload
                elif every > 0 and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + every
                    self.reload(force=False)
            except Exception as e:  # never let the poll die
                log.warning("champion poll failed (%s)", type(e).__name__)

    def _champion_version(self) -> tuple[str | None, str | None]:
        """The champion's version, or None and why (the kind of failure only)."""
        from training.registry import resolve

        try:
            return resolve(self.model_uri)[2], None
        except Exception as e:  # no champion, or the registry cannot be read
            return None, f"registry: {type(e).__name__}"

    def reload(self, *, force: bool) -> ScorerState:
        """Load the champion when its version changed (always with ``force``); swap atomically.
        The state that answers afterwards (see :meth:`reload_report`)."""
        return self.reload_report(force=force)[0]

    def reload_report(self, *, force: bool) -> tuple[ScorerState, str | None]:
        """Load the champion when its version changed (always with ``force``); swap atomically.
        The state that answers afterwards, and why the champion was not loaded (None when it
        was, or when nothing had to change).

        A loaded model is never replaced by the rules: when the registry cannot be read, or
        the champion's artifact does not load, the model that answers keeps answering (the
        failure is logged by kind, answered by ``POST /reload`` and, for a version that does
        not load, shown by ``GET /model``). Without any model, the rules answer. The poll
        retries a version that failed to load after :meth:`_retry_delay` (doubling each time,
        at most :data:`_RETRY_MAX_SECONDS`); ``force`` always retries.
        """
        from training.model import RulesOnly
        from training.registry import load_scorer
        from training.rules import RuleScorer

        with self._reload_lock:
            current = self._state
            serving_model = current is not None and current.version is not None
            version, unread = self._champion_version()
            if not force and current is not None:
                if version is None or version == current.version:
                    if version is not None:  # the alias is (back) on the serving version
                        self._failed_version, self._retries = None, 0
                    return current, None  # no (readable) champion, or the same one
                if version == self._failed_version and time.monotonic() < self._retry_at:
                    return current, None  # it failed to load: retried after a backoff
            started = time.perf_counter()
            rules = current.rules if current is not None else None
            scorer = load_scorer(self.model_uri, num_threads=1,
                                 rules=rules.rules if rules is not None else RuleScorer())
            try:
                state = ScorerState(scorer, None, _iso(_now()))
            except Exception as e:  # e.g. a table model whose dataset config is unreadable
                log.warning("the loaded model is unusable (%s): falling back to the rule scorer",
                            type(e).__name__)
                state = ScorerState(RulesOnly(rules.rules if rules is not None else RuleScorer(),
                                              reason=f"model unusable ({type(e).__name__})"),
                                    None, _iso(_now()))
            if state.version is None:  # no model loaded: the rules, and why
                failure = str(getattr(state.scorer, "reason", None) or "no model")
                if version is None and unread is not None:
                    failure = f"{failure}; {unread}"
                if version is not None:
                    self._note_failure(version)
                if serving_model:
                    log.warning("the champion (version %s) could not be loaded (%s); version %s "
                                "keeps answering", version or "unknown", failure, current.version)
                    return current, failure
            else:
                self._failed_version, self._retries, failure = None, 0, None
            state.rules = _rules_of(state.scorer, rules)
            self._state = state
            info = state.info()
            log.info("scorer loaded: %s %s version %s in %.1fs%s", info["scorer"], info["name"],
                     info["version"], time.perf_counter() - started, _worker_label())
            return state, failure

    def model_info(self, state: ScorerState) -> dict[str, Any]:
        """``GET /model``'s answer for ``state``: with ``champion_not_loaded``, the champion
        version that failed to load, while a model answers in its place."""
        info = state.info()
        failed = self._failed_version
        if failed is not None and state.version is not None:
            info["champion_not_loaded"] = failed
        return info

    def _note_failure(self, version: str) -> None:
        """Remember that ``version`` did not load, and when the poll may retry it."""
        if version == self._failed_version:
            self._retries += 1
        else:
            self._failed_version, self._retries = version, 0
        self._retry_at = time.monotonic() + self._retry_delay()

    def _retry_delay(self) -> float:
        """Seconds before the poll retries a version that failed to load: the poll interval,
        doubled at each new failure, at most :data:`_RETRY_MAX_SECONDS`."""
        first = max(self.reload_seconds, 1.0)
        return min(first * 2.0 ** min(self._retries, 30), max(first, _RETRY_MAX_SECONDS))

    async def wait_state(self) -> ScorerState:
        """The current state, waiting for the first load if needed."""
        state = self._state
        if state is None:  # looked at on the loop: a waiting request holds no thread
            deadline = time.monotonic() + min(_INITIAL_LOAD_WAIT_SECONDS, _TIMEOUT_SECONDS / 2)
            while self._state is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            state = self._state
            if state is None:  # the registry hangs: the rules answer meanwhile
                state = _loading_state()
        return state

    # -- access --------------------------------------------------------------------------------
    def deny(self, request: Request) -> Response | None:
        """None when the request may go on; else the 401/403 answer."""
        authorization = None
        for name, value in request.headers.raw:  # the received bytes, as ScoreEndpoint reads them
            if name == b"authorization":
                authorization = value
        return self.check_access(authorization, request.scope.get("server"))

    def check_access(self, authorization: bytes | None, server: Any) -> Response | None:
        """None when a request with this ``Authorization`` header, received on the ``server``
        address, may go on; else the 401/403 answer."""
        if self.keys:
            if authorized(authorization, self.keys):
                return None
            return _error(401, "missing or invalid API key",
                          [{"field": "authorization", "message": "expected 'Bearer <key>'",
                            "type": "auth"}], headers={"WWW-Authenticate": "Bearer"})
        if server and not is_loopback(str(server[0])):
            return _error(403, "API keys are required off loopback",
                          [{"field": "authorization", "message": "set LEADSCORE_API_KEYS",
                            "type": "auth"}])
        return None

    # -- scoring -------------------------------------------------------------------------------
    def featurise(self, cols: T.LeadColumns, state: ScorerState) -> dict[str, np.ndarray] | Response:
        """Feature columns of a request's columns (or a 4xx)."""
        try:
            return lead_feature_columns(cols.contacts, cols.created_ns, cols.events, cols.stages,
                                        as_of=cols.as_of, config=state.scorer.feature_config)
        except Exception as e:  # an input the feature code cannot take: say so, never a 500
            log.error("featurisation failed (%s)", type(e).__name__)
            return _error(422, "the leads could not be featurised",
                          [{"field": "leads", "message": type(e).__name__, "type": "features"}])

    def score_columns(self, cols: T.LeadColumns, mode: str, now: dt.datetime, state: ScorerState
                      ) -> bytes | Response:
        """Score a request's columns with ``state``; the JSON answer (or a 4xx)."""
        return _answer(self.scores_of(cols, mode, now, state), cols)

    def scores_of(self, cols: T.LeadColumns, mode: str, now: dt.datetime, state: ScorerState, *,
                  rules_on_failure: bool = True) -> list[dict[str, Any]] | Response | None:
        """The scores of the leads of ``cols`` (a 4xx when they cannot be featurised or
        scored): the model's, else (no model, or it failed) the rules'. With
        ``rules_on_failure`` False, a model that fails gives None instead of the rules'."""
        features = self.featurise(cols, state)
        if isinstance(features, Response):
            return features
        scored_at = _iso(now)
        scores = None
        if state.fast is not None:
            try:
                scores = state.fast.score_columns(features, cols.contact_ids, scored_at=scored_at,
                                                  reasons=_REASONS[mode])
            except Exception as e:
                log.error("model scoring failed (%s); the rule scorer answers", type(e).__name__)
        elif state.version is not None:
            try:  # a model without fast path: its DataFrame API
                scores = _score_frame(state.scorer, features, cols, scored_at, mode)
            except Exception as e:
                log.error("model scoring failed (%s); the rule scorer answers", type(e).__name__)
        if scores is None:
            if not rules_on_failure and state.version is not None:
                return None
            try:
                scores = _score_frame(state.rules, features, cols, scored_at, mode)
            except Exception as e:
                log.error("rule scoring failed (%s)", type(e).__name__)
                return _error(422, "the leads could not be scored",
                              [{"field": "leads", "message": type(e).__name__, "type": "scoring"}])
        _mark_not_eligible(scores, features["stage"])
        return scores

    async def scores_near_loop(self, cols: T.LeadColumns, mode: str, now: dt.datetime,
                               state: ScorerState, *, rules_on_failure: bool = True
                               ) -> list[dict[str, Any]] | Response | None:
        """:meth:`scores_of` of a small request: on the event loop, or in the reasons' thread
        when the model's reasons are slow (:func:`_explaining_is_slow`: LightGBM releases the
        GIL in its trees, so the loop serves other requests meanwhile)."""
        if state.fast is not None and state.offload_reasons and mode != "none":
            try:
                scored = asyncio.get_running_loop().run_in_executor(
                    self._trees, partial(self.scores_of, cols, mode, now, state,
                                         rules_on_failure=rules_on_failure))
            except RuntimeError:  # the executor is shut down (the service is stopping): inline
                pass
            else:
                return await scored
        return self.scores_of(cols, mode, now, state, rules_on_failure=rules_on_failure)

    async def score_batch(self, items: list[_Pending]) -> list[bytes | Response]:
        """The answers of small requests received together (:attr:`batcher`), in order.

        Requests under the same scorer with the same ``as_of`` (``now`` for all that omit
        it) and reasons mode are featurised and scored as one set of leads; each gets its own
        leads' scores back. A set that fails as a whole (one request's timestamps need
        pydantic, a lead created after ``as_of``, an input the features or the model cannot
        take) is answered request by request, so each gets the answer it gets alone.
        """
        now = _now()
        groups: dict[tuple[int, str | None, str], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((id(item.state), item.request.as_of, item.request.reasons), []).append(i)
        answers: list[bytes | Response] = [b""] * len(items)
        for members in groups.values():
            group = [items[i] for i in members]
            try:
                done = await self._score_group(group, now)
            except Exception as e:  # never seen; each request alone then
                log.error("scoring a batch failed (%s); its requests are scored one by one",
                          type(e).__name__)
                done = [await self._alone_guarded(item, now) for item in group]
            for i, answer in zip(members, done):
                answers[i] = answer
        return answers

    async def _score_group(self, group: list[_Pending], now: dt.datetime) -> list[bytes | Response]:
        if len(group) == 1:
            return [await self._alone_guarded(group[0], now)]
        state, mode = group[0].state, group[0].request.reasons
        cols = T.merged_columns([item.request for item in group], now=now)
        scores = None if cols is None else await self.scores_near_loop(
            cols, mode, now, state, rules_on_failure=False)
        if not isinstance(scores, list):  # one of them is to blame: each its own answer
            return [await self._alone_guarded(item, now) for item in group]
        as_of, start, out = _iso(cols.as_of), 0, []
        for item in group:
            end = start + len(item.request.leads)
            out.append(_dumps({"scores": scores[start:end], "as_of": as_of}))
            start = end
        return out

    async def _alone_guarded(self, item: _Pending, now: dt.datetime) -> bytes | Response:
        """:meth:`score_alone`, an unexpected failure a 500 for this request only (not for the
        others scored with it)."""
        try:
            return await self.score_alone(item, now)
        except Exception as e:
            log.error("scoring a request failed (%s)", type(e).__name__)
            return _error(500, "the request could not be scored",
                          [{"field": "leads", "message": type(e).__name__, "type": "internal"}])

    async def score_alone(self, item: _Pending, now: dt.datetime) -> bytes | Response:
        """The answer to one small request on its own (its 4xx names its own fields)."""
        decoded = _decode(item.body, now, item.request)
        if isinstance(decoded, Response):
            return decoded
        cols, mode = decoded
        return _answer(await self.scores_near_loop(cols, mode, now, item.state), cols)

    def score_rows(self, payload: dict[str, Any], state: ScorerState) -> bytes | Response:
        """Score validated CRM table rows (a table model's request) with
        :func:`training.crm.score_table`; the model's own rule scorer answers when it fails."""
        now = _now()
        scored_at = _iso(now)
        try:
            frame = state.table.frame(payload["rows"])
        except T.RequestError as e:
            return _error(422, "invalid request", e.errors)
        mode = payload.get("reasons", "all")
        scores = None
        if state.version is not None:
            try:
                scores = _score_rows_fast(state, frame, scored_at, mode) if state.fast is not None \
                    else _score_rows(state.scorer, frame, now, scored_at, mode, None)
            except Exception as e:
                log.error("model scoring failed (%s); the rule scorer answers", type(e).__name__)
        if scores is None:
            try:
                scores = _score_rows(state.rules, frame, now, scored_at, mode, state.dataset)
            except Exception as e:
                log.error("rule scoring failed (%s)", type(e).__name__)
                return _error(422, "the rows could not be scored",
                              [{"field": "rows", "message": type(e).__name__, "type": "scoring"}])
        return _dumps({"scores": scores, "as_of": scored_at})


def _answer(scores: list[dict[str, Any]] | Response, cols: T.LeadColumns) -> bytes | Response:
    """The JSON answer of a request's scores (or its 4xx)."""
    if isinstance(scores, Response):
        return scores
    return _dumps({"scores": scores, "as_of": _iso(cols.as_of)})


def _loading_state() -> ScorerState:
    from training.model import RulesOnly
    from training.rules import RuleScorer

    return ScorerState(RulesOnly(RuleScorer(), reason="model still loading"), None, _iso(_now()))


def _rules_of(scorer: Any, previous: Any) -> Any:
    """The rule scorer behind ``scorer`` (a LeadModel carries the rules it was trained with)."""
    from training.model import RulesOnly
    from training.rules import RuleScorer

    if isinstance(scorer, RulesOnly):
        return scorer
    rules = getattr(scorer, "rules", None)
    if rules is not None:
        return RulesOnly(rules, feature_config=scorer.feature_config, reason="model failed")
    return previous if previous is not None else RulesOnly(RuleScorer())


#: Why the nightly batch would leave a lead out, by its stage at the as-of date (the reasons
#: of :func:`serving.batch.eligibility`; created after as_of is a 422 here).
def _mark_not_eligible(scores: list[dict[str, Any]], stages: np.ndarray) -> None:
    """Add ``not_eligible`` to the scores of leads the nightly batch would not score (already
    converted, or disqualified, at the as-of date); eligible leads' scores stay as they are."""
    get = schema.NOT_SCORED_REASON.get
    for score, stage in zip(scores, stages.tolist()):
        why = get(stage)
        if why is not None:
            score["not_eligible"] = why


_REASONS: dict[str, Any] = {"all": True, "none": False, "top": "top"}
_TOP_BANDS = ("A", "B")  # as `leadscore score --reasons top`


def _score_frame(scorer: Any, features: dict[str, np.ndarray], cols: T.LeadColumns,
                 scored_at: str, mode: str) -> list[dict[str, Any]]:
    """Score through the scorer's DataFrame API (rules, or a model without fast path)."""
    import pandas as pd

    n = len(cols.contact_ids)
    frame = pd.DataFrame({"contact_id": np.array(cols.contact_ids, dtype=object),
                          "as_of": np.full(n, np.datetime64(cols.as_of, "us")),
                          **{c: features[c] for c in schema.FEATURES}})
    if mode == "top":
        first = scorer.score(frame, scored_at=pd.Timestamp(cols.as_of), reasons=False)
        mask: bool | np.ndarray = first["band"].isin(list(_TOP_BANDS)).to_numpy()
    else:
        mask = mode == "all"
    out = scorer.score(frame, scored_at=pd.Timestamp(cols.as_of), reasons=mask)
    return _outputs(out, scored_at)


def _score_rows(scorer: Any, frame: Any, now: dt.datetime, scored_at: str, mode: str,
                dataset: Any) -> list[dict[str, Any]]:
    """Score raw CRM table rows with :func:`training.crm.score_table` (``dataset``: the
    config that cleans them for a rule scorer)."""
    import pandas as pd

    from training.crm import score_table

    at = pd.Timestamp(now)
    if mode == "top":
        first = score_table(scorer, frame, dataset=dataset, scored_at=at, reasons=False)
        mask: bool | np.ndarray = first["band"].isin(list(_TOP_BANDS)).to_numpy()
        out = score_table(scorer, frame, dataset=dataset, scored_at=at, reasons=mask) \
            if mask.any() else first
    else:
        out = score_table(scorer, frame, dataset=dataset, scored_at=at, reasons=mode == "all")
    return _outputs(out, scored_at)


def _score_rows_fast(state: ScorerState, frame: Any, scored_at: str, mode: str
                     ) -> list[dict[str, Any]]:
    """:func:`_score_rows` through the fast scorer: the rows cleaned by the model's dataset
    config (:func:`training.crm.table_features`, as ``score_table``), then the same encoder,
    booster, calibrator, scale and reasons without pandas (same numbers, tested)."""
    from training.crm import table_column, table_features

    model = state.scorer
    feats = table_features(frame, state.dataset, [table_column(c) for c in model.categorical],
                           [table_column(c) for c in model.numeric])
    columns = {c: feats[c].to_numpy() for c in model.columns}
    ids = [str(i) for i in feats["contact_id"].tolist()]
    return state.fast.score_columns(columns, ids, scored_at=scored_at, reasons=_REASONS[mode])


def _outputs(out: Any, scored_at: str) -> list[dict[str, Any]]:
    """The output dicts of a scorer's output DataFrame (``features.schema.OUTPUT_COLUMNS``)."""
    return [
        {"contact_id": str(r.contact_id), "probability": float(r.probability), "score": int(r.score),
         "band": str(r.band), "reasons": _jsonable(r.reasons), "scorer": str(r.scorer),
         "model_name": str(r.model_name), "model_version": str(r.model_version),
         "scored_at": scored_at}
        for r in out.itertuples(index=False)
    ]


def _dumps(answer: dict[str, Any]) -> bytes:
    """Strict JSON of an answer; a non-finite number anywhere (a reason's value) becomes null
    rather than an invalid token or a 500 (msgspec writes them as null; ``json`` for a value
    msgspec does not know)."""
    try:
        return _encode(answer)
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return json.dumps(answer, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(answer), allow_nan=False).encode()


_encode = msgspec.json.Encoder().encode


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- leadscore serve -----------------------------------------------------------------------
def run_server(host: str, port: int, workdir: Path | str) -> None:
    """Start the BentoML service on ``host:port`` (blocks until stopped): ``leadscore serve``.

    The same as ``LEADSCORE_WORKDIR=workdir bentoml serve serving.service:LeadScoringService
    --host host --port port``.
    """
    check_bind_allowed(host, os.environ.get("LEADSCORE_API_KEYS", ""))
    os.environ["LEADSCORE_WORKDIR"] = str(Path(workdir).resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    LeadScoringService.serve_http(host=host, port=port)
