"""The funnel and model report: KPI tables as CSV and one self-contained ``report.html``.

:func:`build_report` computes the funnel KPIs (:mod:`serving.kpis`), the score quality and
the feature drift (:mod:`serving.drift`), writes every table as a CSV file and renders the
plots with matplotlib's Agg canvas into PNGs embedded as base64 ``data:`` URIs, so the HTML
opens offline, with no external CSS, script or font. Only aggregates reach the report:
no contact-level row, hence no email, name or phone.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.schema import STAGES
from serving import kpis
from serving.drift import psi_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["build_report"]

_MAX_PSI_BARS = 25
# shares, rates and recalls are shown as percentages ("generated" is not a rate)
_PERCENT_COLUMN = re.compile(r"(^|[_\s])(share|rate|recall)")
_MAX_MONTH_COLUMNS = 12
_COLORS = {
    "model": "#1f6fb4",
    "rules": "#e07b22",
    "random": "#888888",
    "ok": "#3a9a4a",
    "warn": "#e0a422",
    "alert": "#c8382c",
    "n/a": "#aaaaaa",
}
_BAND_COLORS = {"A": "#c8382c", "B": "#e07b22", "C": "#3f8fd2", "D": "#9aa5b1"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#1d2430;max-width:1100px;margin:0 auto;padding:16px 24px;line-height:1.45}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid #dde3ea;
 padding-bottom:3px;margin-top:1.8em}h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#5b6675;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#f3f6f9;border:1px solid #dde3ea;border-radius:6px;padding:8px 14px;
 min-width:130px}.card .v{font-size:1.45em;font-weight:600}.card .k{font-size:.8em;
 color:#5b6675;text-transform:uppercase;letter-spacing:.03em}
table{border-collapse:collapse;font-size:.85em;margin:6px 0 12px}
th,td{border:1px solid #dde3ea;padding:3px 8px;text-align:right}
th{background:#eef2f6;white-space:nowrap}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;height:auto;display:block;margin:8px 0}
p.absent{color:#6b5b00;background:#fff8dc;border-left:4px solid #e0c64a;padding:6px 10px}
.note{color:#5b6675;font-size:.85em}
"""


# ---------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.1f}%"


def _num(x: Any, digits: int = 3) -> str:
    if x is None or pd.isna(x):
        return "–"
    x = float(x)
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) >= 1:
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def _int(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"{int(x):,}"


def _formatter(column: str, series: pd.Series) -> Callable[[Any], str] | None:
    if _PERCENT_COLUMN.search(column.lower()):
        return _pct
    if "days" in column.lower():
        return lambda x: _num(x, 1)
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return _int
    if pd.api.types.is_float_dtype(series.dtype):
        return _num
    return None


def _table(df: pd.DataFrame, *, max_rows: int | None = None) -> str:
    """An escaped HTML table with per-column formatting (percent for shares and rates)."""
    note = ""
    if max_rows is not None and len(df) > max_rows:
        note = f'<p class="note">First {max_rows} of {len(df)} rows; all are in the CSV.</p>'
        df = df.head(max_rows)
    df = df.reset_index(drop=True)
    formatters = {}
    for col in df.columns:
        f = _formatter(str(col), df[col])
        if f is not None:
            formatters[col] = f
    body = df.to_html(
        index=False,
        escape=True,
        formatters=formatters,
        na_rep="–",
        border=0,
        classes=None,
        justify="right",
    )
    return body + note


def _absent(sentence: str) -> str:
    return f'<p class="absent">{html.escape(sentence)}</p>'


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'


# ---------------------------------------------------------------------------
# plotting
# ---------------------------------------------------------------------------


def _new_figure(width: float = 9.0, height: float = 4.2, ncols: int = 1) -> tuple[Figure, Any]:
    # The Agg canvas is attached explicitly: no pyplot, no global backend switch, so the
    # report renders headless and leaves the caller's matplotlib state alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=True)
    return fig, axes


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _thousands(axis: Any) -> None:
    from matplotlib.ticker import StrMethodFormatter

    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _style(ax: Any) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(axis="both", alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


def _plot_funnel(counts: pd.DataFrame, conversion: pd.DataFrame) -> str:
    fig, (ax1, ax2) = _new_figure(10, 4.4, ncols=2)
    order = list(STAGES)[::-1]
    c = counts.set_index("stage").reindex(order)
    ax1.barh(order, c["contacts"], color="#3f8fd2")
    for y, v in enumerate(c["contacts"]):
        ax1.text(v, y, f" {int(v):,}", va="center", fontsize=8)
    _thousands(ax1.xaxis)
    ax1.set_title("Contacts by current stage")
    ax1.set_xlabel("contacts")
    ax1.set_ylabel("current stage")
    ax1.margins(x=0.18)
    _style(ax1)

    path = list(kpis.FUNNEL_PATH)
    reached = list(conversion["generated"]) + [int(conversion["converted"].iloc[-1])]
    rates = list(conversion["rate"])
    top = max(max(reached), 1)
    ys = np.arange(len(path))[::-1]
    ax2.barh(ys, reached, left=[(top - v) / 2 for v in reached], color="#1f6fb4", height=0.7)
    for y, v in zip(ys, reached, strict=True):
        ax2.text(
            top / 2,
            y,
            f"{int(v):,}",
            va="center",
            ha="center",
            color="white" if v > 0.25 * top else "#1d2430",
            fontsize=8,
            fontweight="bold",
        )
    for y, r in zip(ys[1:], rates, strict=True):
        ax2.text(top * 1.02, y + 0.5, f"{_pct(r)} ↓", va="center", fontsize=8, color="#5b6675")
    ax2.set_yticks(ys, path)
    ax2.set_xlim(0, top * 1.2)
    ax2.set_xticks([])  # bars are centred: the width is the count written on the bar
    ax2.set_title("Contacts that ever reached each stage")
    ax2.set_xlabel("contacts (bar width); ↓ conversion rate to the next stage", fontsize=9)
    _style(ax2)
    ax2.spines["bottom"].set_visible(False)
    return _img(fig, "Funnel: contacts by current stage and contacts reaching each stage")


def _plot_leads_per_month(by_month: pd.DataFrame) -> str:
    pivot = by_month.pivot_table(
        index="month", columns="lead_source", values="leads", aggfunc="sum", fill_value=0
    ).sort_index()
    pivot = pivot[pivot.sum().sort_values(ascending=False).index]
    fig, ax = _new_figure(10, 4.4)
    x = np.arange(len(pivot))
    bottom = np.zeros(len(pivot))
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for i, src in enumerate(pivot.columns):
        vals = pivot[src].to_numpy(dtype=float)
        ax.bar(x, vals, bottom=bottom, label=str(src), color=cmap(i % 10), width=0.8)
        bottom += vals
    step = max(1, int(np.ceil(len(x) / 18)))
    ax.set_xticks(x[::step], list(pivot.index[::step]), rotation=45, ha="right")
    ax.set_title("Leads generated per source and month")
    ax.set_xlabel("month of creation")
    ax.set_ylabel("leads (contacts created)")
    _thousands(ax.yaxis)
    ax.legend(fontsize=7, ncols=1, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _style(ax)
    return _img(fig, "Stacked bars of leads generated per source and month")


def _plot_velocity(velocity: pd.DataFrame) -> str | None:
    v = velocity.loc[velocity["completed_spells"] > 0]
    if v.empty:
        return None
    fig, ax = _new_figure(9, 3.8)
    ys = np.arange(len(v))[::-1]
    ax.barh(ys, v["median_days"], color="#3f8fd2", height=0.6, label="median")
    ax.scatter(
        v["p90_days"], ys, marker="|", s=300, color="#c8382c", label="90th percentile", zorder=3
    )
    for y, med, n in zip(ys, v["median_days"], v["completed_spells"], strict=True):
        ax.text(med, y, f" {med:.1f} d (n={int(n):,})", va="center", fontsize=8)
    ax.set_yticks(ys, list(v["stage"]))
    ax.set_title("Stage velocity: days spent in a stage (completed spells)")
    ax.set_xlabel("days in stage")
    ax.set_ylabel("stage")
    ax.margins(x=0.2)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)
    return _img(fig, "Median and 90th percentile of days spent in each stage")


def _color(scorer: str) -> str:
    return _COLORS.get(scorer, _COLORS["model"])


def _plot_deciles(q: kpis.ScoreQuality, positive_rate: float, label: str = "model") -> str:
    fig, ax = _new_figure(9, 4.0)
    d = q.deciles
    x = d["decile"].to_numpy()
    width = 0.4 if q.rules_deciles is not None else 0.7
    shift = width / 2 if q.rules_deciles is not None else 0.0
    ax.bar(x - shift, 100 * d["conversion_rate"], width=width, color=_color(label), label=label)
    if q.rules_deciles is not None:
        ax.bar(
            x + shift,
            100 * q.rules_deciles["conversion_rate"],
            width=width,
            color=_COLORS["rules"],
            label="rules",
        )
    ax.axhline(
        100 * positive_rate,
        color="#1d2430",
        linestyle="--",
        linewidth=1,
        label=f"overall rate {_pct(positive_rate)}",
    )
    ax.set_xticks(x)
    ax.set_title("Conversion rate by score decile (1 = highest scores)")
    ax.set_xlabel("score decile")
    ax.set_ylabel("conversion rate (%)")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _img(fig, "Conversion rate per score decile")


def _plot_gain_lift(q: kpis.ScoreQuality, label: str = "model") -> str:
    fig, (ax1, ax2) = _new_figure(10, 4.2, ncols=2)
    curves = [(label, q.deciles)]
    if q.rules_deciles is not None:
        curves.append(("rules", q.rules_deciles))
    for name, d in curves:
        n = d["count"].sum()
        frac = np.concatenate([[0.0], np.cumsum(d["count"]) / max(n, 1)])
        gain = np.concatenate([[0.0], d["cumulative_recall"].fillna(0).to_numpy()])
        ax1.plot(100 * frac, 100 * gain, marker="o", markersize=3, color=_color(name), label=name)
    ax1.plot([0, 100], [0, 100], linestyle="--", color=_COLORS["random"], label="random")
    ax1.set_title("Cumulative gain")
    ax1.set_xlabel("contacts called, best scores first (%)")
    ax1.set_ylabel("conversions captured (%)")
    ax1.set_xlim(0, 100)
    ax1.set_ylim(0, 102)
    ax1.legend(fontsize=8, frameon=False, loc="lower right")
    _style(ax1)

    width = 0.4 if len(curves) > 1 else 0.7
    for i, (name, d) in enumerate(curves):
        off = (i - (len(curves) - 1) / 2) * width
        ax2.bar(d["decile"] + off, d["lift"], width=width, color=_color(name), label=name)
    ax2.axhline(1.0, color=_COLORS["random"], linestyle="--", linewidth=1, label="random (1×)")
    ax2.set_xticks(q.deciles["decile"])
    ax2.set_title("Lift by score decile")
    ax2.set_xlabel("score decile (1 = highest scores)")
    ax2.set_ylabel("lift (× overall conversion rate)")
    ax2.legend(fontsize=8, frameon=False)
    _style(ax2)
    return _img(fig, "Cumulative gain curve and lift per decile")


def _plot_calibration(q: kpis.ScoreQuality, label: str = "model") -> str:
    fig, ax = _new_figure(6.2, 5.2)
    curves = [(label, q.reliability)]
    if q.rules_reliability is not None:
        curves.append(("rules", q.rules_reliability))
    top = 0.0
    for name, r in curves:
        ax.plot(
            100 * r["mean_predicted"],
            100 * r["observed_rate"],
            marker="o",
            markersize=4,
            color=_color(name),
            label=name,
        )
        top = max(top, float(r["mean_predicted"].max()), float(r["observed_rate"].max()))
    top = min(100.0, max(100 * top * 1.08, 1.0))
    ax.plot(
        [0, top], [0, top], linestyle="--", color=_COLORS["random"], label="perfectly calibrated"
    )
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_title("Calibration (probability bins of equal size)")
    ax.set_xlabel("mean predicted probability (%)")
    ax.set_ylabel("observed conversion rate (%)")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    _style(ax)
    return _img(fig, "Calibration curve with the diagonal")


def _plot_model_vs_rules(metrics: pd.DataFrame) -> str:
    fig, (ax1, ax2) = _new_figure(10, 4.0, ncols=2)
    names = [
        ("roc_auc", "ROC AUC"),
        ("pr_auc", "PR AUC"),
        ("recall_top10", "recall top 10%"),
        ("recall_top20", "recall top 20%"),
    ]
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    for i, row in enumerate(metrics.itertuples(index=False)):
        vals = [getattr(row, k) for k, _ in names]
        color = _color(row.scorer)
        bars = ax1.bar(
            x + (i - (len(metrics) - 1) / 2) * width,
            vals,
            width=width,
            color=color,
            label=row.scorer,
        )
        ax1.bar_label(bars, labels=[_num(v, 2) for v in vals], fontsize=7)
        ax2.bar(i, row.top_decile_lift, color=color, width=0.6)
        ax2.text(
            i,
            row.top_decile_lift,
            f"{_num(row.top_decile_lift, 2)}×",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.set_xticks(x, [label for _, label in names])
    ax1.set_ylim(0, 1.08)
    ax1.set_title("Model vs rules: ranking quality")
    ax1.set_ylabel("metric value (0–1, higher is better)")
    ax1.set_xlabel("metric")
    ax1.legend(fontsize=8, frameon=False, loc="upper right")
    _style(ax1)
    ax2.set_xticks(range(len(metrics)), list(metrics["scorer"]))
    ax2.axhline(1.0, color=_COLORS["random"], linestyle="--", linewidth=1)
    ax2.set_title("Top-decile lift")
    ax2.set_ylabel("lift (× overall conversion rate)")
    ax2.set_xlabel("scorer")
    ax2.margins(y=0.15)
    _style(ax2)
    return _img(fig, "Model versus rules scorer metrics")


def _plot_bands(shares: pd.DataFrame) -> str:
    fig, ax = _new_figure(8, 3.8)
    x = np.arange(len(shares))
    has_prev = "previous_share" in shares.columns
    width = 0.38 if has_prev else 0.6
    now = ax.bar(
        x + (width / 2 if has_prev else 0),
        100 * shares["share"],
        width=width,
        color=[_BAND_COLORS.get(b, "#777") for b in shares["band"]],
        label="now",
    )
    ax.bar_label(
        now,
        labels=[
            f"{_pct(s)}\n{int(c):,}"
            for s, c in zip(shares["share"], shares["contacts"], strict=True)
        ],
        fontsize=7,
    )
    if has_prev:
        ax.bar(
            x - width / 2,
            100 * shares["previous_share"],
            width=width,
            color="#eef2f6",
            edgecolor="#9aa5b1",
            hatch="//",
            label="previous scoring",
        )
        ax.legend(fontsize=8, frameon=False)
    ax.set_xticks(x, [f"band {b}" for b in shares["band"]])
    ax.set_title("Contacts per priority band")
    ax.set_xlabel("priority band (A = call now)")
    ax.set_ylabel("share of scored contacts (%)")
    ax.margins(y=0.2)
    _style(ax)
    return _img(fig, "Share of contacts per priority band")


def _plot_psi(table: pd.DataFrame, warn: float, alert: float) -> str:
    t = table.dropna(subset=["psi"]).head(_MAX_PSI_BARS)
    fig, ax = _new_figure(9, max(2.6, 0.28 * len(t) + 1.4))
    ys = np.arange(len(t))[::-1]
    bars = ax.barh(ys, t["psi"], color=[_COLORS[s] for s in t["status"]], height=0.7)
    ax.bar_label(bars, labels=[f" {v:.3f}" for v in t["psi"]], fontsize=7)
    ax.axvline(warn, color=_COLORS["warn"], linestyle="--", linewidth=1.2, label=f"warn ({warn:g})")
    ax.axvline(
        alert, color=_COLORS["alert"], linestyle="--", linewidth=1.2, label=f"alert ({alert:g})"
    )
    ax.set_yticks(ys, list(t["feature"]), fontsize=8)
    ax.set_xlim(0, max(float(t["psi"].max()) if len(t) else 0.0, alert) * 1.15)
    title = "Feature drift: population stability index"
    if len(table) > len(t):
        title += f" (top {len(t)} of {len(table)})"
    ax.set_title(title)
    ax.set_xlabel("PSI (unitless; current base vs training data)")
    ax.set_ylabel("feature")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    _style(ax)
    return _img(fig, "PSI per feature with warn and alert thresholds")


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def scorer_label(scores: pd.DataFrame) -> str:
    """Which scorer produced ``scores``, from their ``scorer`` column: ``model``, ``rules``, or
    ``model+rules`` when the model failed on part of them (scores with no such column are taken
    to be a model's)."""
    if "scorer" not in scores.columns:
        return "model"
    names = sorted({str(v) for v in scores["scorer"].dropna().unique()})
    if not names:
        return "model"
    if len(names) == 1:
        return names[0]
    return "model+rules" if set(names) == {"model", "rules"} else "+".join(names)


def _scorer_words(scores: pd.DataFrame) -> str:
    """"model lead-scoring v7" / "the rule scorer", for a sentence."""
    label = scorer_label(scores)
    if label == "rules":
        return "the rule scorer (no model was available)"
    if label == "model" and {"model_name", "model_version"} <= set(scores.columns) and len(scores):
        name, version = scores["model_name"].iloc[0], scores["model_version"].iloc[0]
        return f"the model {name} v{version}"
    return "the model" if label == "model" else f"the scorers {label}"


@dataclass
class _Doc:
    out_dir: Path
    parts: list[str] = field(default_factory=list)
    csvs: list[str] = field(default_factory=list)

    def add(self, *chunks: str | None) -> None:
        self.parts.extend(c for c in chunks if c)

    def csv(self, name: str, df: pd.DataFrame) -> None:
        df.to_csv(self.out_dir / name, index=False)
        self.csvs.append(name)


def _card(label: str, value: str) -> str:
    return (
        f'<div class="card"><div class="k">{html.escape(label)}</div>'
        f'<div class="v">{html.escape(value)}</div></div>'
    )


def _conversion_pivot(by_source: pd.DataFrame, by: str) -> pd.DataFrame:
    wide = by_source.assign(pair=by_source["from_stage"] + "→" + by_source["to_stage"]).pivot(
        index=by, columns="pair", values="rate"
    )
    pairs = [f"{a}→{b}" for a, b in pairwise(kpis.FUNNEL_PATH)]
    leads = by_source.loc[by_source["from_stage"] == "lead"].set_index(by)["generated"]
    out = wide.reindex(columns=pairs)
    out.columns = [f"{p} rate" for p in pairs]
    out.insert(0, "leads", leads.reindex(out.index).astype(np.int64))
    return out.sort_values("leads", ascending=False).reset_index()


def build_report(
    contacts: pd.DataFrame,
    stages: pd.DataFrame,
    *,
    scores: pd.DataFrame | None = None,
    previous: pd.DataFrame | None = None,
    reference_features: pd.DataFrame | None = None,
    current_features: pd.DataFrame | None = None,
    backtest: pd.DataFrame | None = None,
    target_opportunities: float = 100,
    out_dir: str | Path,
    as_of: Any = None,
    psi_columns: Sequence[str] | None = None,
    psi_warn: float = 0.1,
    psi_alert: float = 0.25,
) -> Path:
    """Compute the funnel and model KPIs, write them as CSV and render ``report.html``.

    Parameters
    ----------
    contacts, stages
        Canonical tables (validated).
    scores
        Scorer output for the base; optionally with ``converted`` (0/1 observed outcome)
        for the quality section and ``rules_probability`` for the model-vs-rules comparison.
    previous
        The previous scoring, for band shares then and new A leads.
    reference_features, current_features
        Feature tables for drift: the champion's training data and today's base.
    backtest
        Scores of an earlier as-of date with the observed ``converted`` outcome (and
        ``rules_probability``); when given, the score-quality section uses it.
    target_opportunities
        Sales goal worked back to the leads needed.
    out_dir
        Folder for ``report.html`` and the CSV files (created if needed).
    as_of
        Snapshot date for stage counts and velocity (default: everything known).
    psi_columns, psi_warn, psi_alert
        Features compared for drift (default: the shared columns less keys and personal
        data) and the PSI thresholds.

    Returns
    -------
    Path
        The written ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out)
    cards: list[str] = []

    # --- funnel ---------------------------------------------------------------
    counts = kpis.stage_counts_now(stages, contacts, as_of=as_of)
    by_month = kpis.leads_by_source_month(contacts)
    conversion = kpis.stage_conversion(stages, contacts, as_of=as_of)
    has_source = "lead_source" in contacts.columns
    by_source = (
        kpis.stage_conversion(stages, contacts, by="lead_source", as_of=as_of)
        if has_source
        else None
    )
    velocity = kpis.stage_velocity(stages, as_of=as_of)
    cold = kpis.cold_and_regressions(stages)
    for name, df in (
        ("stage_counts.csv", counts),
        ("leads_by_source_month.csv", by_month),
        ("stage_conversion.csv", conversion),
        ("stage_velocity.csv", velocity),
        ("cold_and_regressions.csv", cold),
    ):
        doc.csv(name, df)
    if by_source is not None:
        doc.csv("stage_conversion_by_source.csv", by_source)

    n_contacts = int(counts["contacts"].sum())
    cards.append(_card("contacts", f"{n_contacts:,}"))
    lead_to_opp = float(conversion["rate"].iloc[:3].prod())
    cards.append(_card("lead → opportunity", _pct(lead_to_opp)))

    doc.add("<h2>Funnel</h2>", _plot_funnel(counts, conversion))
    doc.add("<h3>Contacts by current stage</h3>", _table(counts))
    doc.add(
        "<h3>Conversion between stages</h3>",
        _p(
            "Generated: contacts that reached the from-stage (or a later one); converted: "
            "those that went on to the to-stage or beyond. A contact who skipped a stage "
            "counts as having passed through it."
        ),
        _table(conversion),
    )
    if by_source is not None:
        doc.add(
            "<h3>Conversion rates by lead source</h3>",
            _table(_conversion_pivot(by_source, "lead_source")),
        )
    else:
        doc.add(
            _absent(
                "The contacts carry no lead_source column, so conversion by source is not shown."
            )
        )

    doc.add("<h2>Leads generated</h2>")
    if by_month.empty:
        doc.add(_absent("No contact has a creation date, so leads per month cannot be shown."))
    else:
        doc.add(_plot_leads_per_month(by_month))
        wide = by_month.pivot_table(
            index="lead_source", columns="month", values="leads", aggfunc="sum", fill_value=0
        )
        months = sorted(wide.columns)
        note = ""
        if len(months) > _MAX_MONTH_COLUMNS:
            wide = wide[months[-_MAX_MONTH_COLUMNS:]]
            note = _p(
                f"Last {_MAX_MONTH_COLUMNS} of {len(months)} months; all are in "
                "leads_by_source_month.csv."
            )
        wide = wide.assign(total=wide.sum(axis=1)).sort_values("total", ascending=False)
        wide.columns = [str(c) for c in wide.columns]
        doc.add(_table(wide.reset_index().astype({c: np.int64 for c in wide.columns})), note)

    doc.add("<h2>Stage velocity</h2>")
    vel_img = _plot_velocity(velocity)
    if vel_img is None:
        doc.add(
            _absent(
                "No contact has left a stage yet, so there is no completed spell to "
                "measure stage velocity on."
            )
        )
    else:
        doc.add(vel_img)
    doc.add(
        _p(
            "Days from entering a stage to the next stage change. Open spells (contacts "
            "still in the stage) are left out of the median and 90th percentile and "
            "counted apart; open_median_days is how long they have lasted so far."
        ),
        _table(velocity),
    )
    doc.add("<h3>Cold leads and regressions</h3>", _table(cold))

    doc.add("<h2>Working back from the sales goal</h2>")
    try:
        needed = kpis.leads_needed(target_opportunities, conversion)
    except ValueError as exc:
        doc.add(_absent(f"The leads needed cannot be worked out: {exc}."))
    else:
        doc.csv("leads_needed.csv", needed)
        lead_row = needed.loc[needed["stage"] == "lead", "needed_whole"]
        cards.append(
            _card(f"leads for {_num(target_opportunities)} opps", f"{int(lead_row.iloc[0]):,}")
        )
        doc.add(
            _p(
                f"To reach {_num(target_opportunities)} opportunities at the observed "
                "conversion rates, the funnel needs:"
            ),
            _table(needed),
        )

    # --- scores -----------------------------------------------------------------
    doc.add("<h2>Scores and priority bands</h2>")
    quality: kpis.ScoreQuality | None = None
    if scores is None:
        doc.add(
            _absent(
                "No scores were given, so band shares, new A leads and score quality are not shown."
            )
        )
        cards += [_card("band A share", "n/a"), _card("new A leads", "n/a")]
    else:
        shares = kpis.band_shares(scores, previous)
        level = kpis.service_level(scores, previous)
        doc.csv("band_shares.csv", shares)
        doc.csv("service_level.csv", level)
        row = level.iloc[0]
        cards.append(_card("band A share", _pct(row["band_a_share"])))
        cards.append(_card("new A leads", _int(row["new_a"]) if previous is not None else "n/a"))
        doc.add(_plot_bands(shares), _table(shares))
        if previous is None:
            doc.add(_absent("No previous scoring was given, so new A leads cannot be counted."))
        doc.add(
            "<h3>Service level</h3>",
            _p(
                "Band A leads are to be called within minutes, two days at most. New A "
                "leads: in A now, not in A (or not scored) at the previous scoring."
            ),
            _table(level),
        )

        doc.add("<h2>Score quality</h2>")
        if backtest is not None:
            when = (pd.Timestamp(backtest["as_of"].iloc[0]).date()
                    if "as_of" in backtest and len(backtest) else "the last complete date")
            doc.add(_p(
                f"Measured on a backtest: the base as it was on {when}, scored by "
                f"{_scorer_words(backtest)}, against the outcomes observed over the following "
                "horizon."
            ))
            scores = backtest
        label = scorer_label(scores)
        if label == "rules":
            doc.add(_absent(
                "The rule scorer answered, not a model (no champion model was available), so "
                "every score-quality table and chart below is the rule scorer's."
            ))
            # the rules compared with themselves would say nothing
            scores = scores.drop(columns=["rules_probability"], errors="ignore")
        if "converted" not in scores.columns:
            doc.add(
                _absent(
                    "The scores carry no observed outcome (converted), so conversion "
                    "by decile, gain and lift, calibration and the model-vs-rules "
                    "comparison cannot be computed."
                )
            )
        else:
            quality = kpis.score_quality(scores)
            quality.metrics.loc[0, "scorer"] = label  # the first row is the scores' own
            doc.csv("score_deciles.csv", quality.deciles)
            doc.csv("score_bands.csv", quality.bands)
            doc.csv("score_metrics.csv", quality.metrics)
            doc.csv("score_reliability.csv", quality.reliability)
            if quality.rules_deciles is not None:
                doc.csv("rules_deciles.csv", quality.rules_deciles)
            model = quality.metrics.iloc[0]
            cards.append(_card("positive rate", _pct(model["positive_rate"])))
            cards.append(_card(f"AUC ({label})", _num(model["roc_auc"], 3)))
            doc.add(
                "<h3>Conversion by score decile</h3>",
                _plot_deciles(quality, float(model["positive_rate"]), label),
                _table(quality.deciles),
            )
            doc.add("<h3>Gain and lift</h3>", _plot_gain_lift(quality, label))
            doc.add(
                "<h3>Calibration</h3>",
                _plot_calibration(quality, label),
                _table(quality.reliability),
            )
            doc.add("<h3>Conversion by band</h3>", _table(quality.bands))
            doc.add("<h3>Model vs rules</h3>")
            if label == "rules":
                doc.add(_absent("The scores are the rule scorer's: there is no model to compare."))
            elif quality.rules_deciles is None:
                doc.add(
                    _absent(
                        "No rule-scorer probability (rules_probability) came with the "
                        "scores, so the model is not compared with the rules."
                    )
                )
            else:
                doc.add(_plot_model_vs_rules(quality.metrics))
            doc.add(_table(quality.metrics))
    if quality is None:
        cards += [_card("positive rate", "n/a"), _card("AUC (model)", "n/a")]

    # --- drift --------------------------------------------------------------------
    doc.add("<h2>Feature drift</h2>")
    if reference_features is None or current_features is None:
        doc.add(
            _absent(
                "No reference and current feature tables were given, so drift "
                "(PSI) is not computed."
            )
        )
    else:
        drift = psi_table(
            reference_features, current_features, psi_columns, warn=psi_warn, alert=psi_alert
        )
        doc.csv("psi.csv", drift)
        if drift["psi"].notna().any():
            n_alert = int((drift["status"] == "alert").sum())
            n_warn = int((drift["status"] == "warn").sum())
            doc.add(
                _plot_psi(drift, psi_warn, psi_alert),
                _p(
                    f"{n_alert} feature(s) above {psi_alert:g} (alert: retrain), {n_warn} "
                    f"between {psi_warn:g} and {psi_alert:g} (warn)."
                ),
                _table(drift, max_rows=40),
            )
        else:
            doc.add(
                _absent(
                    "The feature tables share no comparable column with data, so "
                    "drift (PSI) is not computed."
                )
            )

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    snapshot = "everything known" if as_of is None else str(pd.Timestamp(as_of).date())
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>leadscore report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Lead funnel and scoring report</h1>"
        f'<p class="meta">Generated {html.escape(generated)} · snapshot: '
        f"{html.escape(snapshot)}</p>"
        f'<div class="cards">{"".join(cards)}</div>'
    )
    foot = _p("Tables written beside this report: " + ", ".join(doc.csvs) + ".")
    path = out / "report.html"
    path.write_text(head + "\n".join(doc.parts) + foot + "</body></html>\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# The `leadscore report` command: load, backtest, drift, render
# ---------------------------------------------------------------------------

PSI_FEATURES: tuple[str, ...] = (
    "engagement_decayed", "pricing_view_30d", "page_view_30d", "email_open_30d",
    "days_since_last_event", "active_days_30d", "contact_age_days", "employees",
    "industry", "lead_source", "seniority", "email_quality", "stage",
)


def tracking_store_exists(workdir: Path) -> bool:
    """Whether there is a tracking store to read a model from: a team's server
    (``MLFLOW_TRACKING_URI``) or the embedded store (``mlflow.db``) in ``workdir``."""
    from training.tracking import user_tracking_uri

    if user_tracking_uri() is not None:
        return True  # the user's choice: configure_tracking uses it whatever the workdir
    return (Path(workdir) / "mlflow.db").is_file()


def report_scorer(model_uri: str | None = None, workdir: Path | None = None) -> Any:
    """The scorer of the report's backtest: the champion (or ``model_uri``) of the tracking
    store of ``workdir`` (as ``leadscore score --workdir``: :func:`training.tracking.
    configure_tracking`), the rule scorer when there is none or it does not load.

    A report only reads: where there is no store (no ``MLFLOW_TRACKING_URI``, no ``mlflow.db``
    in ``workdir``) none is created, and the rule scorer answers (``reason`` says why).
    ``workdir=None``: the tracking URI already configured in this process.
    """
    from training.model import RulesOnly
    from training.registry import load_scorer
    from training.rules import RuleScorer
    from training.tracking import configure_tracking

    registry = model_uri is None or model_uri.startswith("models:/")
    if workdir is not None and registry:
        if not tracking_store_exists(workdir):
            return RulesOnly(RuleScorer(), reason=f"no MLflow store (mlflow.db) in {Path(workdir).resolve()}")
        configure_tracking(workdir)
    return load_scorer(model_uri)


def report_command(
    *, data: Path, out: Path, scores: Path | None = None, previous: Path | None = None,
    target_opportunities: float = 100, until: str | None = None, model_uri: str | None = None,
    workdir: Path | None = None, scorer: Any | None = None,
) -> Path:
    """Everything ``leadscore report`` does: load the base, backtest the scorer at the last
    as-of date whose outcomes are known, compare feature distributions between that date
    (what the champion was evaluated on) and today, and render the report.

    The backtest is scored by ``scorer``, else by :func:`report_scorer` (``model_uri``,
    ``workdir``); its rows, tables and charts are labelled with the scorer that answered
    (``rules`` when no model was available)."""
    from features.build import Snapshotter, monthly_as_of_dates
    from features.loading import load_base

    base = load_base(data, until=until)
    if scorer is None:
        scorer = report_scorer(model_uri, workdir)
    snap = Snapshotter(base.contacts, base.events, base.stages, scorer.feature_config)
    current = snap.features_at(base.until)
    backtest = reference = None
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until,
                                horizon_days=scorer.feature_config.horizon_days)
    if dates:
        reference = snap.features_at(dates[-1])
        backtest = scorer.score(reference, scored_at=dates[-1], reasons=False)
        backtest["as_of"] = dates[-1]
        backtest["converted"] = snap.labels_at(dates[-1], reference["contact_id"])
        rules = getattr(scorer, "rules", None)
        if rules is not None and scorer.scorer == "model":
            backtest["rules_probability"] = rules.predict_proba(reference)
    return build_report(
        base.contacts, base.stages,
        scores=pd.read_parquet(scores) if scores else None,
        previous=pd.read_parquet(previous) if previous else None,
        reference_features=reference, current_features=current, backtest=backtest,
        target_opportunities=target_opportunities, out_dir=out, as_of=base.until,
        psi_columns=[c for c in PSI_FEATURES if c in current.columns],
    )
