"""Evaluation metrics of lead scorers: pure functions of labels and probabilities.

Used by training (model selection, promotion gate), the ``evaluate`` command and the
report. Ranking metrics (lift, recall at the top, decile table) treat tied scores by
their expectation under a random order of the tied leads, so a scorer with many ties
(the rules scorer) is neither favoured nor penalised by the row order of the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "compare",
    "decile_table",
    "ece_by_chance",
    "expected_calibration_error",
    "reliability_curve",
    "roc_auc_intervals",
]

Strategy = Literal["quantile", "uniform"]

#: Keys of :func:`binary_metrics`, in order.
METRIC_NAMES: tuple[str, ...] = (
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "ece",
    "top_decile_lift",
    "recall_top10",
    "recall_top20",
    "positive_rate",
    "n",
)

_EPS = 1e-15


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------


def _labels(y: object) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        a = a.ravel()
    try:
        f = a.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError("labels must be 0/1 (or booleans)") from exc
    if f.size and not np.all((f == 0) | (f == 1)):
        raise ValueError("labels must be 0/1 (or booleans), without missing values")
    return f


def _scores(p: object, n: int, *, probability: bool) -> np.ndarray:
    a = np.asarray(p, dtype=float).ravel()
    if a.size != n:
        raise ValueError(f"labels and scores differ in length ({n} vs {a.size})")
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise ValueError(f"{bad} scores are missing or infinite")
    if probability and a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    return a


def _check(y: object, p: object, *, probability: bool = True) -> tuple[np.ndarray, np.ndarray]:
    yy = _labels(y)
    return yy, _scores(p, yy.size, probability=probability)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------


def _bin_ids(p: np.ndarray, n_bins: int, strategy: Strategy) -> np.ndarray:
    """Bin index per probability, exactly as ``sklearn.calibration.calibration_curve``."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError("strategy must be 'quantile' or 'uniform'")
    return np.searchsorted(edges[1:-1], p)


def reliability_curve(
    y: object, p: object, n_bins: int = 10, strategy: Strategy = "quantile"
) -> pd.DataFrame:
    """Reliability diagram data: predicted vs observed conversion per probability bin.

    Binning is that of ``sklearn.calibration.calibration_curve`` (same edges, same
    assignment), with the bin sizes added; empty bins are left out.

    Returns
    -------
    DataFrame
        ``bin`` (1-based, ascending probability), ``mean_predicted``,
        ``observed_rate``, ``count``.
    """
    yy, pp = _check(y, p)
    columns = ["bin", "mean_predicted", "observed_rate", "count"]
    if yy.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    ids = _bin_ids(pp, n_bins, strategy)
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=pp, minlength=n_bins)
    sum_y = np.bincount(ids, weights=yy, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "bin": np.flatnonzero(keep) + 1,
            "mean_predicted": sum_p[keep] / count[keep],
            "observed_rate": sum_y[keep] / count[keep],
            "count": count[keep].astype(np.int64),
        }
    )


def expected_calibration_error(
    y: object, p: object, n_bins: int = 10, strategy: Strategy = "quantile"
) -> float:
    """Expected calibration error: ``sum_b n_b / n * |mean(p)_b - mean(y)_b|``.

    Parameters
    ----------
    y, p
        Labels (0/1) and predicted probabilities.
    n_bins
        Number of bins.
    strategy
        ``"quantile"`` (equal-count bins, the default: lead probabilities are skewed)
        or ``"uniform"`` (equal-width bins over [0, 1]).

    Returns
    -------
    float
        NaN for an empty input.
    """
    curve = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    n = curve["count"].sum()
    if n == 0:
        return float("nan")
    gap = np.abs(curve["mean_predicted"] - curve["observed_rate"]).to_numpy()
    return float(np.sum(curve["count"].to_numpy() * gap) / n)


def ece_by_chance(p: object, n_bins: int = 10, *, level: float = 0.95, draws: int = 2000,
                  seed: int = 0) -> float:
    """The expected calibration error that perfectly calibrated probabilities ``p`` exceed
    with probability ``1 - level`` on this many rows, by chance alone.

    Each bin's observed rate scatters around its mean probability by about
    ``sqrt(p (1 - p) / n_bin)``: on a few hundred leads a calibrated model shows an ECE of
    0.03-0.06. Labels are drawn as if ``p`` were true (each bin's count of converters
    binomial with the bin's mean probability, a slight over-estimate of the scatter), with the
    bins of :func:`expected_calibration_error`. NaN for an empty input.
    """
    pp = _scores(p, np.asarray(p).size, probability=True)
    if pp.size == 0:
        return float("nan")
    bins = _bin_ids(pp, n_bins, "quantile")
    counts = np.bincount(bins, minlength=n_bins)
    used = counts > 0
    n_b = counts[used]
    mean_p = np.bincount(bins, weights=pp, minlength=n_bins)[used] / n_b
    hits = np.random.default_rng(seed).binomial(n_b, mean_p, size=(draws, n_b.size))
    ece = (np.abs(hits / n_b - mean_p) * n_b).sum(axis=1) / pp.size
    return float(np.quantile(ece, level))


# ---------------------------------------------------------------------------
# ranking: deciles, lift, recall at the top
# ---------------------------------------------------------------------------


def _ranked(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score-descending order; tie-group edges and cumulative positives at them.

    ``np.interp(k, edges, cum_at_edges)`` is the expected number of positives among
    the ``k`` best-scored leads, ties broken at random.
    """
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    n = ps.size
    edges = np.concatenate([[0], np.flatnonzero(np.diff(ps) != 0) + 1, [n]])
    cum = np.concatenate([[0.0], np.cumsum(ys)])
    return ps, edges.astype(float), cum[edges]


def _top_count(n: int, fraction: float) -> int:
    return int(np.ceil(round(fraction * n, 9)))


def decile_table(y: object, p: object, n_groups: int = 10) -> pd.DataFrame:
    """Conversion by score decile (1 = highest scores).

    Deciles hold ``ceil(d * n / 10) - ceil((d - 1) * n / 10)`` leads. Leads tied on
    the score across a decile boundary are shared in expectation, so ``positives``
    may be fractional when there are ties.

    Parameters
    ----------
    y, p
        Labels (0/1) and scores (any real numbers; higher = more likely).
    n_groups
        Number of groups (10 for deciles).

    Returns
    -------
    DataFrame
        ``decile``, ``count``, ``positives``, ``conversion_rate``,
        ``mean_probability``, ``lift`` (conversion rate / overall rate) and
        ``cumulative_recall`` (share of all positives in this and better deciles,
        the gain curve). Empty deciles (fewer leads than groups) have count 0 and
        NaN rates.
    """
    if n_groups < 1:
        raise ValueError("n_groups must be >= 1")
    yy, pp = _check(y, p, probability=False)
    n = yy.size
    ps, edges, cum_at = _ranked(yy, pp)
    bounds = (np.arange(n_groups + 1) * n + n_groups - 1) // n_groups
    cum_pos = np.interp(bounds, edges, cum_at) if n else np.zeros(n_groups + 1)
    cum_p = np.concatenate([[0.0], np.cumsum(ps)])[bounds]
    count = np.diff(bounds)
    positives = np.diff(cum_pos)
    total_pos = float(yy.sum())
    overall = total_pos / n if n else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(count > 0, positives / np.maximum(count, 1), np.nan)
        mean_p = np.where(count > 0, np.diff(cum_p) / np.maximum(count, 1), np.nan)
        lift = rate / overall if overall > 0 else np.full(n_groups, np.nan)
        recall = cum_pos[1:] / total_pos if total_pos > 0 else np.full(n_groups, np.nan)
    return pd.DataFrame(
        {
            "decile": np.arange(1, n_groups + 1),
            "count": count.astype(np.int64),
            "positives": positives,
            "conversion_rate": rate,
            "mean_probability": mean_p,
            "lift": lift,
            "cumulative_recall": recall,
        }
    )


def _recall_and_lift_at(
    yy: np.ndarray, pp: np.ndarray, fraction: float
) -> tuple[float, float]:
    n = yy.size
    total_pos = float(yy.sum())
    if n == 0 or total_pos == 0:
        return float("nan"), float("nan")
    k = _top_count(n, fraction)
    _, edges, cum_at = _ranked(yy, pp)
    top_pos = float(np.interp(k, edges, cum_at))
    return top_pos / total_pos, (top_pos / k) / (total_pos / n)


# ---------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------


def binary_metrics(y: object, p: object, n_bins: int = 10) -> dict[str, float]:
    """Discrimination, calibration and lift of predicted probabilities.

    Returns
    -------
    dict
        ``roc_auc``, ``pr_auc`` (average precision), ``log_loss``, ``brier``,
        ``ece`` (quantile bins), ``top_decile_lift``, ``recall_top10``,
        ``recall_top20`` (share of positives in the best-scored 10% / 20%),
        ``positive_rate`` and ``n``. Metrics that are undefined for the input (AUCs
        with one class, lift and recall without positives, everything on an empty
        input) are NaN; no exception.
    """
    yy, pp = _check(y, p)
    n = yy.size
    nan = float("nan")
    if n == 0:
        return {**{k: nan for k in METRIC_NAMES}, "n": 0.0}
    both = 0 < yy.sum() < n
    pc = np.clip(pp, _EPS, 1 - _EPS)
    recall10, lift10 = _recall_and_lift_at(yy, pp, 0.1)
    recall20, _ = _recall_and_lift_at(yy, pp, 0.2)
    return {
        "roc_auc": float(roc_auc_score(yy, pp)) if both else nan,
        "pr_auc": float(average_precision_score(yy, pp)) if both else nan,
        "log_loss": float(-np.mean(yy * np.log(pc) + (1 - yy) * np.log(1 - pc))),
        "brier": float(np.mean((pp - yy) ** 2)),
        "ece": expected_calibration_error(yy, pp, n_bins=n_bins),
        "top_decile_lift": lift10,
        "recall_top10": recall10,
        "recall_top20": recall20,
        "positive_rate": float(yy.mean()),
        "n": float(n),
    }


def compare(scorers: Mapping[str, object], y: object) -> pd.DataFrame:
    """:func:`binary_metrics` of several scorers on the same labels.

    Parameters
    ----------
    scorers
        Scorer name -> predicted probabilities (same rows as ``y``).
    y
        Labels.

    Returns
    -------
    DataFrame
        One row per scorer (input order): ``scorer``, the metric columns, then
        ``ece_by_chance``: the ECE a calibrated scorer would exceed by chance one time in
        twenty on these rows (:func:`ece_by_chance`), and ``roc_auc_low``, ``roc_auc_high``:
        the 95 % interval of ROC AUC (:func:`roc_auc_intervals`; NaN with fewer than two rows
        of a class).
    """
    rows = [{"scorer": name, **binary_metrics(y, p), "ece_by_chance": ece_by_chance(p)}
            for name, p in scorers.items()]
    frame = pd.DataFrame(rows, columns=["scorer", *METRIC_NAMES, "ece_by_chance"])
    frame["n"] = frame["n"].astype(np.int64)
    frame["roc_auc_low"] = frame["roc_auc_high"] = np.nan
    labels = _labels(y)
    if scorers and min(labels.sum(), labels.size - labels.sum()) >= 2:
        intervals = roc_auc_intervals(scorers, labels)
        frame["roc_auc_low"] = intervals["low"].to_numpy()
        frame["roc_auc_high"] = intervals["high"].to_numpy()
    return frame


def _delong(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC of each row of ``scores`` and their covariance matrix, by DeLong's method
    (DeLong, DeLong & Clarke-Pearson 1988; midranks as in Sun & Xu 2014). Ties count half."""
    from scipy.stats import rankdata

    pos, neg = scores[:, positive], scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (ranks[:, :m] - rankdata(pos, axis=1)) / n  # per positive: share of negatives below
    v01 = 1 - (ranks[:, m:] - rankdata(neg, axis=1)) / m  # per negative: share of positives above
    auc = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def roc_auc_intervals(
    scorers: Mapping[str, object],
    y: object,
    *,
    baseline: str | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """ROC AUC of several scorers on the same rows, with confidence intervals.

    A held-out set of a few thousand leads moves ROC AUC by about a hundredth from one
    random split to the next; the interval says how far. Standard errors are DeLong's, which
    also gives the covariance of scorers judged on the same rows: the difference with a
    baseline gets an interval of its own, narrower than the two AUC intervals suggest when
    the scorers agree. Normal intervals, clipped to [0, 1] (and [-1, 1] for differences).

    Parameters
    ----------
    scorers
        Scorer name -> scores (same rows as ``y``; any real numbers, only their order counts).
    baseline
        A scorer to compare the others with: adds the paired difference of ROC AUC, its
        interval, and the two-sided p-value of "no difference".
    level
        Two-sided coverage of the intervals.

    Returns
    -------
    DataFrame
        Indexed by scorer (input order): ``roc_auc``, ``se``, ``low``, ``high``; with a
        baseline also ``minus_baseline``, ``minus_low``, ``minus_high`` and ``p_value``.
    """
    from scipy.stats import norm

    yy = _labels(y)
    if min(yy.sum(), yy.size - yy.sum()) < 2:
        raise ValueError("ROC AUC intervals need at least two rows of each class among the labels")
    if baseline is not None and baseline not in scorers:
        raise ValueError(f"baseline {baseline!r} is not one of the scorers {list(scorers)}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    names = list(scorers)
    stacked = np.vstack([_scores(scorers[k], yy.size, probability=False) for k in names])
    auc, cov = _delong(stacked, yy == 1)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    z = float(norm.ppf(0.5 + level / 2))
    table = pd.DataFrame({"roc_auc": auc, "se": se, "low": np.clip(auc - z * se, 0, 1),
                          "high": np.clip(auc + z * se, 0, 1)}, index=pd.Index(names, name="scorer"))
    if baseline is not None:
        b = names.index(baseline)
        diff = auc - auc[b]
        d_se = np.sqrt(np.clip(np.diag(cov) + cov[b, b] - 2 * cov[:, b], 0, None))
        table["minus_baseline"] = diff
        table["minus_low"] = np.clip(diff - z * d_se, -1, 1)
        table["minus_high"] = np.clip(diff + z * d_se, -1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            table["p_value"] = np.where(d_se > 0, 2 * norm.sf(np.abs(diff) / d_se), 1.0)
    return table
