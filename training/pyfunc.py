"""The MLflow pyfunc flavour of the lead scorer: raw contacts + events in, scores out.

``mlflow.pyfunc.load_model("models:/lead-scoring@champion").predict(frame)`` takes one row
per contact with the contact columns, an ``events`` column (a JSON list of events, or a
list of dicts), optionally ``stages`` (same form) and ``as_of``, and answers the design
brief's outputs with ``reasons`` as a JSON string.

A model trained on a CRM export (``leadscore train --table``) takes raw rows of that table
instead (its id column and feature columns, as exported) and cleans them with the dataset
config it was trained with (:func:`training.crm.score_table`).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from features.build import features_for_leads
from features.schema import CONTACTS

ARTIFACT = "lead_model"


_MLFLOW_TYPE = {"id": "string", "str": "string", "float": "double", "int": "long",
                "bool": "boolean", "timestamp": "string"}


def signature(model: Any = None) -> ModelSignature:
    """Input: the contact columns of the schema (only ``contact_id`` required), ``events`` and
    ``stages`` as JSON strings, ``as_of``. Output: the design brief's columns.

    For a model trained on a CRM table (``model.dataset`` set): the table's id column
    (required) and its feature columns (optional), of any type: rows arrive as exported
    (numbers as text, decimal commas, placeholders) and the stored dataset config types them.
    """
    dataset = getattr(model, "dataset", None)
    if dataset:
        from mlflow.types.schema import AnyType

        from training.crm import table_column

        inputs = ([ColSpec(AnyType(), dataset["id_column"], required=True)]
                  if dataset.get("id_column") else [])
        inputs += [ColSpec(AnyType(), table_column(c), required=False) for c in model.columns]
    else:
        inputs = [ColSpec(_MLFLOW_TYPE[kind], name, required=name == "contact_id")
                  for name, kind in CONTACTS.columns.items()]
        inputs += [ColSpec("string", c, required=False) for c in ("events", "stages", "as_of")]
    outputs = [ColSpec(t, n) for n, t in (
        ("contact_id", "string"), ("probability", "double"), ("score", "long"), ("band", "string"),
        ("reasons", "string"), ("scorer", "string"), ("model_name", "string"),
        ("model_version", "string"), ("scored_at", "string"))]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _records(value: Any) -> list[dict[str, Any]]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        return json.loads(value) if value.strip() else []
    return list(value)


def raw_frame_to_leads(frame: pd.DataFrame) -> tuple[list[dict], list[dict], list[dict]]:
    """Split a raw input frame into contact, event and stage records."""
    contact_cols = [c for c in frame.columns if c in CONTACTS.columns]
    contacts = frame[contact_cols].astype(object).where(frame[contact_cols].notna(), None).to_dict("records")
    events, stages = [], []
    for contact, ev, st in zip(contacts, frame.get("events", [None] * len(frame)),
                               frame.get("stages", [None] * len(frame))):
        events += [dict(e, contact_id=contact["contact_id"]) for e in _records(ev)]
        stages += [dict(s, contact_id=contact["contact_id"]) for s in _records(st)]
    return contacts, events, stages


class LeadScoringPyfunc(mlflow.pyfunc.PythonModel):
    """Loads a :class:`training.model.LeadModel` from its artifact directory."""

    def load_context(self, context) -> None:
        from training.model import LeadModel

        self.model = LeadModel.load(context.artifacts[ARTIFACT], num_threads=1)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if getattr(self.model, "dataset", None):  # a CRM-table model: raw table rows in
            from training.crm import score_table

            out = score_table(self.model, model_input)
            out["reasons"] = [json.dumps(r) for r in out["reasons"]]
            out["scored_at"] = out["scored_at"].astype(str)
            return out
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        parts = []
        for as_of, rows in _by_as_of(model_input.reset_index(drop=True), now):
            contacts, events, stages = raw_frame_to_leads(rows)
            feats = features_for_leads(contacts, events, stages, as_of=as_of, config=self.model.feature_config)
            parts.append(self.model.score(feats, scored_at=now).set_axis(rows.index))
        out = pd.concat(parts).sort_index().reset_index(drop=True)
        out["reasons"] = [json.dumps(r) for r in out["reasons"]]
        out["scored_at"] = out["scored_at"].astype(str)
        return out


def _by_as_of(frame: pd.DataFrame, now: pd.Timestamp) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
    """The rows of ``frame`` grouped by their own ``as_of`` (UTC, naive; ``now`` when absent)."""
    if "as_of" not in frame or frame.empty:
        return [(now, frame)]
    as_of = pd.to_datetime(frame["as_of"], utc=True, format="mixed").dt.tz_localize(None).fillna(now)
    return [(pd.Timestamp(t), frame[as_of == t]) for t in as_of.unique()]
