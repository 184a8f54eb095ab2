"""Point-in-time feature tables: one code path for training sets, nightly batches and one lead.

A :class:`Snapshotter` encodes contacts, events and stage changes once; ``features_at(T)``
then builds the feature row of every contact as it was known at ``T`` (only events and stage
changes with timestamps ``<= T``), and ``labels_at(T)`` tells who reached opportunity within
the horizon after ``T``. :func:`build_features` (batch), :func:`build_training_set`
(many as-of dates) and :func:`features_for_leads` (the HTTP service) all go through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features import schema
from features.config import FeatureConfig
from features.engagement import encode_events, engagement_features
from features.firmographics import fit_features
from features.lifecycle import converted_within, encode_stages, lifecycle_features, scorable

_NS_PER_DAY = 86_400 * 10**9


def with_hygiene_columns(contacts: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Add ``email_quality`` and ``has_phone`` where hygiene has not added them yet."""
    out = contacts
    if "email_quality" not in out:
        from features.hygiene import email_quality

        emails = out["email"] if "email" in out else pd.Series([None] * len(out), index=out.index)
        out = out.assign(email_quality=email_quality(emails).to_numpy())
    if "has_phone" not in out:
        from features.hygiene import phone_valid

        phones = out["phone"] if "phone" in out else pd.Series([None] * len(out), index=out.index)
        countries = out["country"] if "country" in out else None
        valid = phone_valid(phones, countries, default_region=config.default_phone_region)
        out = out.assign(has_phone=valid.to_numpy().astype("int8"))
    return out


class Snapshotter:
    """Contacts with their history, encoded once, viewed at any as-of date.

    Parameters
    ----------
    contacts, events, stages : DataFrame
        Clean tables (one row per ``contact_id`` in ``contacts``).
    config : FeatureConfig
        Half-life and horizon.
    """

    def __init__(
        self,
        contacts: pd.DataFrame,
        events: pd.DataFrame,
        stages: pd.DataFrame,
        config: FeatureConfig | None = None,
    ) -> None:
        self.config = config or FeatureConfig()
        contacts = with_hygiene_columns(contacts.reset_index(drop=True), self.config)
        self.ids = pd.Index(contacts["contact_id"].astype("str"))
        if not self.ids.is_unique:
            raise ValueError("contacts.contact_id: duplicate ids; run hygiene (deduplication) first")
        self.created_ns = (
            pd.to_datetime(contacts["created_at"]).to_numpy(dtype="datetime64[ns]").view("int64")
        )
        self.fit = fit_features(contacts)
        self.events = encode_events(events, self.ids)
        self.stages = encode_stages(stages, self.ids)

    def features_at(self, as_of: pd.Timestamp | str, *, eligible_only: bool = True) -> pd.DataFrame:
        """Feature table at ``as_of``: ``contact_id``, ``as_of`` and :data:`schema.FEATURES`.

        With ``eligible_only`` (the default) only contacts created by ``as_of`` and not yet
        converted nor disqualified are kept, as for training and nightly scoring.
        """
        t = pd.Timestamp(as_of).as_unit("ns")
        age = (t.value - self.created_ns) / _NS_PER_DAY
        life = lifecycle_features(self.stages, t)
        eng = engagement_features(self.events, t, half_life_days=self.config.half_life_days)
        days_in_stage = np.where(np.isnan(life["days_in_stage"]), age, life["days_in_stage"])
        columns: dict[str, Any] = {
            "contact_id": self.ids.to_numpy(dtype=object),
            "as_of": np.full(len(self.ids), t.as_unit("us").to_datetime64()),
            **self.fit,
            "contact_age_days": age,
            "stage": life["stage"],
            "days_in_stage": days_in_stage,
            "stage_regressions": life["stage_regressions"],
            **eng,
        }
        if eligible_only:
            keep = (age >= 0) & scorable(life["stage_code"])
            columns = {k: v[keep] for k, v in columns.items()}
        return pd.DataFrame({c: columns[c] for c in (*schema.KEY_COLUMNS, *schema.FEATURES)})

    def labels_at(self, as_of: pd.Timestamp | str, contact_ids: pd.Series) -> np.ndarray:
        """Label of the given contacts: reached opportunity within the horizon after ``as_of``."""
        hit = converted_within(self.stages, pd.Timestamp(as_of), self.config.horizon_days)
        return hit[self.ids.get_indexer(contact_ids)].astype("int8")


def build_features(
    contacts: pd.DataFrame,
    events: pd.DataFrame,
    stages: pd.DataFrame,
    as_of: pd.Timestamp | str,
    *,
    config: FeatureConfig | None = None,
    eligible_only: bool = True,
) -> pd.DataFrame:
    """The feature table of a base at one as-of date (the nightly batch's path)."""
    return Snapshotter(contacts, events, stages, config).features_at(as_of, eligible_only=eligible_only)


def monthly_as_of_dates(
    start: pd.Timestamp, end: pd.Timestamp, *, horizon_days: int, min_history_days: int = 60
) -> list[pd.Timestamp]:
    """First-of-month dates with ``min_history_days`` of history before and a full horizon after."""
    first = (pd.Timestamp(start) + pd.Timedelta(days=min_history_days)).to_period("M").to_timestamp()
    last = pd.Timestamp(end) - pd.Timedelta(days=horizon_days)
    return list(pd.date_range(first + pd.offsets.MonthBegin(0), last, freq="MS"))


def build_training_set(
    contacts: pd.DataFrame,
    events: pd.DataFrame,
    stages: pd.DataFrame,
    as_of_dates: Iterable[pd.Timestamp | str],
    *,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """Stacked point-in-time snapshots with the label :data:`schema.LABEL`, one row per
    eligible (contact, as_of)."""
    snap = Snapshotter(contacts, events, stages, config)
    parts = []
    for t in as_of_dates:
        frame = snap.features_at(t)
        frame[schema.LABEL] = snap.labels_at(t, frame["contact_id"])
        parts.append(frame)
    if not parts:
        raise ValueError("no as-of dates: the history is shorter than the horizon")
    return pd.concat(parts, ignore_index=True)


def features_for_leads(
    contacts: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]] = (),
    stages: Sequence[dict[str, Any]] = (),
    *,
    as_of: pd.Timestamp | str,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """Feature rows for leads given as plain records (the HTTP service's path), in order.

    ``events`` and ``stages`` carry the ``contact_id`` they belong to. Every lead is
    featurised at ``as_of`` whatever its stage, through exactly the batch code path; a lead
    without ``created_at`` is taken as created at ``as_of``.
    """
    frame = pd.DataFrame.from_records(list(contacts))
    if "created_at" not in frame:
        frame["created_at"] = pd.NaT
    frame["created_at"] = pd.to_datetime(frame["created_at"]).fillna(pd.Timestamp(as_of))
    ev = pd.DataFrame.from_records(list(events), columns=_record_columns(events, schema.EVENTS))
    st = pd.DataFrame.from_records(list(stages), columns=_record_columns(stages, schema.STAGE_CHANGES))
    return Snapshotter(frame, ev, st, config).features_at(as_of, eligible_only=False)


def _record_columns(records: Sequence[dict[str, Any]], table: schema.TableSchema) -> list[str]:
    seen = dict.fromkeys(table.required)
    for r in records:
        seen.update(dict.fromkeys(r))
    return list(seen)
