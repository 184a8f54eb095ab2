"""Load the scorer that should answer: the registry's champion, or the rule scorer."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from training.config import CHAMPION, REGISTERED_MODEL
from training.model import LeadModel, RulesOnly
from training.pyfunc import ARTIFACT
from training.rules import RuleScorer

log = logging.getLogger(__name__)


def resolve(model_uri: str | None = None) -> tuple[str, str, str]:
    """``(uri, name, version)`` of a ``models:/name@alias`` or ``models:/name/version`` URI."""
    uri = model_uri or f"models:/{REGISTERED_MODEL}@{CHAMPION}"
    if not uri.startswith("models:/"):
        return uri, "lead-scoring", "local"
    ref = uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, version = ref.rsplit("/", 1)
        client.get_model_version(name, version)
    return f"models:/{name}/{version}", name, str(version)


def load_model(model_uri: str | None = None, *, num_threads: int = 0) -> LeadModel:
    """Download and load a logged lead model (raises when absent or unreadable)."""
    uri, name, version = resolve(model_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    model = LeadModel.load(local / "artifacts" / ARTIFACT, num_threads=num_threads)
    model.model_name, model.model_version = name, version
    return model


def load_scorer(model_uri: str | None = None, *, num_threads: int = 0,
                rules: RuleScorer | None = None) -> LeadModel | RulesOnly:
    """The champion (or ``model_uri``); the rule scorer when there is none or it fails to load.

    The failure is logged by kind only: no personal data, no raw input.
    """
    try:
        return load_model(model_uri, num_threads=num_threads)
    except Exception as e:  # any failure to load means: rules answer
        reason = f"model unavailable ({type(e).__name__})"
        log.warning("falling back to the rule scorer: %s", reason)
        return RulesOnly(rules or RuleScorer(), reason=reason)
