"""A data directory read, validated and cleaned: the base every command starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.hygiene import clean
from features.io import read_tables, rejects_summary


@dataclass
class Base:
    """Clean contacts, events and stage changes, with every rejected row and the data's end."""

    contacts: pd.DataFrame
    events: pd.DataFrame
    stages: pd.DataFrame
    rejects: pd.DataFrame
    until: pd.Timestamp
    truth: pd.DataFrame | None = None

    def rejects_by_reason(self) -> pd.DataFrame:
        return rejects_summary(self.rejects)


def data_end(stages: pd.DataFrame, events: pd.DataFrame) -> pd.Timestamp:
    """The data's end when no export date is given: the last recorded stage change.

    Stage changes come from the CRM and carry no tracking-pixel clock skew, so they are a
    safer end than the latest event; pass the export date explicitly when it is known.
    """
    for frame in (stages, events):
        if len(frame):
            return pd.Timestamp(frame["ts"].max())
    return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()


def load_base(data_dir: Path | str, *, until: pd.Timestamp | str | None = None) -> Base:
    """Read ``contacts``, ``events`` and ``stages`` (Parquet or CSV), validate and clean them.

    Events and stage changes after ``until`` are rejected as future timestamps.
    """
    data_dir = Path(data_dir)
    tables = read_tables(data_dir)
    end = pd.Timestamp(until) if until is not None else data_end(tables.stages, tables.events)
    cleaned = clean(tables, export_date=end)
    rejects = pd.concat([tables.rejects, cleaned.rejects], ignore_index=True) \
        if cleaned.rejects is not tables.rejects else cleaned.rejects
    return Base(cleaned.contacts, cleaned.events, cleaned.stages, rejects, end, read_truth(data_dir))


def read_truth(data_dir: Path | str, *, since: pd.Timestamp | None = None) -> pd.DataFrame | None:
    """The synthetic generator's ``truth`` table (``contact_id, as_of, p_convert_90d``) if the
    directory has one, from as-of date ``since`` on (the test window: a fraction of the file)."""
    for suffix in (".parquet", ".csv"):
        path = Path(data_dir) / f"truth{suffix}"
        if not path.exists():
            continue
        if suffix == ".csv":
            truth = pd.read_csv(path, parse_dates=["as_of"])
            return truth if since is None else truth[truth["as_of"] >= since].reset_index(drop=True)
        filters = None if since is None else [("as_of", ">=", pd.Timestamp(since).to_pydatetime())]
        return pd.read_parquet(path, filters=filters)
    return None
