"""Optional compiled-model path: LightGBM trees as native code with lleaves.

``lleaves`` (optional extra; it needs ``llvmlite==0.44.*``) compiles a LightGBM model to a
native function that predicts several times faster than ``Booster.predict``. This module
uses it when it is installed and *proves* it on every model: the compiled predictions of a
probe matrix must equal the booster's within :data:`TOLERANCE`, else the booster is used.
Compiling takes tens of seconds for a few hundred trees, so the shared object is cached on
disk, keyed by a hash of the model text (``LEADSCORE_CACHE``, default ``~/.cache/leadscore``).

``LEADSCORE_COMPILED=0`` turns the path off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TOLERANCE = 1e-9


def available() -> bool:
    """Whether lleaves can be imported (and is not switched off)."""
    if os.environ.get("LEADSCORE_COMPILED", "1") == "0":
        return False
    try:
        import lleaves  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or llvmlite too new
        return False
    return True


def _cache_dir() -> Path:
    root = os.environ.get("LEADSCORE_CACHE") or Path.home() / ".cache" / "leadscore"
    path = Path(root) / "lleaves"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compile_booster(booster: Any) -> Any | None:
    """A compiled lleaves model of ``booster`` (cached on disk), or None when unavailable."""
    if not available():
        return None
    import lleaves

    text = booster.model_to_string()
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    cache = _cache_dir()
    model_file = cache / f"{key}.txt"
    so_file = cache / f"{key}.so"
    if not model_file.exists():
        with tempfile.NamedTemporaryFile("w", dir=cache, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, model_file)
    try:
        model = lleaves.Model(model_file=str(model_file))
        if so_file.exists():
            model.compile(cache=str(so_file))
        else:  # compile to a temporary name, then rename: concurrent processes never see half a file
            tmp = so_file.with_name(f"{so_file.name}.{os.getpid()}.tmp")
            model.compile(cache=str(tmp))
            os.replace(tmp, so_file)
    except Exception as e:  # noqa: BLE001 - any failure: the booster answers
        log.warning("lleaves could not compile the model (%s); using Booster.predict", type(e).__name__)
        return None
    return model


def verify(compiled: Any, booster: Any, X: np.ndarray, *, threads: int = 1) -> float:
    """Largest absolute difference between compiled and booster predictions on ``X``."""
    if len(X) == 0:
        return 0.0
    a = compiled.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=threads)
    b = booster.predict(X, num_threads=threads)
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def compiled_predict(model: Any, *, threads: int = 1) -> Callable[[np.ndarray], np.ndarray] | None:
    """``X -> probabilities`` through lleaves, equal to ``model.booster.predict`` within
    :data:`TOLERANCE`; None when lleaves is not installed (callers use the booster).

    The first call of the returned function checks the compiled predictions against the
    booster on up to 2,000 rows of its input; on a mismatch it logs a warning and from then
    on answers with the booster.
    """
    booster = getattr(model, "booster", None)
    if booster is None:
        return None
    compiled = compile_booster(booster)
    if compiled is None:
        return None
    state = {"checked": False, "ok": True}

    def predict(X: np.ndarray) -> np.ndarray:
        if not state["checked"]:
            probe = X[: min(len(X), 2000)]
            diff = verify(compiled, booster, probe, threads=threads)
            state["checked"] = len(probe) > 0
            state["ok"] = diff <= TOLERANCE
            if not state["ok"]:
                log.warning("compiled model differs from the booster by %.3g; using Booster.predict", diff)
        if state["ok"]:
            return np.asarray(compiled.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=threads))
        return booster.predict(X, num_threads=threads)

    return predict
