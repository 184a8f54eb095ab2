"""Lifecycle features, eligibility and the label, from the stage-change history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features import schema
from features.engagement import as_text, positions

_STAGES = schema.STAGES
_CODE = {s: i for i, s in enumerate(_STAGES)}
_STAGE_VALUES = pa.array(_STAGES, type=pa.large_string())
# order of changes sharing a timestamp: along the funnel, cold and disqualified last
_TIE_RANK = np.array([schema.FUNNEL_RANK.get(s, 10) for s in _STAGES])
_FUNNEL = np.array([schema.FUNNEL_RANK.get(s, -1) for s in _STAGES])
_COLD = _CODE["cold"]
_CONVERTED = np.array([_CODE[s] for s in schema.CONVERTED_STAGES])
_NOT_SCORED = np.array([_CODE[s] for s in schema.NOT_SCORED_STAGES])
_DEFAULT_STAGE = "lead"
_NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class StageArrays:
    """Stage changes encoded for the kernels, sorted by contact, time and funnel rank."""

    contact: np.ndarray  # int64 row position of the contact
    ts: np.ndarray  # int64 ns since the epoch
    stage: np.ndarray  # int8 index into schema.STAGES
    n_contacts: int


def encode_stages(stages: pd.DataFrame, contact_ids: pd.Index) -> StageArrays:
    """Encode a stages table against its contacts (unknown contacts and stages dropped)."""
    pos = positions(stages["contact_id"], as_text(contact_ids))
    code = positions(stages["stage"], _STAGE_VALUES)
    keep = (pos >= 0) & (code >= 0)
    ts = pd.to_datetime(stages["ts"]).to_numpy(dtype="datetime64[ns]").view("int64")[keep]
    pos, code = pos[keep].astype(np.int64), code[keep].astype(np.int8)
    order = np.lexsort((_TIE_RANK[code], ts, pos))
    return StageArrays(pos[order], ts[order], code[order], len(contact_ids))


def lifecycle_features(st: StageArrays, as_of: pd.Timestamp) -> dict[str, np.ndarray]:
    """Current stage, days in it and number of regressions of every contact at ``as_of``.

    Contacts with no stage change yet are at ``lead`` (``days_in_stage`` is then NaN and
    filled by the caller from the contact's age).
    """
    n = st.n_contacts
    t_ns = pd.Timestamp(as_of).as_unit("ns").value
    known = st.ts <= t_ns
    contact, ts, stage = st.contact[known], st.ts[known], st.stage[known]
    is_last = np.ones(len(contact), dtype=bool)
    is_last[:-1] = contact[1:] != contact[:-1]
    current = np.full(n, _CODE[_DEFAULT_STAGE], dtype=np.int8)
    current[contact[is_last]] = stage[is_last]
    since = np.full(n, np.nan)
    since[contact[is_last]] = (t_ns - ts[is_last]) / _NS_PER_DAY

    same = contact[1:] == contact[:-1]
    prev_rank, new_rank = _FUNNEL[stage[:-1]], _FUNNEL[stage[1:]]
    back = same & ((stage[1:] == _COLD) | ((prev_rank >= 0) & (new_rank >= 0) & (new_rank < prev_rank)))
    regressions = np.bincount(contact[1:][back], minlength=n).astype("float64")
    return {
        "stage": np.asarray(_STAGES, dtype=object)[current],
        "stage_code": current,
        "days_in_stage": since,
        "stage_regressions": regressions,
    }


def scorable(stage_code: np.ndarray) -> np.ndarray:
    """True where the contact is not yet converted nor disqualified."""
    return ~np.isin(stage_code, _NOT_SCORED)


def converted_within(st: StageArrays, as_of: pd.Timestamp, horizon_days: int) -> np.ndarray:
    """Label: the contact reached opportunity or beyond in (as_of, as_of + horizon]."""
    t_ns = pd.Timestamp(as_of).as_unit("ns").value
    end = t_ns + horizon_days * _NS_PER_DAY
    m = (st.ts > t_ns) & (st.ts <= end) & np.isin(st.stage, _CONVERTED)
    return np.bincount(st.contact[m], minlength=st.n_contacts) > 0
