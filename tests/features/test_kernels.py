"""The engagement and lifecycle kernels against plain per-contact Python, at the boundaries
of their windows, and the same bits whatever the chunking, the size thresholds, the order
of the events or the number of contacts featurised together."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from features import engagement, lifecycle, schema
from features.engagement import EventArrays, engagement_features
from features.lifecycle import StageArrays, lifecycle_features

T = pd.Timestamp("2026-03-01 15:30")
DAY = 86_400 * 10**9
TYPES = schema.ENGAGEMENT_TYPES
HALF_LIFE = 30.0


def _events(n: int, m: int, seed: int) -> EventArrays:
    """Random events, many of them at the windows' edges (7, 30, 37, 90 days back, calendar
    midnights), some after ``T`` and some years back."""
    rng = np.random.default_rng(seed)
    t = T.value
    edge = rng.choice([0, 7, 30, 37, 90, 91, 400], m) * DAY + rng.integers(-2, 3, m)
    midnight = t - t % DAY - rng.integers(0, 95, m) * DAY + rng.integers(-2, 3, m)
    spread = t - rng.integers(-5 * DAY, 800 * DAY, m)
    ts = np.select([rng.random(m) < 0.3, rng.random(m) < 0.4], [t - edge, midnight], spread)
    content = np.where(rng.random(m) < 0.5, rng.integers(0, 6, m), -1)
    return EventArrays(rng.integers(0, n, m).astype(np.int64), ts.astype(np.int64),
                       rng.integers(0, len(TYPES), m).astype(np.int8), content.astype(np.int64), n)


def _plain_engagement(ev: EventArrays, as_of: pd.Timestamp, half_life: float) -> dict[str, list]:
    """The features, one contact and one event at a time (same float formulas)."""
    t = as_of.value
    out: dict[str, list] = {}
    for c in range(ev.n_contacts):
        rows = [(int(ts), int(tc), int(cc)) for who, ts, tc, cc in
                zip(ev.contact, ev.ts, ev.type_code, ev.content) if who == c and ts <= t]
        # float(t - ts) / DAY: as numpy divides an int64 array by an int
        ages = [(float(t - ts) / DAY, TYPES[tc], cc, t // DAY - ts // DAY) for ts, tc, cc in rows]
        values: dict[str, float] = {}
        for ty in TYPES:
            mine = [a for a, x, _, _ in ages if x == ty]
            for w in schema.WINDOWS_DAYS:
                values[f"{ty}_{w}d"] = float(sum(a < w for a in mine))
            if ty in schema.EVENT_TYPES:
                values[f"days_since_{ty}"] = min(mine) if mine else math.nan
                weights = engagement._decay_weights(np.array(mine, dtype=float), half_life)
                values[f"{ty}_decayed"] = float(sum(weights.tolist()))
        positive = [a for a, x, _, _ in ages if x not in ("unsubscribe", "email_bounce")]
        everything = [a for a, _, _, _ in ages]
        values["days_since_last_event"] = min(everything) if everything else math.nan
        values["engagement_decayed"] = float(sum(engagement._decay_weights(
            np.array(positive, dtype=float), half_life).tolist()))
        values["active_days_30d"] = float(len({d for a, _, _, d in ages if a < 30}))
        values["active_days_90d"] = float(len({d for a, _, _, d in ages if a < 90}))
        last7 = sum(a < 7 for a in positive)
        before = sum(7 <= a < 37 for a in positive)
        values["engagement_trend"] = (last7 + 1.0) / (7.0 / 30.0 * before + 1.0)
        values["distinct_content_90d"] = float(len({cc for a, x, cc, _ in ages if a < 90 and cc >= 0
                                                    and x in ("content_download", "webinar_registered",
                                                              "webinar_attended")}))
        opens, clicks = values["email_open_90d"], values["email_click_90d"]
        values["email_ctr_90d"] = clicks / opens if opens > 0 else math.nan
        values["unsubscribed"] = float(any(x == "unsubscribe" for _, x, _, _ in ages))
        values["bounced"] = float(any(x == "email_bounce" for _, x, _, _ in ages))
        for k, v in values.items():
            out.setdefault(k, []).append(v)
    return out


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.int64)


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        if w.dtype.kind == "f":
            np.testing.assert_array_equal(_bits(got[k]), _bits(w), err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], w, err_msg=k)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("as_of", [T, T - pd.Timedelta(days=40)])
def test_engagement_equals_plain_python(seed, as_of):
    ev = _events(5, 400, seed)
    got = engagement_features(ev, as_of, half_life_days=HALF_LIFE)
    want = _plain_engagement(ev, as_of, HALF_LIFE)
    assert set(got) == set(want) == set(schema.ENGAGEMENT_FEATURES) - {"days_in_stage",
                                                                      "stage_regressions"}
    for k, values in want.items():
        assert got[k].dtype == np.float64 and got[k].shape == (5,), k
        np.testing.assert_array_equal(_bits(got[k]), _bits(values), err_msg=k)


def test_one_contact_of_a_few_events_equals_plain_python():
    """The online case: below the size thresholds (no copies, Python sets)."""
    for seed in range(20):
        ev = _events(1, int(np.random.default_rng(seed).integers(0, 60)), seed)
        got = engagement_features(ev, T, half_life_days=HALF_LIFE)
        for k, values in _plain_engagement(ev, T, HALF_LIFE).items():
            np.testing.assert_array_equal(_bits(got[k]), _bits(values), err_msg=(seed, k))


@pytest.mark.parametrize("chunk,small", [(1, 0), (7, 0), (64, 10**9), (1000, 3)])
def test_chunks_and_thresholds_change_no_bit(monkeypatch, chunk, small):
    ev = _events(40, 3000, 3)
    want = engagement_features(ev, T, half_life_days=HALF_LIFE)
    monkeypatch.setattr(engagement, "_CHUNK", chunk)
    monkeypatch.setattr(engagement, "_SMALL", small)
    _same(engagement_features(ev, T, half_life_days=HALF_LIFE), want)


def test_event_order_and_contacts_alongside_change_no_bit():
    ev = _events(30, 2000, 4)
    want = engagement_features(ev, T, half_life_days=HALF_LIFE)
    p = np.random.default_rng(9).permutation(len(ev.ts))
    shuffled = EventArrays(ev.contact[p], ev.ts[p], ev.type_code[p], ev.content[p], ev.n_contacts)
    _same(engagement_features(shuffled, T, half_life_days=HALF_LIFE), want)
    for c in (0, 7, 29):  # each contact alone, as the service featurises it
        m = ev.contact == c
        alone = EventArrays(np.zeros(int(m.sum()), dtype=np.int64), ev.ts[m], ev.type_code[m],
                            ev.content[m], 1)
        _same(engagement_features(alone, T, half_life_days=HALF_LIFE),
              {k: v[c:c + 1] for k, v in want.items()})


def test_no_events_and_no_contacts():
    none = EventArrays(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                       np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int64), 3)
    got = engagement_features(none, T, half_life_days=HALF_LIFE)
    for k, values in _plain_engagement(none, T, HALF_LIFE).items():
        np.testing.assert_array_equal(_bits(got[k]), _bits(values), err_msg=k)
    empty = engagement_features(EventArrays(none.contact, none.ts, none.type_code, none.content, 0),
                                T, half_life_days=HALF_LIFE)
    assert all(v.shape == (0,) and v.dtype == np.float64 for v in empty.values())
    future = EventArrays(np.zeros(2, dtype=np.int64), np.full(2, T.value + 1), np.zeros(2, np.int8),
                         np.full(2, -1), 1)
    _same(engagement_features(future, T, half_life_days=HALF_LIFE),
          engagement_features(EventArrays(none.contact, none.ts, none.type_code, none.content, 1),
                              T, half_life_days=HALF_LIFE))


def _stage_changes(n: int, m: int, seed: int) -> StageArrays:
    rng = np.random.default_rng(seed)
    contact = rng.integers(0, n, m)
    ts = T.value - rng.integers(-20 * DAY, 300 * DAY, m)
    ts[rng.random(m) < 0.2] = T.value  # ties, and changes at the as-of instant
    stage = rng.integers(0, len(schema.STAGES), m).astype(np.int8)
    order = np.lexsort((lifecycle._TIE_RANK[stage], ts, contact))
    return StageArrays(contact[order].astype(np.int64), ts[order], stage[order], n)


def _plain_lifecycle(st: StageArrays, as_of: pd.Timestamp) -> dict[str, list]:
    out: dict[str, list] = {"stage": [], "days_in_stage": [], "stage_regressions": []}
    rank = schema.FUNNEL_RANK
    for c in range(st.n_contacts):
        rows = [(int(ts), schema.STAGES[s]) for who, ts, s in zip(st.contact, st.ts, st.stage)
                if who == c and ts <= as_of.value]
        out["stage"].append(rows[-1][1] if rows else "lead")
        out["days_in_stage"].append(float(as_of.value - rows[-1][0]) / DAY if rows else math.nan)
        back = sum(b == "cold" or (a in rank and b in rank and rank[b] < rank[a])
                   for (_, a), (_, b) in itertools.pairwise(rows))
        out["stage_regressions"].append(float(back))
    return out


@pytest.mark.parametrize("as_of", [T, T - pd.Timedelta(days=100)])
def test_lifecycle_equals_plain_python(as_of):
    for n, m, seed in [(6, 200, 0), (1, 7, 1), (1, 0, 2), (4, 1, 3), (0, 0, 4)]:
        st = _stage_changes(n, m, seed)
        got = lifecycle_features(st, as_of)
        want = _plain_lifecycle(st, as_of)
        assert got["stage"].dtype == object and got["stage"].tolist() == want["stage"]
        assert got["stage_code"].dtype == np.int8
        assert [schema.STAGES[s] for s in got["stage_code"]] == want["stage"]
        for k in ("days_in_stage", "stage_regressions"):
            np.testing.assert_array_equal(_bits(got[k]), _bits(want[k]), err_msg=k)
