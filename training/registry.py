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
        reason = _why_unavailable(model_uri, e)
        log.warning("falling back to the rule scorer: %s", reason)
        return RulesOnly(rules or RuleScorer(), reason=reason)


def _why_unavailable(model_uri: str | None, error: Exception) -> str:
    """Why no model loads, for the user: a registry that answered that the name or alias is
    not there says which versions exist and how to promote one; other failures are named by
    kind only (and cost no further call to a store that may be down)."""
    from mlflow.exceptions import MlflowException

    uri = model_uri or f"models:/{REGISTERED_MODEL}@{CHAMPION}"
    missing = isinstance(error, MlflowException) and error.error_code in (
        "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model / no such alias
    if not (missing and uri.startswith("models:/") and "@" in uri):
        return f"model unavailable ({type(error).__name__})"
    name, alias = uri.removeprefix("models:/").split("@", 1)
    try:
        versions = sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'"))
    except Exception:  # noqa: BLE001 - the store stopped answering
        return f"model unavailable ({type(error).__name__})"
    if not versions:
        return f"no model registered as {name!r} yet (train one first)"
    listed = ", ".join(map(str, versions[-5:]))
    return (f"no version of {name!r} is {alias} (registered: version {listed}): "
            f"`leadscore promote N` makes version N {alias}, or score with --model models:/{name}/N")
