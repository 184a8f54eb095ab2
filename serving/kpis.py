"""Funnel KPIs: pure, vectorised functions from the canonical tables to small tables.

Every function takes already-validated DataFrames (see :mod:`features.schema`) and returns
a DataFrame; none does I/O. Stage histories are encoded once as numpy arrays (contact
position, timestamp in ns, stage code) sorted by contact and time, so a base of a million
contacts and several million stage changes is processed in seconds.

Conventions shared by all functions:

- a contact with no stage change (at the date considered) is at ``lead``;
- stage changes sharing a timestamp are ordered along the funnel, ``cold`` and
  ``disqualified`` last (the same convention as the feature builder);
- "reached stage s" means "was at s or at a later funnel stage at some point": a contact who
  skips a stage (``lead`` -> ``sql``) is counted as having passed through it, so the rates
  between consecutive stages multiply to the lead -> opportunity rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from features.schema import BANDS, FUNNEL_RANK, STAGES

__all__ = [
    "FUNNEL_PATH",
    "ScoreQuality",
    "band_shares",
    "cold_and_regressions",
    "leads_by_source_month",
    "leads_needed",
    "score_quality",
    "service_level",
    "stage_conversion",
    "stage_counts_now",
    "stage_velocity",
]

#: The stages whose consecutive pairs make the conversion funnel.
FUNNEL_PATH: tuple[str, ...] = ("lead", "mql", "sql", "opportunity", "customer")

_CODE: dict[str, int] = {s: i for i, s in enumerate(STAGES)}
_RANK = np.array([FUNNEL_RANK.get(s, -1) for s in STAGES], dtype=np.int64)  # -1: off-funnel
_TIE = np.array([FUNNEL_RANK.get(s, 10) for s in STAGES], dtype=np.int64)
_LEAD = _CODE["lead"]
_COLD = _CODE["cold"]
_NS_PER_DAY = 86_400 * 10**9
_UNKNOWN = "unknown"


# ---------------------------------------------------------------------------
# encoding helpers
# ---------------------------------------------------------------------------


def _ts_ns(values: pd.Series | pd.Index) -> np.ndarray:
    """Timestamps as int64 ns since the epoch (tz-aware values are taken in UTC; NaT -> min)."""
    s = pd.Series(pd.to_datetime(values))
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.to_numpy(dtype="datetime64[ns]").view("int64")


def _as_of_ns(as_of: Any) -> int:
    t = pd.Timestamp(as_of)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return int(t.as_unit("ns").value)


_NAT = np.iinfo(np.int64).min


@dataclass(frozen=True)
class _History:
    """Stage changes, sorted by contact position, time and funnel rank unless told not to."""

    contact: np.ndarray  # int64 position of the contact (in `ids`)
    ts: np.ndarray  # int64 ns
    stage: np.ndarray  # int64 index into STAGES
    n_contacts: int


def _positions(values: pd.Series, ids: pd.Index) -> np.ndarray:
    """Position of each value in ``ids`` (-1 when absent), fast for Arrow-backed strings."""
    if isinstance(values.dtype, pd.StringDtype) and isinstance(ids.dtype, pd.StringDtype):
        try:
            import pyarrow as pa
            import pyarrow.compute as pc

            hay = pa.chunked_array(pa.array(ids.array)).combine_chunks()
            found = pc.index_in(pa.chunked_array(pa.array(values.array)), value_set=hay)
            return np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)
        except (ImportError, TypeError, ValueError, NotImplementedError):
            pass
    return ids.get_indexer(values)


def _stage_codes(stage: pd.Series) -> np.ndarray:
    """Index into STAGES per row (-1 for a value outside the vocabulary)."""
    codes, uniques = pd.factorize(stage)
    lookup = np.array([_CODE.get(u, -1) for u in uniques] + [-1], dtype=np.int64)
    return lookup[codes]  # factorize gives -1 for missing: the appended -1


def _encode(
    stages: pd.DataFrame, ids: pd.Index | None = None, as_of: Any = None, *, sort: bool = True
) -> _History:
    """Encode a stages table; with ``ids``, rows of contacts not in ``ids`` are dropped."""
    if ids is None:
        pos, uniques = pd.factorize(stages["contact_id"])
        n = len(uniques)
    else:
        pos = _positions(stages["contact_id"], ids)
        n = len(ids)
    pos = np.asarray(pos, dtype=np.int64)
    code = _stage_codes(stages["stage"])
    ts = _ts_ns(stages["ts"])
    keep = (pos >= 0) & (code >= 0) & (ts != _NAT)
    if as_of is not None:
        keep &= ts <= _as_of_ns(as_of)
    pos, code, ts = pos[keep], code[keep], ts[keep]
    if not sort:
        return _History(pos, ts, code, n)
    order = _order(pos, ts, _TIE[code])
    return _History(pos[order], ts[order], code[order], n)


def _order(pos: np.ndarray, ts: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Stable order by contact, time and tie rank (one int64 key: 3x faster than lexsort)."""
    if pos.size == 0:
        return np.arange(0)
    ts_rank = np.unique(ts, return_inverse=True)[1].astype(np.int64)
    n_ts = int(ts_rank.max()) + 1
    n_tie = int(_TIE.max()) + 1
    if (int(pos.max()) + 1) * n_ts * n_tie >= 2**62:
        return np.lexsort((tie, ts, pos))
    key = (pos * n_ts + ts_rank) * n_tie + tie
    return np.argsort(key, kind="stable")


def _contact_index(contacts: pd.DataFrame) -> pd.Index:
    ids = pd.Index(contacts["contact_id"])
    if not ids.is_unique:
        raise ValueError("contacts.contact_id must be unique")
    return ids


def _is_last(contact: np.ndarray) -> np.ndarray:
    last = np.ones(len(contact), dtype=bool)
    last[:-1] = contact[1:] != contact[:-1]
    return last


def _max_rank(h: _History) -> np.ndarray:
    """Highest funnel rank ever reached per contact (``lead`` when nothing on the funnel)."""
    best = np.full(h.n_contacts, -1, dtype=np.int64)
    np.maximum.at(best, h.contact, _RANK[h.stage])
    best[best < 0] = FUNNEL_RANK["lead"]
    return best


def _group_labels(contacts: pd.DataFrame, by: str) -> pd.Series:
    if by not in contacts.columns:
        raise KeyError(f"contacts has no column {by!r} to group by")
    col = contacts[by]
    return col.astype("object").where(col.notna(), _UNKNOWN).astype(str).reset_index(drop=True)


# ---------------------------------------------------------------------------
# funnel KPIs
# ---------------------------------------------------------------------------


def stage_counts_now(
    stages: pd.DataFrame, contacts: pd.DataFrame, as_of: Any = None
) -> pd.DataFrame:
    """Contacts per current stage.

    Parameters
    ----------
    stages, contacts
        Canonical tables.
    as_of
        Date of the snapshot; default: everything known. With ``as_of``, contacts created
        later are left out and only stage changes at or before it count.

    Returns
    -------
    DataFrame
        ``stage, contacts, share`` with one row per stage of :data:`features.schema.STAGES`
        (in funnel order). The current stage is the latest change; contacts without any
        change are at ``lead``.
    """
    if as_of is not None:
        created = _ts_ns(contacts["created_at"])
        contacts = contacts.loc[(created <= _as_of_ns(as_of)) | (created == _NAT)]
    ids = _contact_index(contacts)
    h = _encode(stages, ids, as_of)
    current = np.full(h.n_contacts, _LEAD, dtype=np.int64)
    last = _is_last(h.contact)
    current[h.contact[last]] = h.stage[last]
    counts = np.bincount(current, minlength=len(STAGES))
    total = counts.sum()
    return pd.DataFrame(
        {
            "stage": list(STAGES),
            "contacts": counts.astype(np.int64),
            "share": counts / total if total else np.zeros(len(STAGES)),
        }
    )


def leads_by_source_month(contacts: pd.DataFrame) -> pd.DataFrame:
    """Leads generated per ``lead_source`` and calendar month of ``created_at``.

    Returns
    -------
    DataFrame
        ``lead_source, month ("YYYY-MM"), leads``, sorted by month then source. A missing
        source (column or value) is ``"unknown"``; contacts without ``created_at`` are left
        out.
    """
    created = pd.Series(pd.to_datetime(contacts["created_at"])).reset_index(drop=True)
    if getattr(created.dt, "tz", None) is not None:
        created = created.dt.tz_convert("UTC").dt.tz_localize(None)
    if "lead_source" in contacts.columns:
        source = _group_labels(contacts, "lead_source")
    else:
        source = pd.Series(_UNKNOWN, index=created.index, dtype=str)
    ok = created.notna()
    key = (created[ok].dt.year * 100 + created[ok].dt.month).astype(np.int64)
    out = (
        pd.DataFrame({"lead_source": source[ok], "key": key})
        .groupby(["key", "lead_source"], sort=True)
        .size()
        .rename("leads")
        .reset_index()
    )
    month = (out["key"] // 100).astype(str) + "-" + (out["key"] % 100).map("{:02d}".format)
    out.insert(1, "month", month)
    return out[["lead_source", "month", "leads"]].astype({"leads": np.int64})


def stage_conversion(
    stages: pd.DataFrame, contacts: pd.DataFrame, by: str | None = None, as_of: Any = None
) -> pd.DataFrame:
    """Conversion between consecutive funnel stages (lead -> mql -> sql -> opportunity -> customer).

    For each pair, ``generated`` counts the contacts that ever reached the from-stage (or a
    later funnel stage), ``converted`` those that then reached the to-stage (or beyond), and
    ``rate = converted / generated`` (NaN when nothing was generated). Reaching a stage is
    by funnel rank, so a contact who skipped a stage passed through it, and the rates
    multiply along the path. Contacts whose history holds only ``suspect`` never became
    leads.

    Parameters
    ----------
    stages, contacts
        Canonical tables; stage rows of contacts absent from ``contacts`` are ignored.
    by
        ``None`` for the whole base, or a contacts column (e.g. ``"lead_source"``).
    as_of
        Only stage changes at or before this date count (default: all).

    Returns
    -------
    DataFrame
        ``[by,] from_stage, to_stage, generated, converted, rate``.
    """
    ids = _contact_index(contacts)
    best = _max_rank(_encode(stages, ids, as_of, sort=False))
    n_ranks = max(FUNNEL_RANK.values()) + 1
    if by is None:
        groups = pd.Series("all", index=range(len(ids)), dtype=str)
    else:
        groups = _group_labels(contacts, by)
    table = (
        pd.DataFrame({"g": groups.to_numpy(), "rank": best})
        .groupby(["g", "rank"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=range(n_ranks), fill_value=0)
    )
    # reached[r] = contacts whose best rank is >= r
    reached = table.iloc[:, ::-1].cumsum(axis=1).iloc[:, ::-1]
    parts = []
    for src, dst in pairwise(FUNNEL_PATH):
        gen = reached[FUNNEL_RANK[src]].to_numpy(dtype=np.int64)
        conv = reached[FUNNEL_RANK[dst]].to_numpy(dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(gen > 0, conv / np.maximum(gen, 1), np.nan)
        parts.append(
            pd.DataFrame(
                {
                    "g": reached.index.to_numpy(),
                    "from_stage": src,
                    "to_stage": dst,
                    "generated": gen,
                    "converted": conv,
                    "rate": rate,
                }
            )
        )
    out = pd.concat(parts, ignore_index=True)
    if by is None:
        return out.drop(columns="g")
    out = out.rename(columns={"g": by})
    order = {s: i for i, s in enumerate(FUNNEL_PATH)}
    return (
        out.assign(_o=out["from_stage"].map(order))
        .sort_values([by, "_o"], kind="stable")
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def stage_velocity(stages: pd.DataFrame, as_of: Any = None) -> pd.DataFrame:
    """Days spent in each stage, from entering it to the next stage change.

    Consecutive changes to the same stage are one spell. A spell still running (no later
    change, at ``as_of`` when given) is *open*: it is left out of the completed-spell
    statistics and counted in ``open_spells``; ``open_median_days`` is the median time open
    spells have lasted so far (up to ``as_of``, default the latest change in the table).

    Returns
    -------
    DataFrame
        ``stage, completed_spells, median_days, p90_days, mean_days, open_spells,
        open_median_days``, one row per stage of :data:`features.schema.STAGES`.
    """
    h = _encode(stages, None, as_of)
    contact, ts, stage = h.contact, h.ts, h.stage
    if len(contact):
        new_spell = np.ones(len(contact), dtype=bool)
        new_spell[1:] = (contact[1:] != contact[:-1]) | (stage[1:] != stage[:-1])
        contact, ts, stage = contact[new_spell], ts[new_spell], stage[new_spell]
    last = _is_last(contact)
    days = np.full(len(ts), np.nan)
    days[:-1] = (ts[1:] - ts[:-1]) / _NS_PER_DAY
    end = _as_of_ns(as_of) if as_of is not None else (int(ts.max()) if len(ts) else 0)
    open_days = (end - ts) / _NS_PER_DAY
    rows = []
    for k, name in enumerate(STAGES):
        in_stage = stage == k
        done = days[in_stage & ~last]
        still = open_days[in_stage & last]
        rows.append(
            {
                "stage": name,
                "completed_spells": int(done.size),
                "median_days": float(np.median(done)) if done.size else np.nan,
                "p90_days": float(np.quantile(done, 0.9)) if done.size else np.nan,
                "mean_days": float(done.mean()) if done.size else np.nan,
                "open_spells": int(still.size),
                "open_median_days": float(np.median(still)) if still.size else np.nan,
            }
        )
    return pd.DataFrame(rows)


def cold_and_regressions(stages: pd.DataFrame) -> pd.DataFrame:
    """Contacts that went cold, and contacts that moved back along the funnel.

    A regression is a funnel stage change whose rank is lower than the contact's previous
    funnel stage (``cold`` and ``disqualified`` in between are skipped, so
    ``sql -> cold -> mql`` is one regression).

    Returns
    -------
    DataFrame
        One row: ``contacts`` (with any stage change), ``went_cold``, ``went_cold_share``,
        ``regressed``, ``regressed_share``, ``regression_moves``.
    """
    h = _encode(stages, None)
    n = h.n_contacts
    cold = np.unique(h.contact[h.stage == _COLD]).size
    on_funnel = _RANK[h.stage] >= 0
    c, r = h.contact[on_funnel], _RANK[h.stage[on_funnel]]
    back = (c[1:] == c[:-1]) & (r[1:] < r[:-1])
    regressed = np.unique(c[1:][back]).size
    return pd.DataFrame(
        {
            "contacts": [n],
            "went_cold": [cold],
            "went_cold_share": [cold / n if n else np.nan],
            "regressed": [regressed],
            "regressed_share": [regressed / n if n else np.nan],
            "regression_moves": [int(back.sum())],
        }
    )


# ---------------------------------------------------------------------------
# score KPIs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreQuality:
    """Quality of a set of scores against the observed outcome (``converted``)."""

    deciles: pd.DataFrame  # training.metrics.decile_table of the model probability
    bands: pd.DataFrame  # band, contacts, converted, conversion_rate, share_of_conversions
    metrics: pd.DataFrame  # training.metrics.compare: scorer + binary_metrics, model[, rules]
    reliability: pd.DataFrame  # training.metrics.reliability_curve of the model probability
    rules_deciles: pd.DataFrame | None = None  # same as deciles for rules_probability
    rules_reliability: pd.DataFrame | None = None  # same as reliability for rules_probability


def _latest_per_contact(scores: pd.DataFrame) -> pd.DataFrame:
    if scores["contact_id"].is_unique:
        return scores
    if "scored_at" in scores.columns:
        scores = scores.sort_values("scored_at", kind="stable")
    return scores.drop_duplicates("contact_id", keep="last")


def score_quality(scores: pd.DataFrame, *, n_bins: int = 10) -> ScoreQuality:
    """Conversion by score decile and by band, discrimination and calibration metrics.

    Parameters
    ----------
    scores
        Scorer output with a ``converted`` 0/1 column (and optionally ``rules_probability``,
        the rule scorer's probability for the same contacts, compared with the model's).
    n_bins
        Number of score bins for the decile and reliability tables.
    """
    from training import metrics as tm  # imported here: training is optional for funnel KPIs

    if "converted" not in scores.columns:
        raise KeyError("score_quality needs a 'converted' outcome column in scores")
    s = _latest_per_contact(scores)
    s = s.loc[s["converted"].notna() & s["probability"].notna()]
    y = s["converted"].to_numpy(dtype=np.int64)
    p = s["probability"].to_numpy(dtype=np.float64)

    deciles = tm.decile_table(y, p, n_groups=n_bins)
    reliability = tm.reliability_curve(y, p, n_bins=n_bins)
    scorers: dict[str, np.ndarray] = {"model": p}
    rules_deciles = rules_reliability = None
    if "rules_probability" in s.columns and s["rules_probability"].notna().all():
        pr = s["rules_probability"].to_numpy(dtype=np.float64)
        scorers["rules"] = pr
        rules_deciles = tm.decile_table(y, pr, n_groups=n_bins)
        rules_reliability = tm.reliability_curve(y, pr, n_bins=n_bins)
    metrics = tm.compare(scorers, y)

    if "band" in s.columns:
        band = s["band"].astype("object").where(s["band"].notna(), _UNKNOWN).astype(str)
    else:
        band = pd.Series(_UNKNOWN, index=s.index, dtype=str)
    g = pd.DataFrame({"band": band.to_numpy(), "y": y}).groupby("band")["y"].agg(["size", "sum"])
    order = [b for b in BANDS if b in g.index] + sorted(set(g.index) - set(BANDS))
    g = g.reindex(order)
    total_pos = max(int(y.sum()), 1)
    bands = pd.DataFrame(
        {
            "band": g.index.to_numpy(),
            "contacts": g["size"].to_numpy(dtype=np.int64),
            "converted": g["sum"].to_numpy(dtype=np.int64),
        }
    )
    bands["conversion_rate"] = bands["converted"] / bands["contacts"]
    bands["share_of_conversions"] = bands["converted"] / total_pos
    return ScoreQuality(deciles, bands, metrics, reliability, rules_deciles, rules_reliability)


def band_shares(scores: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contacts and share per priority band, now and (optionally) at the previous scoring.

    Returns
    -------
    DataFrame
        ``band, contacts, share[, previous_contacts, previous_share]`` for bands A-D.
    """

    def count(frame: pd.DataFrame) -> pd.Series:
        f = _latest_per_contact(frame)
        return f["band"].value_counts().reindex(list(BANDS), fill_value=0).astype(np.int64)

    now = count(scores)
    out = pd.DataFrame({"band": list(BANDS), "contacts": now.to_numpy()})
    out["share"] = out["contacts"] / max(int(now.sum()), 1)
    if previous is not None:
        before = count(previous)
        out["previous_contacts"] = before.to_numpy()
        out["previous_share"] = out["previous_contacts"] / max(int(before.sum()), 1)
    return out


def service_level(scores: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Band-A workload: share of A, and new A leads since the previous scoring.

    A new A lead is in band A now and was not in A in ``previous`` (another band, or not
    scored at all).

    Returns
    -------
    DataFrame
        One row: ``contacts, band_a, band_a_share, new_a`` (``new_a`` is missing without
        ``previous``).
    """
    now = _latest_per_contact(scores)
    is_a = (now["band"] == "A").fillna(False).to_numpy(dtype=bool)
    n = len(now)
    new_a: float | int = np.nan
    if previous is not None:
        prev = _latest_per_contact(previous)
        was_a = pd.Index(prev.loc[(prev["band"] == "A").fillna(False), "contact_id"])
        new_a = int((is_a & ~now["contact_id"].isin(was_a).to_numpy(dtype=bool)).sum())
    return pd.DataFrame(
        {
            "contacts": [n],
            "band_a": [int(is_a.sum())],
            "band_a_share": [is_a.sum() / n if n else np.nan],
            "new_a": pd.array([new_a], dtype="Int64"),
        }
    )


# ---------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------


def _rate_lookup(rates: pd.DataFrame | Mapping[Any, float]) -> dict[tuple[str, str], float]:
    if isinstance(rates, pd.DataFrame):
        missing = {"from_stage", "to_stage", "rate"} - set(rates.columns)
        if missing:
            raise KeyError(f"rates table lacks columns {sorted(missing)}")
        if rates[["from_stage", "to_stage"]].duplicated().any():
            raise ValueError("rates table has several rows per stage pair; pass overall rates")
        return {
            (str(a), str(b)): float(r)
            for a, b, r in zip(rates["from_stage"], rates["to_stage"], rates["rate"], strict=True)
        }
    out: dict[tuple[str, str], float] = {}
    for key, value in rates.items():
        if isinstance(key, str):
            sep = "→" if "→" in key else "->"
            a, _, b = key.partition(sep)
            key = (a.strip(), b.strip())
        out[(str(key[0]), str(key[1]))] = float(value)
    return out


def leads_needed(
    target_opportunities: float, rates: pd.DataFrame | Mapping[Any, float]
) -> pd.DataFrame:
    """Work back from a number of opportunities to the SQLs, MQLs and leads needed.

    ``sql = target / r(sql->opportunity)``, ``mql = target / (r(mql->sql) *
    r(sql->opportunity))``, ``lead = mql / r(lead->mql)``.

    Parameters
    ----------
    target_opportunities
        Sales goal, in opportunities.
    rates
        The overall :func:`stage_conversion` table, or a mapping keyed by ``(from, to)`` or
        ``"from->to"`` / ``"from→to"``.

    Returns
    -------
    DataFrame
        ``stage, rate_to_next, needed, needed_whole`` from opportunity back to lead;
        ``needed_whole`` is rounded up.

    Raises
    ------
    ValueError
        When a rate on the path is 0, missing or not a number (the stage pair is named).
    """
    if not np.isfinite(target_opportunities) or target_opportunities < 0:
        raise ValueError("target_opportunities must be a finite number >= 0")
    lookup = _rate_lookup(rates)
    path = ("lead", "mql", "sql", "opportunity")
    rows = [{"stage": "opportunity", "rate_to_next": np.nan, "needed": float(target_opportunities)}]
    needed = float(target_opportunities)
    for src, dst in zip(path[-2::-1], path[:0:-1], strict=True):
        if (src, dst) not in lookup:
            raise ValueError(f"no conversion rate for {src}→{dst}")
        r = lookup[(src, dst)]
        if np.isnan(r):
            raise ValueError(
                f"conversion rate {src}→{dst} is unknown (no contact reached {src}): "
                f"cannot work back to the {src}s needed"
            )
        if not np.isfinite(r) or r <= 0:
            raise ValueError(
                f"conversion rate {src}→{dst} is {r:g}: cannot work back to the {src}s needed"
            )
        needed = needed / r
        rows.append({"stage": src, "rate_to_next": r, "needed": needed})
    out = pd.DataFrame(rows)
    out["needed_whole"] = np.ceil(out["needed"].round(9)).astype(np.int64)
    return out
