"""Lifecycle features, eligibility and the label, from the stage-change history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features import schema
from features.engagement import all_true, as_of_ns, as_text, positions

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
_STAGE_NAMES = np.asarray(_STAGES, dtype=object)
# _BACK[a, b]: a change from stage a to stage b is a regression (to cold, or back along the funnel)
_BACK = (np.arange(len(_STAGES)) == _COLD)[None, :] | (
    (_FUNNEL[:, None] >= 0) & (_FUNNEL[None, :] >= 0) & (_FUNNEL[None, :] < _FUNNEL[:, None]))
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
    t_ns = as_of_ns(as_of)
    contact, ts, stage = st.contact, st.ts, st.stage
    known = ts <= t_ns
    if not all_true(known):
        contact, ts, stage = contact[known], ts[known], stage[known]
    k = len(contact)
    is_last = np.empty(k, dtype=bool)  # the contact's last change (changes are sorted)
    np.not_equal(contact[1:], contact[:-1], out=is_last[:-1])
    is_last[k - 1:] = True
    who = contact[is_last]
    current = np.empty(n, dtype=np.int8)
    current.fill(_CODE[_DEFAULT_STAGE])
    current[who] = stage[is_last]
    since = np.empty(n)
    since.fill(np.nan)
    since[who] = (t_ns - ts[is_last]) / _NS_PER_DAY

    back = _BACK[stage[:-1], stage[1:]]
    np.greater(back, is_last[:-1], out=back)  # and the same contact
    regressions = np.bincount(contact[1:][back], minlength=n).astype(np.float64)
    return {
        "stage": _STAGE_NAMES[current],
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
