"""The HTTP scoring service: a BentoML service that CRMs call with a few leads at a time.

Start it with ``leadscore serve [--host H] [--port P] [--workdir DIR]`` or
``bentoml serve serving.service:LeadScoringService --host 127.0.0.1 --port 3000`` (the
embedded MLflow store is then looked up in ``LEADSCORE_WORKDIR``, default the current
directory, unless ``MLFLOW_TRACKING_URI`` is set). ``bentoml build`` reads ``bentofile.yaml``.

Endpoints
---------
``POST /score``
    ``{"leads": [{"contact": {...}, "events": [...], "stages": [...]}], "as_of": ...,
    "reasons": "all"|"top"|"none"}`` -> ``{"scores": [...], "as_of": ...}`` in request order
    (types in :mod:`serving.api_types`). Bad input is a 4xx naming the field.
``GET /model``
    Which scorer answers (name, version, trained_at, metrics, band thresholds).
``POST /reload``
    Load the registry's current champion now (it is also polled every
    ``LEADSCORE_RELOAD_SECONDS``, default 30; 0 turns the poll off).
``GET /openapi.json``
    The OpenAPI 3.1 document of these endpoints (request and response schemas).
``GET /healthz``, ``/livez``, ``/readyz``
    BentoML's: alive; ready once a scorer (model or rules) is loaded.

Design (measured, see ``benchmarks/bench_serving.py``)
------------------------------------------------------
* The API is a small Starlette app mounted with ``@bentoml.asgi_app``: BentoML's typed
  ``@bentoml.api`` IO layer rebuilds pydantic schemas per request, and FastAPI's request
  handling and BentoML's tracing middleware (which these paths skip) cost more than the
  scoring of a lead. The body is validated from raw bytes in one pydantic pass into plain
  dicts (:data:`serving.api_types.SCORE_REQUEST`), turned into column arrays
  (:func:`serving.api_types.to_columns`), featurised by the batch kernels
  (:func:`features.build.lead_feature_columns`) and scored by
  :class:`training.fastpath.FastScorer` (the same numbers as ``LeadModel.score``, tested);
  the answer is written with ``json.dumps``.
* A single lead's trees (LightGBM's single-row C API; ``pred_contrib`` for the reasons is
  most of a request's CPU) run in a worker thread with the GIL released, so the event loop
  parses and featurises the next request meanwhile. Requests of more than 20 leads are
  scored in a thread; smaller ones inline.
* Never down: no registered champion, an artifact that does not load, or a prediction
  that raises -> the rule scorer answers with ``scorer: "rules"``; the event is logged by
  kind only (no contact data, no request body). A champion promoted later is picked up by
  the alias poll or ``POST /reload``, without restart.
* Access: ``LEADSCORE_API_KEYS`` (comma-separated) turns on ``Authorization: Bearer``
  checks (constant-time compare) for ``/score``, ``/model`` and ``/reload``; without keys
  the service only starts on, and only answers on, a loopback address.
* LightGBM runs with ``num_threads=1``; one worker process (``LEADSCORE_WORKERS``: more did
  not help on 2 cores). BentoML's access log and metrics are off by default
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
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from features.build import lead_feature_columns
from serving import api_types as T

log = logging.getLogger("leadscore.service")

SERVICE_NAME = "leadscore"
_JSON = "application/json"
_RELOAD_DEFAULT_SECONDS = 30.0
_INITIAL_LOAD_WAIT_SECONDS = 60.0
_INLINE_MAX_LEADS = 20  # larger requests are scored in a worker thread, off the event loop


# -- access ------------------------------------------------------------------------------------
def parse_api_keys(value: str | None) -> tuple[bytes, ...]:
    """API keys from ``LEADSCORE_API_KEYS`` (comma-separated, blanks ignored)."""
    return tuple(k.strip().encode() for k in (value or "").split(",") if k.strip())


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


def authorized(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """Whether an ``Authorization`` header carries one of ``keys`` (constant-time compare,
    every key compared)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[7:].strip().encode()
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


# -- scorer state ------------------------------------------------------------------------------
class ScorerState:
    """The scorer that answers, with its fast path and the rule scorer as the fallback."""

    def __init__(self, scorer: Any, rules: Any, loaded_at: str) -> None:
        from training.model import RulesOnly

        self.scorer = scorer
        self.rules = rules if rules is not None else scorer
        self.loaded_at = loaded_at
        self.fast = None
        if not isinstance(scorer, RulesOnly):
            try:
                from training.fastpath import FastScorer

                self.fast = FastScorer(scorer)
            except NotImplementedError as e:
                log.warning("no fast path for this model (%s); using LeadModel.score", e)
        self.version = None if isinstance(scorer, RulesOnly) else str(scorer.model_version)
        self.failed_version: str | None = None  # a newer champion that did not load

    def info(self) -> dict[str, Any]:
        out = {**_jsonable(self.scorer.info()), "loaded_at": self.loaded_at}
        if self.failed_version is not None:
            out["champion_not_loaded"] = self.failed_version
        return out


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

    def ref(schema: dict[str, Any]) -> dict[str, Any]:
        schema = dict(schema)
        components.update(schema.pop("$defs", {}))
        return schema

    def model_schema(model: Any) -> dict[str, Any]:
        s = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(s.pop("$defs", {}))
        components[model.__name__] = s
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    request = ref(T.SCORE_REQUEST.json_schema(ref_template="#/components/schemas/{model}"))
    error = model_schema(T.ErrorResponse)

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {_JSON: {"schema": schema}}}

    auth = {"401": answer("Missing or wrong API key", error),
            "403": answer("API keys required off loopback", error)}
    info = model_schema(T.ModelInfo)
    paths = {
        "/score": {"post": {
            "operationId": "score", "summary": "Score 1 to 1,000 leads",
            "description": "Probability, score, band and reasons of each lead, in request order.",
            "requestBody": {"required": True, "content": {_JSON: {"schema": request}}},
            "responses": {"200": answer("Scores in request order", model_schema(T.ScoreResponse)),
                          "400": answer("The body is not JSON", error),
                          "413": answer("Body too large", error),
                          "422": answer("Invalid request (fields named in detail)", error), **auth},
        }},
        "/model": {"get": {"operationId": "model", "summary": "The scorer that answers",
                           "responses": {"200": answer("Scorer, version, thresholds", info), **auth}}},
        "/reload": {"post": {"operationId": "reload", "summary": "Load the registry's champion now",
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


def _validation_details(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors(include_url=False, include_context=False, include_input=False)[:20]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        message = e["msg"]
        if e["type"] == "string_pattern_mismatch":  # the only patterns are the timestamps'
            message = "expected an ISO 8601 timestamp such as 2026-03-01T09:30:00Z"
        out.append({"field": loc, "message": message, "type": e["type"]})
    return out


async def score(request: Request) -> Response:
    """``POST /score``: probability, score, band and reasons of each lead, in request order."""
    svc = _service()
    denied = svc.deny(request)
    if denied is not None:
        return denied
    body = await _read_body(request, svc.max_body)
    if isinstance(body, Response):
        return body
    try:
        payload = T.SCORE_REQUEST.validate_json(body)
    except ValidationError as e:
        details = _validation_details(e)
        if any(d["type"] == "json_invalid" for d in details):
            return _error(400, "the body is not valid JSON",
                          [{"field": "body", "message": d["message"], "type": d["type"]}
                           for d in details])
        return _error(422, "invalid request", details)
    state = svc._state or await svc.wait_state()
    n = len(payload["leads"])
    if n == 1:
        result = await svc.score_one(payload, state)
    elif n <= _INLINE_MAX_LEADS:
        result = svc.score_payload(payload, state)
    else:
        result = await asyncio.to_thread(svc.score_payload, payload, state)
    if isinstance(result, Response):
        return result
    return Response(result, media_type=_JSON)


async def model(request: Request) -> Response:
    """``GET /model``: name, version, training date, metrics and band thresholds."""
    svc = _service()
    denied = svc.deny(request)
    if denied is not None:
        return denied
    state = await svc.wait_state()
    return Response(json.dumps(state.info()).encode(), media_type=_JSON)


async def reload(request: Request) -> Response:
    """``POST /reload``: load the registry's champion now (no restart needed)."""
    svc = _service()
    denied = svc.deny(request)
    if denied is not None:
        return denied
    await svc.wait_state()
    state = await asyncio.to_thread(svc.reload, force=True)
    return Response(json.dumps(state.info()).encode(), media_type=_JSON)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``."""
    return Response(_OPENAPI_JSON(), media_type=_JSON)


@lru_cache(maxsize=1)
def _OPENAPI_JSON() -> bytes:
    return json.dumps(openapi_document()).encode()


def _service() -> LeadScoringService:
    return bentoml.get_current_service()


api = Starlette(routes=[
    Route("/score", score, methods=["POST"]),
    Route("/model", model, methods=["GET"]),
    Route("/reload", reload, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
])


async def _read_body(request: Request, limit: int) -> bytes | Response:
    """The body, or a 413 as soon as it exceeds ``limit`` bytes."""
    too_large = _error(413, f"body larger than {limit} bytes",
                       [{"field": "body", "message": f"at most {limit} bytes", "type": "too_large"}])
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                return too_large
        except ValueError:
            return _error(400, "invalid Content-Length header",
                          [{"field": "content-length", "message": "not an integer", "type": "header"}])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# -- the BentoML service -----------------------------------------------------------------------
@bentoml.service(
    name=SERVICE_NAME,
    workers=int(os.environ.get("LEADSCORE_WORKERS", "1")),
    traffic={"timeout": 60},
    http={"host": "127.0.0.1", "port": 3000},
    metrics={"enabled": os.environ.get("LEADSCORE_METRICS", "0") == "1"},
    logging={"access": {"enabled": os.environ.get("LEADSCORE_ACCESS_LOG", "0") == "1"}},
    tracing={"excluded_urls": [] if os.environ.get("LEADSCORE_TRACING", "0") == "1"
             else ["/score", "/model", "/reload", "/openapi.json"]},
)
@bentoml.asgi_app(api, path="/")
class LeadScoringService:
    """Lead scoring over HTTP: the MLflow champion of ``lead-scoring``, the rules as fallback.

    Configuration (environment): ``LEADSCORE_WORKDIR`` (embedded MLflow store, default ``.``;
    ``MLFLOW_TRACKING_URI`` wins), ``LEADSCORE_MODEL_URI`` (default the champion),
    ``LEADSCORE_API_KEYS``, ``LEADSCORE_RELOAD_SECONDS`` (default 30, 0: no poll),
    ``LEADSCORE_MAX_BODY_BYTES``, ``LEADSCORE_WORKERS``.
    """

    def __init__(self) -> None:
        _setup_logging()
        self.keys = parse_api_keys(os.environ.get("LEADSCORE_API_KEYS"))
        for host in _listening_hosts():
            check_bind_allowed(host, os.environ.get("LEADSCORE_API_KEYS", ""))
        self.workdir = Path(os.environ.get("LEADSCORE_WORKDIR", "."))
        self.model_uri = os.environ.get("LEADSCORE_MODEL_URI") or None
        self.max_body = int(_env_float("LEADSCORE_MAX_BODY_BYTES", T.MAX_BODY_BYTES))
        self.reload_seconds = _env_float("LEADSCORE_RELOAD_SECONDS", _RELOAD_DEFAULT_SECONDS)
        self._state: ScorerState | None = None
        self._failed_version: str | None = None
        self._reload_lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        # the trees of single-lead requests: LightGBM releases the GIL, the event loop goes on;
        # a short GIL switch interval hands their result back quickly (tail latency)
        sys.setswitchinterval(_env_float("LEADSCORE_SWITCH_INTERVAL", 0.001))
        self._trees = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadscore-trees")
        threading.Thread(target=self._background, name="leadscore-loader", daemon=True).start()

    # -- readiness and loading ---------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self._state is not None

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
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
        while self.reload_seconds > 0 and not self._stop.wait(self.reload_seconds):
            try:
                self.reload(force=False)
            except Exception as e:  # never let the poll die
                log.warning("champion poll failed (%s)", type(e).__name__)

    def _champion_version(self) -> str | None:
        from training.registry import resolve

        try:
            return resolve(self.model_uri)[2]
        except Exception:
            return None

    def reload(self, *, force: bool) -> ScorerState:
        """Load the champion when its version changed (always with ``force``); swap atomically.

        A loaded model is never replaced by the rules: when the registry cannot be read, or a
        new champion's artifact does not load, the model that answers keeps answering (the
        failure is logged and shown by ``GET /model``). Without any model, the rules answer.
        """
        from training.registry import load_scorer
        from training.rules import RuleScorer

        with self._reload_lock:
            current = self._state
            serving_model = current is not None and current.version is not None
            version = self._champion_version()
            if not force and current is not None:
                if version is None or version == current.version or version == self._failed_version:
                    return current  # no (readable) champion, the same one, or one that failed
            started = time.perf_counter()
            rules = current.rules if current is not None else None
            scorer = load_scorer(self.model_uri, num_threads=1,
                                 rules=rules.rules if rules is not None else RuleScorer())
            state = ScorerState(scorer, None, _iso(_now()))
            if state.version is None and version is not None:
                self._failed_version = version
                if serving_model:
                    log.warning("champion version %s could not be loaded; version %s keeps "
                                "answering", version, current.version)
                    current.failed_version = version
                    return current
            elif state.version is not None:
                self._failed_version = None
            state.rules = _rules_of(scorer, rules)
            self._state = state
            info = state.info()
            log.info("scorer loaded: %s %s version %s in %.1fs", info["scorer"], info["name"],
                     info["version"], time.perf_counter() - started)
            return state

    async def wait_state(self) -> ScorerState:
        """The current state, waiting for the first load if needed."""
        state = self._state
        if state is None:
            await asyncio.to_thread(self._ready.wait, _INITIAL_LOAD_WAIT_SECONDS)
            state = self._state
            if state is None:  # the registry hangs: the rules answer meanwhile
                state = _loading_state()
        return state

    # -- access --------------------------------------------------------------------------------
    def deny(self, request: Request) -> Response | None:
        """None when the request may go on; else the 401/403 answer."""
        if self.keys:
            if authorized(request.headers.get("authorization"), self.keys):
                return None
            return _error(401, "missing or invalid API key",
                          [{"field": "authorization", "message": "expected 'Bearer <key>'",
                            "type": "auth"}], headers={"WWW-Authenticate": "Bearer"})
        server = request.scope.get("server")
        if server and not is_loopback(str(server[0])):
            return _error(403, "API keys are required off loopback",
                          [{"field": "authorization", "message": "set LEADSCORE_API_KEYS",
                            "type": "auth"}])
        return None

    # -- scoring -------------------------------------------------------------------------------
    def featurise(self, payload: dict[str, Any], state: ScorerState
                  ) -> tuple[T.LeadColumns, dict[str, np.ndarray], dt.datetime] | Response:
        """Columns and feature columns of a validated request (or a 4xx)."""
        now = _now()
        try:
            cols = T.to_columns(payload, now=now)
        except T.RequestError as e:
            return _error(422, "invalid request", e.errors)
        try:
            features = lead_feature_columns(cols.contacts, cols.created_ns, cols.events, cols.stages,
                                            as_of=cols.as_of, config=state.scorer.feature_config)
        except Exception as e:  # an input the feature code cannot take: say so, never a 500
            log.error("featurisation failed (%s)", type(e).__name__)
            return _error(422, "the leads could not be featurised",
                          [{"field": "leads", "message": type(e).__name__, "type": "features"}])
        return cols, features, now

    def score_payload(self, payload: dict[str, Any], state: ScorerState) -> bytes | Response:
        """Score a validated request with ``state``; the JSON answer (or a 4xx)."""
        prepared = self.featurise(payload, state)
        if isinstance(prepared, Response):
            return prepared
        cols, features, now = prepared
        mode = payload.get("reasons", "all")
        scores = None
        if state.fast is not None:
            try:
                scores = state.fast.score_columns(features, cols.contact_ids, scored_at=_iso(now),
                                                  reasons=_REASONS[mode])
            except Exception as e:
                log.error("model scoring failed (%s); the rule scorer answers", type(e).__name__)
        return self.answer(state, cols, features, now, mode, scores)

    async def score_one(self, payload: dict[str, Any], state: ScorerState) -> bytes | Response:
        """One lead: Python work on the event loop, the trees (C, GIL released) in a thread,
        so the loop serves the next request meanwhile."""
        prepared = self.featurise(payload, state)
        if isinstance(prepared, Response):
            return prepared
        cols, features, now = prepared
        mode = payload.get("reasons", "all")
        fast, scores = state.fast, None
        if fast is not None:
            try:
                row = fast.encoder.row(features)
                loop = asyncio.get_running_loop()
                if mode == "all":
                    raw, contributions = await loop.run_in_executor(
                        self._trees, fast.predict_and_explain_one, row)
                else:
                    raw, contributions = fast.predict_one(row), None
                    if fast.explains(raw, _REASONS[mode]):
                        contributions = await loop.run_in_executor(
                            self._trees, fast.contributions_one, row)
                scores = [fast.finish_one(features, cols.contact_ids[0], _iso(now), raw,
                                          contributions)]
            except Exception as e:
                log.error("model scoring failed (%s); the rule scorer answers", type(e).__name__)
        return self.answer(state, cols, features, now, mode, scores)

    def answer(self, state: ScorerState, cols: T.LeadColumns, features: dict[str, np.ndarray],
               now: dt.datetime, mode: str, scores: list[dict[str, Any]] | None) -> bytes | Response:
        """The JSON answer; the model's scores, else (no model, or it failed) the rules'."""
        scored_at = _iso(now)
        if scores is None and state.fast is None and state.version is not None:
            try:  # a model without fast path: its DataFrame API
                scores = _score_frame(state.scorer, features, cols, scored_at, mode)
            except Exception as e:
                log.error("model scoring failed (%s); the rule scorer answers", type(e).__name__)
        if scores is None:
            try:
                scores = _score_frame(state.rules, features, cols, scored_at, mode)
            except Exception as e:
                log.error("rule scoring failed (%s)", type(e).__name__)
                return _error(422, "the leads could not be scored",
                              [{"field": "leads", "message": type(e).__name__, "type": "scoring"}])
        return json.dumps({"scores": scores, "as_of": _iso(cols.as_of)}, allow_nan=False).encode()


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


_REASONS: dict[str, Any] = {"all": True, "none": False, "top": "top"}
_TOP_BANDS = ("A", "B")  # as `leadscore score --reasons top`


def _score_frame(scorer: Any, features: dict[str, np.ndarray], cols: T.LeadColumns,
                 scored_at: str, mode: str) -> list[dict[str, Any]]:
    """Score through the scorer's DataFrame API (rules, or a model without fast path)."""
    import pandas as pd

    from features import schema

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
    return [
        {"contact_id": str(r.contact_id), "probability": float(r.probability), "score": int(r.score),
         "band": str(r.band), "reasons": _jsonable(r.reasons), "scorer": str(r.scorer),
         "model_name": str(r.model_name), "model_version": str(r.model_version),
         "scored_at": scored_at}
        for r in out.itertuples(index=False)
    ]


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
