"""The canonical tables, declared once.

Column names, kinds and vocabularies of the three input tables (``contacts``,
``events``, ``stages``), the ``truth`` table of the synthetic generator and the
output of every scorer. The loader, the data tests, the MLflow signature and the
HTTP request types all read from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["id", "str", "float", "int", "bool", "timestamp"]

EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "pricing_view",
    "content_download",
    "webinar_registered",
    "webinar_attended",
    "email_open",
    "email_click",
    "form_submit",
    "demo_request",
    "chat",
    "unsubscribe",
    "email_bounce",
)
OTHER_EVENT = "other"  # unknown event types are kept under this name, counted and reported

PAGE_CATEGORIES: tuple[str, ...] = ("blog", "product", "pricing", "careers", "docs")

STAGES: tuple[str, ...] = (
    "suspect",
    "lead",
    "mql",
    "sql",
    "opportunity",
    "customer",
    "cold",
    "disqualified",
)
# Rank along the funnel; cold and disqualified sit outside it.
FUNNEL_RANK: dict[str, int] = {
    "suspect": 0,
    "lead": 1,
    "mql": 2,
    "sql": 3,
    "opportunity": 4,
    "customer": 5,
}
CONVERTED_STAGES: frozenset[str] = frozenset({"opportunity", "customer"})
#: the stages at which a lead is not scored, and why (the batch's counts, the service's
#: ``not_eligible``)
NOT_SCORED_REASON: dict[str, str] = {**{s: "converted" for s in CONVERTED_STAGES},
                                     "disqualified": "disqualified"}
NOT_SCORED_STAGES: frozenset[str] = frozenset(NOT_SCORED_REASON)

LEAD_SOURCES: tuple[str, ...] = (
    "web_form",
    "webinar",
    "trade_show",
    "purchased_list",
    "referral",
    "paid_search",
    "organic_search",
    "social",
    "partner",
)

BANDS: tuple[str, ...] = ("A", "B", "C", "D")


@dataclass(frozen=True)
class TableSchema:
    """Required and optional columns of one input table, with their kinds."""

    name: str
    required: dict[str, Kind]
    optional: dict[str, Kind] = field(default_factory=dict)

    @property
    def columns(self) -> dict[str, Kind]:
        return {**self.required, **self.optional}


CONTACTS = TableSchema(
    name="contacts",
    required={"contact_id": "id", "created_at": "timestamp"},
    optional={
        "email": "str",
        "phone": "str",
        "company_name": "str",
        "company_domain": "str",
        "job_title": "str",
        "industry": "str",
        "employees": "float",
        "annual_revenue": "float",
        "country": "str",
        "lead_source": "str",
        "do_not_email": "bool",
    },
)

EVENTS = TableSchema(
    name="events",
    required={"contact_id": "id", "ts": "timestamp", "event_type": "str"},
    optional={"page_category": "str", "campaign_id": "str", "channel": "str"},
)

STAGE_CHANGES = TableSchema(
    name="stages",
    required={"contact_id": "id", "ts": "timestamp", "stage": "str"},
)

TRUTH = TableSchema(
    name="truth",
    required={"contact_id": "id", "as_of": "timestamp", "p_convert_90d": "float"},
)

TABLES: dict[str, TableSchema] = {
    t.name: t for t in (CONTACTS, EVENTS, STAGE_CHANGES)
}

OUTPUT_COLUMNS: tuple[str, ...] = (
    "contact_id",
    "probability",
    "score",
    "band",
    "reasons",
    "scorer",
    "model_name",
    "model_version",
    "scored_at",
)


# ---------------------------------------------------------------------------
# The model-input (feature) table: one row per (contact_id, as_of).
# Names are read by sales managers in reason codes: keep them plain.
# ---------------------------------------------------------------------------

SENIORITIES: tuple[str, ...] = (
    "c_level", "vp", "director", "manager", "individual", "student", "unknown",
)
DEPARTMENTS: tuple[str, ...] = (
    "executive", "marketing", "sales", "it", "engineering", "finance",
    "operations", "hr", "purchasing", "other", "unknown",
)
EMAIL_QUALITIES: tuple[str, ...] = ("corporate", "free", "disposable", "invalid", "missing")
EMPLOYEE_BANDS: tuple[str, ...] = (
    "1-9", "10-49", "50-249", "250-999", "1000-4999", "5000+", "unknown",
)
EMPLOYEE_EDGES: tuple[float, ...] = (10, 50, 250, 1000, 5000)
REVENUE_BANDS: tuple[str, ...] = (
    "<1M", "1M-10M", "10M-50M", "50M-250M", "250M-1B", "1B+", "unknown",
)
REVENUE_EDGES: tuple[float, ...] = (1e6, 1e7, 5e7, 2.5e8, 1e9)

WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
ENGAGEMENT_TYPES: tuple[str, ...] = EVENT_TYPES + (OTHER_EVENT,)

KEY_COLUMNS: tuple[str, ...] = ("contact_id", "as_of")
LABEL = "converted"  # reached opportunity or beyond within horizon_days after as_of

CATEGORICAL_FEATURES: tuple[str, ...] = (
    "industry", "employees_band", "revenue_band", "country", "lead_source",
    "seniority", "department", "email_quality", "stage",
)
FIT_NUMERIC_FEATURES: tuple[str, ...] = (
    "employees", "annual_revenue", "has_phone", "do_not_email",
    "profile_completeness", "contact_age_days",
)
ENGAGEMENT_FEATURES: tuple[str, ...] = (
    tuple(f"{t}_{w}d" for t in ENGAGEMENT_TYPES for w in WINDOWS_DAYS)  # counts in window
    + tuple(f"days_since_{t}" for t in EVENT_TYPES)  # NaN when never
    + ("days_since_last_event",)
    + tuple(f"{t}_decayed" for t in EVENT_TYPES)  # sum of 0.5 ** (age_days / half_life)
    + (
        "engagement_decayed",  # all event types, same half-life
        "active_days_30d",
        "active_days_90d",
        "engagement_trend",  # (events last 7d + 1) / (7/30 * events in the 30d before + 1)
        "distinct_content_90d",  # distinct campaign_id of downloads and webinars
        "email_ctr_90d",  # email_click_90d / email_open_90d, NaN without opens
        "unsubscribed",  # ever, 0/1
        "bounced",  # ever, 0/1
        "days_in_stage",
        "stage_regressions",  # moves back along the funnel, or to cold, so far
    )
)
NUMERIC_FEATURES: tuple[str, ...] = FIT_NUMERIC_FEATURES + ENGAGEMENT_FEATURES
FEATURES: tuple[str, ...] = CATEGORICAL_FEATURES + NUMERIC_FEATURES
