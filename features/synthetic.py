"""Synthetic B2B contact base (CRM + marketing-automation export) with ground truth.

``generate`` returns the three input tables (``contacts``, ``events``, ``stages``) and a
``truth`` table of exact conversion probabilities; ``write_tables`` writes them as
deterministic Parquet files.

The probability model
---------------------
Every canonical contact has a latent *fit* ``f`` (a logit-scale sum of effects of industry,
company size, seniority, department, lead source, email quality and country, plus an
unobserved N(0, 0.35) term) and a latent monthly *intent* state ``s`` in
{dormant, warm, hot}. ``s`` follows a sticky Markov chain whose transition matrix
``P(q)`` depends on ``q = sigmoid(f)`` (good fit: warms up more often, stays hot longer);
the first state depends on the lead source. On every day of a month a not-yet-converted
contact converts (reaches ``opportunity``) with hazard ``h(s, f) = base[s] * exp(1.1 f)``;
"junk" contacts (students, competitors, part of purchased lists, disposable emails) have
``h = 0`` and are the only ones ever ``disqualified``. Events are drawn from the state of
the month they fall in (hot: pricing pages, demo requests, webinars, form fills; warm:
blog/product pages, clicks, downloads; dormant: the odd email open), in sessions of
several pages, and at 30% of the rate after conversion. The stage history follows the
states (warm -> mql, hot -> sql, dormant -> back a stage, long dormancy -> cold).

``truth`` holds, for each as-of date ``T`` (month boundaries after the first) and each
contact eligible at ``T`` (created before ``T``, not converted, not disqualified),
``p_convert_90d = P(opportunity in [T, T + 90 days) | f, s of the month before T)``,
computed exactly by propagating the chain and the daily hazards over the calendar days of
the window. The realised conversions are drawn from the same model, so the oracle is
calibrated.

Dirt (each kind is present and tested): duplicate contacts (new id, same person, email in
another case and/or padded with spaces, often created later, carrying part of the person's
later events; no ``truth`` rows, the canonical contact has them); invalid, missing, free-mail
and disposable emails; phones in many formats, missing or garbage; missing firmographics;
unknown category spellings (industry "IT services", lead source "podcast", country "UK");
events of unknown (deleted) contact ids; events out of order (day by day, shuffled within
blocks of 1,024 rows); a few timestamps after ``end``; a few unknown event types
(``UNKNOWN_EVENT_TYPES``). The latent model always uses the clean values.

Time is simulated in integer seconds since the first month boundary; nothing in this module
loops over contacts or events (only over months, campaigns and event kinds).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.schema import (
    CONTACTS,
    DEPARTMENTS,
    EMAIL_QUALITIES,
    EVENT_TYPES,
    EVENTS,
    LEAD_SOURCES,
    PAGE_CATEGORIES,
    SENIORITIES,
    STAGE_CHANGES,
    STAGES,
    TRUTH,
)

__all__ = [
    "CHANNELS",
    "HORIZON_DAYS",
    "INTENT_STATES",
    "UNKNOWN_EVENT_TYPES",
    "daily_hazards",
    "generate",
    "transition_matrices",
    "write_tables",
]

HORIZON_DAYS = 90
INTENT_STATES: tuple[str, ...] = ("dormant", "warm", "hot")
UNKNOWN_EVENT_TYPES: tuple[str, ...] = ("video_play", "page_scroll", "sms_click")
CHANNELS: tuple[str, ...] = ("email", "web", "paid_search", "social", "event")

DAY = 86_400
NEVER = np.iinfo(np.int64).max
DORMANT, WARM, HOT = 0, 1, 2

_ET = {name: i for i, name in enumerate(EVENT_TYPES + UNKNOWN_EVENT_TYPES)}
_PC = {name: i for i, name in enumerate(PAGE_CATEGORIES)}
_CH = {name: i for i, name in enumerate(CHANNELS)}
_ST = {name: i for i, name in enumerate(STAGES)}
_SRC = {name: i for i, name in enumerate(LEAD_SOURCES)}
_SEN = {name: i for i, name in enumerate(SENIORITIES)}
_DEP = {name: i for i, name in enumerate(DEPARTMENTS)}
_EQ = {name: i for i, name in enumerate(EMAIL_QUALITIES)}

# ---------------------------------------------------------------------------
# Model parameters (documented in the module docstring)
# ---------------------------------------------------------------------------

HAZARD_BASE = np.array([0.00001, 0.0003, 0.006])  # daily conversion hazard per state at f = 0
HAZARD_FIT = 0.9  # h = base[s] * exp(HAZARD_FIT * f)
HAZARD_CAP = 0.03
FIT_NOISE = 0.1  # sd of the unobserved part of fit
POST_CONVERSION_KEEP = 0.3  # share of state-driven events kept after conversion
# Personal propensities: web activity ~ Gamma(ACTIVITY_SHAPE, 1 / ACTIVITY_SHAPE) (mean 1),
# email affinity ~ AFFINITY_SCALE * Beta(*AFFINITY_BETA).
ACTIVITY_SHAPE = 12.0
P_NO_TITLE = 0.09  # contacts without a job title
AFFINITY_BETA = (6.0, 7.5)
AFFINITY_SCALE = 1.8

# Web behaviour per state: active days / month, extra sessions per active day,
# extra pages per session; session extras per session.
LAM_DAYS = np.array([0.03, 3.0, 8.0])
EXTRA_SESSIONS = np.array([0.1, 0.25, 0.6])
EXTRA_PAGES = np.array([0.5, 0.9, 1.5])
PAGE_GAP_S = 75.0
NEW_LEAD_BURST = 0.3  # a new lead explores the site: extra share of a month of web activity
P_INBOUND_DEMO = 0.5  # hot inbound leads (forms, search) that sign up with a demo request
#                        blog  product pricing careers docs
PAGE_MIX = np.array([[0.65, 0.14, 0.00, 0.13, 0.08],
                     [0.48, 0.30, 0.02, 0.04, 0.16],
                     [0.10, 0.32, 0.40, 0.02, 0.16]])
P_DOWNLOAD = np.array([0.02, 0.09, 0.12])
P_FORM = np.array([0.002, 0.010, 0.06])
P_DEMO = np.array([0.0, 0.0005, 0.06])
P_CHAT = np.array([0.003, 0.012, 0.05])
SESSION_CHANNEL_MIX = np.array([0.10, 0.60, 0.18, 0.12, 0.0])  # email, web, paid, social, event

# Lifecycle: a hot month makes a lead sales-qualified, a warm one marketing-qualified (the
# marketing-automation score crossed its threshold); a dormant month moves it back a stage.
P_HOT_SQL = 0.85
P_WARM_MQL = 0.9
P_DORMANT_BACK = (0.5, 0.6)  # sql -> mql, mql -> lead

# Email: campaigns per month, open / click / unsubscribe probabilities per state.
EMAILS_PER_MONTH = 4
P_OPEN = np.array([0.015, 0.40, 0.55])
P_REOPEN = 0.25
P_CLICK = np.array([0.03, 0.20, 0.35])
P_UNSUB = np.array([0.02, 0.006, 0.002])

# Webinars: per month, registration / attendance per state.
WEBINARS_PER_MONTH = 2
P_REGISTER = np.array([0.001, 0.02, 0.10])
P_ATTEND = np.array([0.35, 0.5, 0.65])

# ---------------------------------------------------------------------------
# Vocabularies of the synthetic world
# ---------------------------------------------------------------------------

# name, weight, fit effect, median revenue per employee (EUR), aliases (dirty spellings)
_INDUSTRIES: tuple[tuple[str, float, float, float, tuple[str, ...]], ...] = (
    ("Manufacturing", 0.17, 0.5, 220e3, ("Automotive", "Industrial", "Maschinenbau")),
    ("Information and communication", 0.12, 0.6, 250e3, ("IT services", "Software", "IT", "Telecom")),
    ("Wholesale and retail trade", 0.12, 0.0, 350e3, ("Retail", "E-commerce", "Handel")),
    ("Professional, scientific and technical", 0.12, 0.3, 150e3, ("Consulting", "Legal services", "Engineering services")),
    ("Financial and insurance", 0.06, 0.4, 450e3, ("Finance", "Banking", "Insurance")),
    ("Construction", 0.06, -0.2, 170e3, ("Bau", "Building")),
    ("Human health and social work", 0.06, -0.1, 90e3, ("Healthcare", "Pharma", "Hospital")),
    ("Transportation and storage", 0.05, 0.1, 180e3, ("Logistics", "Transport")),
    ("Public administration", 0.04, -0.4, 100e3, ("Government", "Public sector")),
    ("Education", 0.04, -0.6, 70e3, ("University", "Higher education")),
    ("Administrative and support services", 0.04, -0.1, 80e3, ("Facility management", "Staffing")),
    ("Accommodation and food services", 0.03, -0.7, 60e3, ("Hospitality", "Restaurants")),
    ("Electricity and gas supply", 0.015, 0.2, 600e3, ("Energy", "Utilities")),
    ("Real estate", 0.02, -0.3, 300e3, ("Property", "Immobilien")),
    ("Arts, entertainment and recreation", 0.015, -0.8, 80e3, ("Media", "Entertainment")),
    ("Agriculture, forestry and fishing", 0.01, -0.5, 120e3, ("Agriculture", "Agrar")),
    ("Other service activities", 0.02, -0.5, 70e3, ("Services", "Non-profit")),
    ("Mining and quarrying", 0.005, 0.0, 500e3, ("Mining",)),
    ("Water supply and waste management", 0.01, -0.2, 200e3, ("Recycling", "Waste management")),
)
_INDUSTRY_JUNK = ("n/a", "other", "-", "Unknown", "Sonstige")

# ISO-2, weight, fit effect, calling code, tld, legal forms
_COUNTRIES: tuple[tuple[str, float, float, str, str, tuple[str, ...]], ...] = (
    ("DE", 0.30, 0.3, "49", "de", ("GmbH", "GmbH", "AG", "GmbH & Co. KG", "SE")),
    ("FR", 0.10, 0.1, "33", "fr", ("SAS", "SA", "SARL")),
    ("GB", 0.10, 0.1, "44", "co.uk", ("Ltd", "Ltd.", "PLC")),
    ("US", 0.10, 0.0, "1", "com", ("Inc.", "LLC", "Corp.")),
    ("NL", 0.06, 0.1, "31", "nl", ("B.V.", "N.V.")),
    ("CH", 0.06, 0.3, "41", "ch", ("AG", "GmbH", "SA")),
    ("AT", 0.05, 0.3, "43", "at", ("GmbH", "AG")),
    ("IT", 0.05, -0.2, "39", "it", ("S.r.l.", "S.p.A.")),
    ("ES", 0.04, -0.2, "34", "es", ("S.L.", "S.A.")),
    ("BE", 0.03, 0.1, "32", "be", ("NV", "SA", "BV")),
    ("PL", 0.03, -0.2, "48", "pl", ("Sp. z o.o.", "S.A.")),
    ("SE", 0.02, 0.0, "46", "se", ("AB",)),
    ("DK", 0.015, 0.0, "45", "dk", ("A/S", "ApS")),
    ("IE", 0.015, 0.0, "353", "ie", ("Ltd", "DAC")),
    ("CA", 0.01, -0.1, "1", "ca", ("Inc.", "Ltd.")),
    ("IN", 0.02, -0.4, "91", "in", ("Pvt. Ltd.", "Ltd.")),
)
_COUNTRY_JUNK = ("Germany", "UK", "Deutschland", "de", "USA")
_NANP = frozenset({"US", "CA"})

# lead source: weight, fit effect, initial state probabilities (dormant, warm, hot)
_SOURCES: dict[str, tuple[float, float, tuple[float, float, float]]] = {
    "web_form": (0.22, 0.5, (0.40, 0.42, 0.18)),
    "webinar": (0.08, 0.2, (0.45, 0.45, 0.10)),
    "trade_show": (0.07, 0.2, (0.55, 0.37, 0.08)),
    "purchased_list": (0.12, -0.9, (0.93, 0.06, 0.01)),
    "referral": (0.04, 0.8, (0.35, 0.45, 0.20)),
    "paid_search": (0.14, 0.1, (0.50, 0.40, 0.10)),
    "organic_search": (0.18, 0.1, (0.50, 0.40, 0.10)),
    "social": (0.10, -0.3, (0.70, 0.26, 0.04)),
    "partner": (0.05, 0.4, (0.45, 0.42, 0.13)),
}
_SOURCE_JUNK = ("podcast", "Trade Show", "cold_call", "unknown", "LinkedIn", "Podcast")

_SENIORITY_MIX = {"c_level": 0.08, "vp": 0.05, "director": 0.12, "manager": 0.25,
                  "individual": 0.42, "student": 0.03, "unknown": 0.05}
_SENIORITY_FIT = {"c_level": 0.2, "vp": 0.5, "director": 0.6, "manager": 0.4,
                  "individual": 0.0, "student": -1.0, "unknown": -0.4}
_DEPT_MIX = {"marketing": 0.16, "sales": 0.16, "it": 0.16, "engineering": 0.12, "finance": 0.08,
             "operations": 0.10, "hr": 0.06, "purchasing": 0.08, "other": 0.08}
_CLEVEL_DEPT_MIX = {"executive": 0.6, "it": 0.12, "marketing": 0.07, "finance": 0.1,
                    "operations": 0.08, "sales": 0.03}
_DEPT_FIT = {"executive": 0.3, "marketing": 0.5, "sales": 0.2, "it": 0.5, "engineering": 0.2,
             "finance": 0.0, "operations": -0.1, "hr": -0.5, "purchasing": 0.3, "other": -0.4,
             "unknown": -0.2}
_EMAIL_MIX = {"corporate": 0.72, "free": 0.15, "disposable": 0.01, "invalid": 0.04, "missing": 0.08}
_EMAIL_FIT = {"corporate": 0.2, "free": -0.4, "disposable": -1.0, "invalid": -0.5, "missing": -0.3}

_FIRST = ("anna", "thomas", "julia", "michael", "laura", "stefan", "sarah", "andreas", "lisa",
          "markus", "claire", "pierre", "sophie", "nicolas", "emma", "james", "olivia", "david",
          "emily", "daniel", "sanne", "jeroen", "marco", "giulia", "lucia", "javier", "katarzyna",
          "piotr", "erik", "ingrid", "sean", "aoife", "priya", "rahul", "john", "jane", "jan",
          "eva", "felix", "lena", "max", "paul", "marie", "lukas", "hannah", "tobias", "nina")
_LAST = ("mueller", "schmidt", "schneider", "fischer", "weber", "meyer", "wagner", "becker",
         "hoffmann", "koch", "martin", "bernard", "dubois", "moreau", "laurent", "smith", "jones",
         "taylor", "brown", "williams", "de.jong", "jansen", "bakker", "rossi", "russo", "garcia",
         "lopez", "kowalski", "nowak", "andersson", "nielsen", "murphy", "kelly", "sharma",
         "patel", "doe", "huber", "gruber", "keller", "baumann", "vogel", "richter", "wolf",
         "neumann", "schwarz", "zimmermann", "braun", "krueger", "hartmann", "lange")
_FREE_MAIL = ("gmail.com", "gmail.com", "gmail.com", "outlook.com", "hotmail.com", "yahoo.com",
              "gmx.de", "gmx.de", "web.de", "t-online.de", "icloud.com")
_DISPOSABLE = ("mailinator.com", "10minutemail.com", "guerrillamail.com", "trashmail.com",
               "yopmail.com")
_PHONE_JUNK = ("n/a", "0", "123", "tbd", "-", "0000000000", "+49", "keine", "x")
_NAME_A = ("Nord", "Alp", "Vento", "Blue", "Tech", "Data", "Inno", "Prime", "Stahl", "Rhein",
           "Euro", "Astra", "Nova", "Terra", "Quant", "Helio", "Lumen", "Vita", "Agri", "Medi",
           "Fin", "Logi", "Indu", "Opti", "Sigma", "Delta", "Omni", "Velo", "Cargo", "Kraft",
           "Hanse", "Isar", "Elb", "Main", "Seine", "Loire", "Atlas", "Orion", "Baltic", "Alto")
_NAME_B = ("tec", "data", "soft", "works", "plan", "form", "line", "net", "logic", "med", "bau",
           "trans", "serv", "con", "metall", "chem", "tronic", "sys", "pro", "vision", "wave",
           "point", "field", "gate", "stone")
_NAME_C = ("", "", "", " Systems", " Solutions", " Group", " Technologies", " Industries",
           " Services", " Consulting", " Partners", " Digital", " Logistik", " Holding")
_COMPETITORS = (("Leadgenix GmbH", "leadgenix.de"), ("ScoreBoost Ltd", "scoreboost.io"),
                ("Pipewise Inc.", "pipewise.com"), ("Funnelytics AG", "funnelytics.ch"))


def _norm(w: Sequence[float]) -> np.ndarray:
    a = np.asarray(w, dtype=np.float64)
    return a / a.sum()


@functools.cache
def _title_table() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Job-title variants per (seniority, department), flattened.

    Returns the titles, and per combo index ``sen * len(DEPARTMENTS) + dept`` the offset and
    the number of variants.
    """
    en = {"marketing": "Marketing", "sales": "Sales", "it": "IT", "engineering": "Engineering",
          "finance": "Finance", "operations": "Operations", "hr": "HR", "purchasing": "Purchasing",
          "other": "Administration"}
    de = {"marketing": "Marketing", "sales": "Vertrieb", "it": "IT", "engineering": "Entwicklung",
          "finance": "Finanzen", "operations": "Produktion", "hr": "Personal",
          "purchasing": "Einkauf", "other": "Verwaltung"}
    fr = {"marketing": "Marketing", "sales": "Commercial", "it": "des Systèmes d'Information",
          "engineering": "Technique", "finance": "Financier", "operations": "des Opérations",
          "hr": "des Ressources Humaines", "purchasing": "des Achats", "other": "Administratif"}
    specific_mgr = {
        "marketing": ("Campaign Manager", "Product Marketing Manager", "Online Marketing Manager"),
        "sales": ("Key Account Manager", "Area Sales Manager", "Account Manager"),
        "it": ("IT Project Manager", "IT-Leiter", "IT Manager"),
        "engineering": ("Projektleiter", "Engineering Manager", "R&D Manager"),
        "finance": ("Finance Manager", "Head Controller"),
        "operations": ("Plant Manager", "Logistics Manager", "Supply Chain Manager"),
        "hr": ("Recruiting Manager", "HR Manager"),
        "purchasing": ("Procurement Manager", "Category Manager", "Einkaufsleiter"),
        "other": ("Office Manager", "Project Manager"),
    }
    individual = {
        "marketing": ("Marketing Specialist", "marketing assistant", "Marketing Coordinator",
                      "Online-Marketing Referent", "SEO Specialist", "Content Marketing Manager"),
        "sales": ("Sales Representative", "Account Executive", "Inside Sales",
                  "Sales Development Representative", "SDR", "Vertriebsmitarbeiter"),
        "it": ("IT-Administrator", "System Administrator", "Systemadministrator", "IT Support",
               "Network Engineer", "IT Consultant"),
        "engineering": ("Software Engineer", "Sr. Data Engineer", "Data Engineer",
                        "Softwareentwickler", "Data Scientist", "Ingénieur", "Developer"),
        "finance": ("Accountant", "Controller", "Buchhalter", "Financial Analyst", "Comptable"),
        "operations": ("Logistics Specialist", "Disponent", "Production Planner",
                       "Operations Analyst"),
        "hr": ("HR Generalist", "Recruiter", "Personalreferent", "HR Business Partner"),
        "purchasing": ("Buyer", "Einkäufer", "Strategic Buyer", "Acheteur", "Purchasing Agent"),
        "other": ("Assistant", "Office Assistant", "Sachbearbeiter", "Consultant", "Analyst"),
    }
    clevel = {
        "executive": ("CEO", "CEO & Founder", "Founder & CEO", "Co-Founder", "Managing Director",
                      "Geschäftsführer", "Geschäftsführerin", "Owner", "Inhaber", "President",
                      "PDG", "Directeur Général"),
        "it": ("CIO", "CTO", "Chief Information Officer", "Chief Technology Officer"),
        "marketing": ("CMO", "Chief Marketing Officer"),
        "finance": ("CFO", "Chief Financial Officer", "Kaufmännischer Geschäftsführer"),
        "operations": ("COO", "Chief Operating Officer"),
        "sales": ("CRO", "Chief Revenue Officer", "CSO"),
    }
    table: dict[tuple[str, str], list[str]] = {}
    for d, names in clevel.items():
        table[("c_level", d)] = list(names)
    for d, e in en.items():
        table[("vp", d)] = [f"VP {e}", f"VP of {e}", f"Vice President {e}",
                            f"SVP {e}", f"Vice President, {e}"]
        table[("director", d)] = [f"Head of {e}", f"{e} Director", f"Director of {e}",
                                  f"Leiter {de[d]}", f"Leiterin {de[d]}",
                                  f"Bereichsleiter {de[d]}", f"Directeur {fr[d]}",
                                  f"Directrice {fr[d]}"]
        table[("manager", d)] = [f"{e} Manager", f"Senior {e} Manager",
                                 f"Sr. {e} Manager", f"{e} Team Lead",
                                 f"Teamleiter {de[d]}", *specific_mgr[d]]
        table[("individual", d)] = list(individual[d])
    table[("vp", "sales")] += ["VP Sales EMEA", "Vice President Sales DACH"]
    table[("director", "sales")] += ["Directeur Commercial", "Sales Director DACH"]
    table[("student", "other")] = ["student", "Student", "Werkstudent", "Working Student Marketing",
                                   "Intern", "Praktikant", "PhD Student", "Étudiant", "Azubi"]
    table[("unknown", "unknown")] = ["Employee", "Mitarbeiter", "n/a", "Other", "-",
                                     "Team Member", "Angestellter"]
    nd = len(DEPARTMENTS)
    offsets = np.zeros(len(SENIORITIES) * nd, dtype=np.int64)
    counts = np.zeros(len(SENIORITIES) * nd, dtype=np.int64)
    titles: list[str] = []
    for (sen, dep), names in table.items():
        k = _SEN[sen] * nd + _DEP[dep]
        offsets[k] = len(titles)
        counts[k] = len(names)
        titles.extend(names)
    return tuple(titles), offsets, counts


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _pick(pool: Sequence[str], idx: np.ndarray) -> pa.Array:
    """Strings ``pool[idx]`` as an Arrow array (no Python loop over ``idx``)."""
    return pa.array(list(pool), pa.string()).take(pa.array(np.asarray(idx, dtype=np.int64)))


def _cat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise string concatenation (null if any part is null)."""
    return pc.binary_join_element_wise(*parts, "")


def _num_str(x: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(x, dtype=np.int64)).cast(pa.string())


def _draw_by_group(rng: np.random.Generator, group: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row from ``probs[group[row]]``."""
    u = rng.random(group.size)
    out = np.zeros(group.size, dtype=np.int8)
    cum = np.cumsum(probs, axis=1)
    for g in range(probs.shape[0]):
        m = group == g
        if m.any():
            out[m] = np.minimum(np.searchsorted(cum[g], u[m], side="right"), probs.shape[1] - 1)
    return out


def _draw(rng: np.random.Generator, n: int, probs: np.ndarray) -> np.ndarray:
    return _draw_by_group(rng, np.zeros(n, dtype=np.int8), probs[None, :])


def _count(rate: float, total: int, minimum: int) -> int:
    return int(min(total, max(minimum, round(rate * total))))


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds into the day: mostly office hours, some at any hour."""
    office = rng.random(n) < 0.82
    lo = np.where(office, 7.5 * 3600, 0.0)
    span = np.where(office, 11 * 3600, 24 * 3600.0)
    return (lo + rng.random(n) * span).astype(np.int64)


@dataclass(frozen=True)
class _Calendar:
    start: pd.Timestamp
    months: int
    bounds_s: np.ndarray  # (months + 5,) month boundaries in seconds since start
    labels: tuple[str, ...]  # yymm of each month, for campaign ids

    @property
    def end_s(self) -> int:
        return int(self.bounds_s[self.months])

    @property
    def bounds_day(self) -> np.ndarray:
        return self.bounds_s // DAY

    def to_datetime(self, s: np.ndarray) -> np.ndarray:
        base = np.datetime64(self.start.to_datetime64(), "us")
        return base + (np.asarray(s, dtype=np.int64) * 1_000_000).astype("timedelta64[us]")

    def weekday_shift(self, rng: np.random.Generator, day: np.ndarray, lo_day: np.ndarray,
                      hi_day: np.ndarray, p: float = 0.75) -> np.ndarray:
        """Move most weekend days to the neighbouring Friday/Monday inside [lo_day, hi_day)."""
        wd = (day + self.start.weekday()) % 7
        weekend = (wd >= 5) & (rng.random(day.size) < p)
        back = day - (wd - 4)
        fwd = day + (7 - wd)
        new = np.where(back >= lo_day, back, np.where(fwd < hi_day, fwd, day))
        return np.where(weekend, new, day)

    def place(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """A realistic moment (weekday, office hours mostly) in [lo, hi) seconds."""
        t = lo + (rng.random(lo.size) * (hi - lo)).astype(np.int64)
        day = self.weekday_shift(rng, t // DAY, lo // DAY, (hi - 1) // DAY + 1)
        t = day * DAY + _time_of_day(rng, lo.size)
        return np.clip(t, lo, hi - 1)


def _calendar(end: str, months: int) -> _Calendar:
    end_ts = pd.Timestamp(end)
    if end_ts.tz is not None:
        raise ValueError("end must be tz-naive (UTC implied)")
    end_ts = end_ts.normalize()
    bounds = [end_ts + pd.DateOffset(months=i - months) for i in range(months + 5)]
    start = bounds[0]
    bounds_s = np.array([(b - start) // pd.Timedelta(seconds=1) for b in bounds], dtype=np.int64)
    labels = tuple(b.strftime("%y%m") for b in bounds)
    return _Calendar(start=start, months=months, bounds_s=bounds_s, labels=labels)


# ---------------------------------------------------------------------------
# The latent world: companies, contacts, fit, model
# ---------------------------------------------------------------------------


@dataclass
class _Companies:
    industry: np.ndarray
    employees: np.ndarray
    revenue: np.ndarray
    country: np.ndarray
    name: pa.Array
    domain: pa.Array
    n_real: int


def _companies(rng: np.random.Generator, n_comp: int) -> _Companies:
    """Accounts: industry, heavy-tailed size, revenue ~ size x revenue/employee, name, domain."""
    ind = _draw(rng, n_comp, _norm([i[1] for i in _INDUSTRIES]))
    country = _draw(rng, n_comp, _norm([c[1] for c in _COUNTRIES]))
    # Heavy tail: lognormal body (median ~40) with a Pareto tail for 3% of companies.
    emp = np.exp(rng.normal(3.7, 1.45, n_comp))
    tail = rng.random(n_comp) < 0.03
    emp[tail] = 1000 * (1 + rng.pareto(1.1, int(tail.sum())))
    emp = np.clip(np.round(emp), 1, 600_000)
    rpe = np.array([i[3] for i in _INDUSTRIES])[ind] * np.exp(rng.normal(0, 0.55, n_comp))
    revenue = emp * rpe

    a = rng.integers(0, len(_NAME_A), n_comp)
    b = rng.integers(0, len(_NAME_B), n_comp)
    c = rng.integers(0, len(_NAME_C), n_comp)
    forms = [c_[5] for c_ in _COUNTRIES]
    flat = [f for fs in forms for f in fs]
    off = np.cumsum([0] + [len(f) for f in forms])[:-1]
    legal = off[country] + (rng.random(n_comp) * np.array([len(f) for f in forms])[country]).astype(
        np.int64)
    base = _cat(_pick(_NAME_A, a), _pick(_NAME_B, b))
    name = _cat(base, _pick(_NAME_C, c), " ", _pick(flat, legal))
    slug_c = pc.utf8_lower(pc.replace_substring(_pick(_NAME_C, c), " ", "-"))
    use_c = rng.random(n_comp) < 0.4
    slug = pc.if_else(pa.array(use_c), _cat(pc.utf8_lower(base), slug_c), pc.utf8_lower(base))
    com = rng.random(n_comp) < 0.35
    tld = pc.if_else(pa.array(com), pa.scalar("com"), _pick([c_[4] for c_ in _COUNTRIES], country))
    domain = _cat(slug, ".", tld)

    # Competitors (always junk), appended after the real companies.
    k = len(_COMPETITORS)
    ind = np.concatenate([ind, np.full(k, 1, dtype=np.int8)])
    country = np.concatenate([country, np.zeros(k, dtype=np.int8)])
    emp = np.concatenate([emp, np.array([80.0, 35.0, 400.0, 150.0])])
    revenue = np.concatenate([revenue, np.array([12e6, 4e6, 90e6, 30e6])])
    name = pa.concat_arrays([name, pa.array([x[0] for x in _COMPETITORS], pa.string())])
    domain = pa.concat_arrays([domain, pa.array([x[1] for x in _COMPETITORS], pa.string())])
    return _Companies(ind, emp, revenue, country, name, domain, n_comp)


@dataclass
class _Contacts:
    n: int
    company: np.ndarray
    seniority: np.ndarray
    department: np.ndarray
    source: np.ndarray
    email_q: np.ndarray
    no_title: np.ndarray
    junk: np.ndarray
    fit: np.ndarray
    activity: np.ndarray
    affinity: np.ndarray
    created_s: np.ndarray
    cmonth: np.ndarray
    do_not_email: np.ndarray
    sendable: np.ndarray
    mail_dead_s: np.ndarray


def _contacts(rng: np.random.Generator, n: int, co: _Companies, cal: _Calendar) -> _Contacts:
    """Latent contact attributes, fit, creation time and mailability (clean values)."""
    # Company: bigger companies have more contacts in the base.
    w = co.employees[: co.n_real] ** 0.35
    company = rng.choice(co.n_real, size=n, p=w / w.sum()).astype(np.int64)
    competitor = rng.random(n) < 0.004
    company[competitor] = co.n_real + rng.integers(0, len(_COMPETITORS), int(competitor.sum()))

    sen = _draw(rng, n, _norm([_SENIORITY_MIX[s] for s in SENIORITIES]))
    dep = np.full(n, _DEP["unknown"], dtype=np.int8)
    reg = np.isin(sen, [_SEN[s] for s in ("vp", "director", "manager", "individual")])
    codes = np.array([_DEP[d] for d in _DEPT_MIX], dtype=np.int8)
    dep[reg] = codes[_draw(rng, int(reg.sum()), _norm(list(_DEPT_MIX.values())))]
    cl = sen == _SEN["c_level"]
    codes = np.array([_DEP[d] for d in _CLEVEL_DEPT_MIX], dtype=np.int8)
    dep[cl] = codes[_draw(rng, int(cl.sum()), _norm(list(_CLEVEL_DEPT_MIX.values())))]
    dep[sen == _SEN["student"]] = _DEP["other"]

    src = _draw(rng, n, _norm([_SOURCES[s][0] for s in LEAD_SOURCES]))
    eq = _draw(rng, n, _norm([_EMAIL_MIX[q] for q in EMAIL_QUALITIES]))
    student = sen == _SEN["student"]
    eq[student & (rng.random(n) < 0.6)] = _EQ["free"]
    # No job title in the CRM: the role cannot be qualified, so it counts as unknown in fit.
    no_title = rng.random(n) < P_NO_TITLE
    # Junk is what sales would throw out on sight: students, competitors, disposable
    # addresses, and list padding (purchased-list contacts without a corporate address or
    # without a job title).
    padding = (src == _SRC["purchased_list"]) & ((eq != _EQ["corporate"]) | no_title)
    junk = student | competitor | (eq == _EQ["disposable"]) | padding
    sen_fit = np.where(no_title, _SENIORITY_FIT["unknown"],
                       np.array([_SENIORITY_FIT[s] for s in SENIORITIES])[sen])
    dep_fit = np.where(no_title, _DEPT_FIT["unknown"],
                       np.array([_DEPT_FIT[d] for d in DEPARTMENTS])[dep])

    ind = co.industry[company]
    emp = co.employees[company]
    size_fit = np.maximum(0.5 - 0.2 * (np.log10(emp) - 2.8) ** 2, -1.0)
    fit = (np.array([i[2] for i in _INDUSTRIES])[ind]
           + size_fit
           + sen_fit
           + dep_fit
           + np.array([_SOURCES[s][1] for s in LEAD_SOURCES])[src]
           + np.array([_EMAIL_FIT[q] for q in EMAIL_QUALITIES])[eq]
           + np.array([c[2] for c in _COUNTRIES])[co.country[company]]
           + rng.normal(0.0, FIT_NOISE, n)
           - 1.3)

    # created_at: month weights rise towards the export date; weekdays, office hours.
    m = cal.months
    mw = _norm(1.0 + 0.05 * np.arange(m))
    cmonth = rng.choice(m, size=n, p=mw)
    created = cal.place(rng, cal.bounds_s[cmonth], cal.bounds_s[cmonth + 1])
    order = np.argsort(created, kind="stable")  # canonical contacts in creation order
    created = created[order]
    cmonth = np.searchsorted(cal.bounds_s, created, side="right") - 1

    dne = rng.random(n) < 0.04
    sendable = ((eq == _EQ["corporate"]) | (eq == _EQ["free"]) | (eq == _EQ["disposable"])
                | ((eq == _EQ["invalid"]) & (rng.random(n) < 0.3))) & ~dne
    life = np.where(eq == _EQ["corporate"], 4 * 365, 15 * 365) * DAY
    dead = created + (rng.exponential(1.0, n) * life).astype(np.int64)
    dead = np.where(eq == _EQ["disposable"], created + 3 * DAY, dead)
    dead = np.where(eq == _EQ["invalid"], created, dead)

    return _Contacts(
        n=n, company=company, seniority=sen, department=dep, source=src, email_q=eq,
        no_title=no_title, junk=junk, fit=fit,
        activity=rng.gamma(ACTIVITY_SHAPE, 1.0 / ACTIVITY_SHAPE, n),
        affinity=rng.beta(*AFFINITY_BETA, n) * AFFINITY_SCALE,
        created_s=created, cmonth=cmonth.astype(np.int64), do_not_email=dne, sendable=sendable,
        mail_dead_s=dead,
    )


def transition_matrices(q: np.ndarray) -> np.ndarray:
    """Monthly intent transition matrices ``P[i, from, to]`` for fit probabilities ``q``."""
    q = np.asarray(q, dtype=np.float64)
    p = np.empty((q.size, 3, 3))
    p[:, 0, 1] = 0.05 + 0.10 * q
    p[:, 0, 2] = 0.004 + 0.016 * q
    p[:, 1, 0] = 0.40 - 0.15 * q
    p[:, 1, 2] = 0.05 + 0.12 * q
    p[:, 2, 0] = 0.20 - 0.12 * q
    p[:, 2, 1] = 0.40 - 0.15 * q
    for i in range(3):
        p[:, i, i] = 0.0
        p[:, i, i] = 1.0 - p[:, i, :].sum(axis=1)
    return p


def daily_hazards(fit: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """Daily conversion hazard ``h[i, state]``; zero for junk contacts."""
    h = np.minimum(HAZARD_BASE[None, :] * np.exp(HAZARD_FIT * fit)[:, None], HAZARD_CAP)
    h[np.asarray(junk, dtype=bool)] = 0.0
    return h


def _simulate_states(rng: np.random.Generator, ct: _Contacts, p: np.ndarray,
                     months: int) -> np.ndarray:
    """Intent state per (month, contact); -1 before the creation month."""
    states = np.full((months, ct.n), -1, dtype=np.int8)
    init = np.array([_SOURCES[s][2] for s in LEAD_SOURCES])
    for m in range(months):
        new = np.flatnonzero(ct.cmonth == m)
        states[m, new] = _draw_by_group(rng, ct.source[new], init)
        if m == 0:
            continue
        old = np.flatnonzero(ct.cmonth < m)
        prev = states[m - 1, old]
        row = p[old, prev, :]
        u = rng.random(old.size)
        states[m, old] = (u >= row[:, 0]).astype(np.int8) + (u >= row[:, 0] + row[:, 1])
    return states


def _simulate_conversion(rng: np.random.Generator, ct: _Contacts, states: np.ndarray,
                         h: np.ndarray, cal: _Calendar) -> np.ndarray:
    """Conversion time (seconds) per contact, NEVER if not within the history."""
    conv = np.full(ct.n, NEVER, dtype=np.int64)
    bd = cal.bounds_day
    created_day = ct.created_s // DAY
    for m in range(cal.months):
        idx = np.flatnonzero((ct.cmonth <= m) & (conv == NEVER))
        hs = h[idx, states[m, idx]]
        keep = hs > 0
        idx, hs = idx[keep], hs[keep]
        first = np.where(ct.cmonth[idx] == m, created_day[idx] + 1, bd[m])
        d = bd[m + 1] - first
        lq = np.log1p(-hs)
        pm = -np.expm1(d * lq)
        hit = rng.random(idx.size) < pm
        idx, lq, pm, first, d = idx[hit], lq[hit], pm[hit], first[hit], d[hit]
        off = np.floor(np.log1p(-rng.random(idx.size) * pm) / lq).astype(np.int64)
        day = first + np.clip(off, 0, d - 1)
        conv[idx] = day * DAY + (8 * 3600 + rng.random(idx.size) * 11 * 3600).astype(np.int64)
    return conv


def _oracle(p: np.ndarray, lq: np.ndarray, s_prev: np.ndarray, t_day: int,
            bounds_day: np.ndarray, month: int) -> np.ndarray:
    """Exact P(conversion in [T, T + HORIZON_DAYS)) given the state of the month before T.

    ``p`` (k, 3, 3) transition matrices, ``lq`` (k, 3) ``log(1 - h)``, ``s_prev`` (k,) state
    of month ``month - 1``; ``t_day`` is the day index of T, which is ``bounds_day[month]``.
    """
    w_end = t_day + HORIZON_DAYS
    v = p[np.arange(s_prev.size), s_prev, :]  # distribution of the state of month `month`
    j = month
    first = True
    while bounds_day[j] < w_end:
        if not first:
            v = np.einsum("ki,kij->kj", v, p)
        d = min(bounds_day[j + 1], w_end) - bounds_day[j]
        v = v * np.exp(d * lq)
        first = False
        j += 1
    return np.clip(1.0 - v.sum(axis=1), 0.0, 1.0)


# ---------------------------------------------------------------------------
# Stage history
# ---------------------------------------------------------------------------


def _stages(rng: np.random.Generator, ct: _Contacts, states: np.ndarray, conv: np.ndarray,
            dq: np.ndarray, cal: _Calendar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage changes (contact index, ts, stage code) driven by the monthly intent states."""
    st = _ST
    n = ct.n
    start_suspect = rng.random(n) < np.where(ct.source == _SRC["purchased_list"], 0.3,
                                             np.where(ct.source == _SRC["social"], 0.15, 0.04))
    cur = np.where(start_suspect, st["suspect"], st["lead"]).astype(np.int8)
    cs, ts, ss = [np.arange(n)], [ct.created_s.copy()], [cur.copy()]
    streak = np.zeros(n, dtype=np.int16)
    low = np.array([st["suspect"], st["lead"], st["cold"]])
    for m in range(cal.months):
        idx = np.flatnonzero(ct.cmonth <= m)
        lo = np.maximum(cal.bounds_s[m], ct.created_s[idx] + 60)
        hi = np.full(idx.size, cal.bounds_s[m + 1])
        ok = lo < hi
        idx, lo, hi = idx[ok], lo[ok], hi[ok]
        t = cal.place(rng, lo, hi)
        ok = (t < conv[idx]) & (t < dq[idx])
        idx, t = idx[ok], t[ok]
        s = states[m, idx]
        c = cur[idx]
        u = rng.random(idx.size)
        new = c.copy()
        is_low = np.isin(c, low)
        hot = s == HOT
        new = np.where(hot & (is_low | (c == st["mql"])) & (u < P_HOT_SQL), st["sql"], new)
        new = np.where(hot & is_low & (u >= P_HOT_SQL), st["mql"], new)
        new = np.where((s == WARM) & is_low & (u < P_WARM_MQL), st["mql"], new)
        dormant = s == DORMANT
        sk = np.where(dormant, streak[idx] + 1, 0).astype(np.int16)
        streak[idx] = sk
        new = np.where(dormant & (c == st["sql"]) & (u < P_DORMANT_BACK[0]), st["mql"], new)
        new = np.where(dormant & (c == st["mql"]) & (u < P_DORMANT_BACK[1]), st["lead"], new)
        new = np.where(dormant & (sk >= 3) & (c != st["cold"]) & (u >= 0.4), st["cold"], new)
        ch = new != c
        cs.append(idx[ch])
        ts.append(t[ch])
        ss.append(new[ch].astype(np.int8))
        cur[idx[ch]] = new[ch]
    # conversion, customers, disqualification
    won = np.flatnonzero(conv < cal.end_s)
    cs.append(won)
    ts.append(conv[won])
    ss.append(np.full(won.size, st["opportunity"], dtype=np.int8))
    cust_t = conv[won] + (np.exp(rng.normal(np.log(60), 0.5, won.size)) * DAY).astype(np.int64)
    cust = (rng.random(won.size) < 0.35) & (cust_t < cal.end_s)
    cs.append(won[cust])
    ts.append(cust_t[cust])
    ss.append(np.full(int(cust.sum()), st["customer"], dtype=np.int8))
    d = np.flatnonzero(dq < cal.end_s)
    cs.append(d)
    ts.append(dq[d])
    ss.append(np.full(d.size, st["disqualified"], dtype=np.int8))
    return np.concatenate(cs), np.concatenate(ts), np.concatenate(ss)


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


class _EventBuffer:
    """Accumulates event columns as integer codes."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, c: np.ndarray, ts: np.ndarray, et: int | np.ndarray, pcat: int | np.ndarray = -1,
            camp: int | np.ndarray = -1, chan: int | np.ndarray = -1) -> None:
        k = c.size
        if k == 0:
            return

        def full(x: int | np.ndarray, dt: type) -> np.ndarray:
            return np.full(k, x, dtype=dt) if np.isscalar(x) else np.asarray(x, dtype=dt)

        self.parts.append((c.astype(np.int32), ts.astype(np.int64), full(et, np.int8),
                           full(pcat, np.int8), full(camp, np.int32), full(chan, np.int8)))

    def concat(self) -> dict[str, np.ndarray]:
        names = ("c", "ts", "et", "pcat", "camp", "chan")
        empty = (np.int32, np.int64, np.int8, np.int8, np.int32, np.int8)
        cols = {k: np.concatenate([np.empty(0, dtype=empty[i])] + [p[i] for p in self.parts])
                for i, k in enumerate(names)}
        self.parts = []
        return cols


@dataclass(frozen=True)
class _Catalog:
    """Campaign ids (emails, assets, webinars) and their calendar."""

    ids: tuple[str, ...]
    email_code: np.ndarray  # (months, EMAILS_PER_MONTH)
    email_send: np.ndarray
    asset_codes: np.ndarray
    asset_mix: np.ndarray  # (3, n_assets) per state
    webinar_code: np.ndarray  # (months + 1, WEBINARS_PER_MONTH)
    webinar_time: np.ndarray


def _catalog(rng: np.random.Generator, cal: _Calendar) -> _Catalog:
    """Email sends, content assets and webinars with their ids and dates."""
    ids: list[str] = []
    m = cal.months
    email_code = np.zeros((m, EMAILS_PER_MONTH), dtype=np.int64)
    email_send = np.zeros((m, EMAILS_PER_MONTH), dtype=np.int64)
    for i in range(m):
        lo = np.full(EMAILS_PER_MONTH, cal.bounds_s[i])
        hi = np.full(EMAILS_PER_MONTH, cal.bounds_s[i + 1] - DAY)
        day = (lo + rng.random(EMAILS_PER_MONTH) * (hi - lo)).astype(np.int64) // DAY
        day = cal.weekday_shift(rng, day, lo // DAY, hi // DAY, p=1.0)
        send = np.sort(day * DAY + (8.5 * 3600 + rng.random(EMAILS_PER_MONTH) * 2.5 * 3600)
                       .astype(np.int64))
        for j in range(EMAILS_PER_MONTH):
            email_code[i, j] = len(ids)
            email_send[i, j] = send[j]
            ids.append(f"em-{cal.labels[i]}-{j + 1:02d}")
    assets = ([f"wp-{i:03d}" for i in range(1, 25)] + [f"eb-{i:03d}" for i in range(1, 9)]
              + [f"cs-{i:03d}" for i in range(1, 11)])
    asset_codes = np.arange(len(ids), len(ids) + len(assets))
    ids.extend(assets)
    pop = 1.0 / np.arange(1, len(assets) + 1) ** 0.8
    pop = pop[rng.permutation(len(assets))]
    is_cs = np.array([a.startswith("cs-") for a in assets])
    mix = np.stack([_norm(pop * np.where(is_cs, f, 1.0)) for f in (0.3, 1.0, 3.0)])
    webinar_code = np.zeros((m + 1, WEBINARS_PER_MONTH), dtype=np.int64)
    webinar_time = np.zeros((m + 1, WEBINARS_PER_MONTH), dtype=np.int64)
    for i in range(m + 1):
        base = cal.bounds_s[i] // DAY
        day = base + np.sort(rng.choice(np.arange(4, 25), WEBINARS_PER_MONTH, replace=False))
        day = cal.weekday_shift(rng, day, day - 3, day + 4, p=1.0)
        hour = np.where(rng.random(WEBINARS_PER_MONTH) < 0.5, 10, 16)
        for j in range(WEBINARS_PER_MONTH):
            webinar_code[i, j] = len(ids)
            webinar_time[i, j] = day[j] * DAY + hour[j] * 3600
            ids.append(f"wb-{cal.labels[i]}-{j + 1}")
    return _Catalog(tuple(ids), email_code, email_send, asset_codes, mix, webinar_code,
                    webinar_time)


def _sessions(rng: np.random.Generator, buf: _EventBuffer, cat: _Catalog, c: np.ndarray,
              t: np.ndarray, s: np.ndarray, chan: np.ndarray) -> None:
    """Web sessions starting at ``t``: a burst of page views and the odd conversion action."""
    if c.size == 0:
        return
    npg = rng.geometric(1.0 / (1.0 + EXTRA_PAGES[s]))
    first = np.cumsum(npg) - npg
    last = first + npg - 1
    gaps = rng.exponential(PAGE_GAP_S, int(npg.sum())) + 5.0
    gaps[first] = 0.0
    cs = np.cumsum(gaps)
    tp = np.repeat(t, npg) + (cs - np.repeat(cs[first], npg)).astype(np.int64)
    sp = np.repeat(s, npg)
    pcat = _draw_by_group(rng, sp, PAGE_MIX)
    et = np.where(pcat == _PC["pricing"], _ET["pricing_view"], _ET["page_view"])
    buf.add(np.repeat(c, npg), tp, et, pcat, -1, np.repeat(chan, npg))
    te = tp[last]
    u = rng.random((4, c.size))
    dl = u[0] < P_DOWNLOAD[s]
    if dl.any():
        td = te[dl] + rng.integers(10, 90, int(dl.sum()))
        asset = cat.asset_codes[_draw_by_group(rng, s[dl], cat.asset_mix)]
        gated = rng.random(td.size) < 0.6
        buf.add(c[dl][gated], td[gated] - 3, _ET["form_submit"], -1, -1, chan[dl][gated])
        buf.add(c[dl], td, _ET["content_download"], -1, asset, chan[dl])
    for k, (prob, kind) in enumerate(((P_FORM, "form_submit"), (P_DEMO, "demo_request"),
                                      (P_CHAT, "chat")), start=1):
        hit = u[k] < prob[s]
        if not hit.any():
            continue
        th = te[hit] + rng.integers(20, 400, int(hit.sum()))
        if kind == "demo_request":
            buf.add(c[hit], th - 2, _ET["form_submit"], -1, -1, chan[hit])
        buf.add(c[hit], th, _ET[kind], -1, -1, chan[hit])


def _month_web(rng: np.random.Generator, buf: _EventBuffer, cat: _Catalog, ct: _Contacts,
               states: np.ndarray, cal: _Calendar, m: int) -> None:
    """Web sessions of month ``m``: active days, sessions per day, pages per session."""
    ms, me = cal.bounds_s[m], cal.bounds_s[m + 1]
    idx = np.flatnonzero(ct.cmonth <= m)
    lo = np.maximum(ms, ct.created_s[idx])
    s = states[m, idx]
    frac = (me - lo) / (me - ms)
    frac = np.where(ct.cmonth[idx] == m, np.minimum(1.0, frac + NEW_LEAD_BURST), frac)
    nd = rng.poisson(LAM_DAYS[s] * ct.activity[idx] * frac)
    c1, lo1, s1 = np.repeat(idx, nd), np.repeat(lo, nd), np.repeat(s, nd)
    hi1 = np.full(c1.size, me)
    t1 = lo1 + (rng.random(c1.size) * (hi1 - lo1)).astype(np.int64)
    day = cal.weekday_shift(rng, t1 // DAY, lo1 // DAY, (hi1 - 1) // DAY + 1)
    ns = 1 + rng.poisson(EXTRA_SESSIONS[s1])
    c2, lo2, s2 = np.repeat(c1, ns), np.repeat(lo1, ns), np.repeat(s1, ns)
    t2 = np.clip(np.repeat(day, ns) * DAY + _time_of_day(rng, c2.size), lo2, me - 1)
    chan = _draw(rng, c2.size, SESSION_CHANNEL_MIX)
    _sessions(rng, buf, cat, c2, t2, s2, chan)


def _month_email(rng: np.random.Generator, buf: _EventBuffer, cat: _Catalog, ct: _Contacts,
                 states: np.ndarray, m: int, unsub: np.ndarray, bounced: np.ndarray) -> None:
    """Email campaigns of month ``m``: bounces, (re-)opens, clicks, unsubscribes."""
    email = _CH["email"]
    for j in range(EMAILS_PER_MONTH):
        send, code = int(cat.email_send[m, j]), int(cat.email_code[m, j])
        r = np.flatnonzero((ct.created_s < send) & ct.sendable & ~unsub & ~bounced)
        bnc = ct.mail_dead_s[r] <= send
        rb = r[bnc]
        buf.add(rb, send + rng.integers(30, 900, rb.size), _ET["email_bounce"], -1, code, email)
        bounced[rb] = True
        r = r[~bnc]
        s = states[m, r]
        o = rng.random(r.size) < np.minimum(0.95, P_OPEN[s] * ct.affinity[r])
        ro, so = r[o], s[o]
        to = send + np.minimum(np.exp(rng.normal(np.log(3 * 3600), 1.3, ro.size)),
                               10 * DAY).astype(np.int64)
        buf.add(ro, to, _ET["email_open"], -1, code, email)
        re = rng.random(ro.size) < P_REOPEN
        buf.add(ro[re], to[re] + np.exp(rng.normal(np.log(DAY), 1.0, int(re.sum()))).astype(
            np.int64) + 60, _ET["email_open"], -1, code, email)
        cl = rng.random(ro.size) < P_CLICK[so]
        tc = to[cl] + rng.integers(5, 180, int(cl.sum()))
        buf.add(ro[cl], tc, _ET["email_click"], -1, code, email)
        _sessions(rng, buf, cat, ro[cl], tc + 4, so[cl], np.full(tc.size, email, dtype=np.int8))
        us = rng.random(ro.size) < P_UNSUB[so]
        buf.add(ro[us], to[us] + rng.integers(10, 600, int(us.sum())), _ET["unsubscribe"], -1,
                code, email)
        unsub[ro[us]] = True


def _month_webinars(rng: np.random.Generator, buf: _EventBuffer, cat: _Catalog, ct: _Contacts,
                    states: np.ndarray, cal: _Calendar, m: int) -> None:
    """Webinar registrations (up to 21 days before) and attendance in month ``m``."""
    for j in range(WEBINARS_PER_MONTH):
        wt, code = int(cat.webinar_time[m, j]), int(cat.webinar_code[m, j])
        idx = np.flatnonzero(ct.cmonth <= m)
        lo = np.maximum(np.maximum(cal.bounds_s[m], ct.created_s[idx]), wt - 21 * DAY)
        ok = lo < wt
        idx, lo = idx[ok], lo[ok]
        s = states[m, idx]
        reg = rng.random(idx.size) < np.minimum(P_REGISTER[s] * ct.activity[idx], 0.9)
        idx, lo, s = idx[reg], lo[reg], s[reg]
        tr = lo + (rng.random(idx.size) * (wt - lo)).astype(np.int64)
        chan = np.array([_CH["email"], _CH["web"], _CH["social"]], dtype=np.int8)[
            _draw(rng, idx.size, np.array([0.6, 0.25, 0.15]))]
        buf.add(idx, tr, _ET["webinar_registered"], -1, code, chan)
        att = rng.random(idx.size) < P_ATTEND[s]
        ta = np.maximum(wt + rng.integers(-300, 1200, idx.size), tr + 60)[att]
        buf.add(idx[att], ta, _ET["webinar_attended"], -1, code, _CH["event"])


def _creation_events(rng: np.random.Generator, buf: _EventBuffer, cat: _Catalog,
                     ct: _Contacts, first_state: np.ndarray) -> None:
    """The event that created the contact (form fill, webinar sign-up), at created_at;
    a hot inbound lead often signs up by requesting a demo."""
    src, t = ct.source, ct.created_s
    for name, chan in (("web_form", "web"), ("paid_search", "paid_search"),
                       ("organic_search", "web"), ("social", "social")):
        c = np.flatnonzero(src == _SRC[name])
        buf.add(c, t[c], _ET["form_submit"], -1, -1, _CH[chan])
        demo = c[(first_state[c] == HOT) & (rng.random(c.size) < P_INBOUND_DEMO)]
        buf.add(demo, t[demo] + 1, _ET["demo_request"], -1, -1, _CH[chan])
        if name == "web_form":
            g = c[rng.random(c.size) < 0.45]
            asset = cat.asset_codes[_draw(rng, g.size, cat.asset_mix[1])]
            buf.add(g, t[g] + 2, _ET["content_download"], -1, asset, _CH[chan])
    c = np.flatnonzero(src == _SRC["webinar"])
    o = np.argsort(cat.webinar_time.ravel(), kind="stable")
    times = cat.webinar_time.ravel()[o]
    codes = cat.webinar_code.ravel()[o]
    k = np.minimum(np.searchsorted(times, t[c], side="right"), times.size - 1)
    buf.add(c, t[c], _ET["webinar_registered"], -1, codes[k], _CH["email"])
    att = (rng.random(c.size) < 0.45) & (times[k] > t[c])
    buf.add(c[att], times[k][att] + rng.integers(-300, 1200, int(att.sum())),
            _ET["webinar_attended"], -1, codes[k][att], _CH["event"])


def _events(rng: np.random.Generator, ct: _Contacts, states: np.ndarray, conv: np.ndarray,
            cat: _Catalog, cal: _Calendar) -> dict[str, np.ndarray]:
    """All legitimate events as integer-coded columns (no dirt yet)."""
    buf = _EventBuffer()
    _creation_events(rng, buf, cat, ct, states[ct.cmonth, np.arange(ct.n)])
    unsub = np.zeros(ct.n, dtype=bool)
    bounced = np.zeros(ct.n, dtype=bool)
    parts = []
    for m in range(cal.months):
        _month_web(rng, buf, cat, ct, states, cal, m)
        _month_email(rng, buf, cat, ct, states, m, unsub, bounced)
        _month_webinars(rng, buf, cat, ct, states, cal, m)
        ev = buf.concat()
        # After conversion the state-driven activity drops; nothing legitimate after `end`.
        keep = ((ev["ts"] < conv[ev["c"]]) | (rng.random(ev["c"].size) < POST_CONVERSION_KEEP)
                | (ev["et"] == _ET["unsubscribe"]) | (ev["et"] == _ET["email_bounce"]))
        keep &= (ev["ts"] < cal.end_s) & (ev["ts"] >= ct.created_s[ev["c"]])
        parts.append({k: v[keep] for k, v in ev.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------
# Dirt
# ---------------------------------------------------------------------------


def _ids(rng: np.random.Generator, created_all: np.ndarray, n_ghost: int) -> tuple[
        pa.Array, np.ndarray, pa.Array]:
    """Contact ids in creation order with gaps (deleted records); ghost ids from the gaps."""
    n = created_all.size
    order = np.argsort(created_all, kind="stable")
    step = 1 + (rng.random(n) < 0.05) * rng.integers(1, 5, n)
    number = np.empty(n, dtype=np.int64)
    number[order] = np.cumsum(step)
    used = np.zeros(int(number.max()) + 1, dtype=bool)
    used[number] = True
    gaps = np.flatnonzero(~used[1:]) + 1
    if gaps.size < n_ghost:
        gaps = np.concatenate([gaps, number.max() + 1 + np.arange(n_ghost - gaps.size)])
    ghost = np.sort(rng.choice(gaps, n_ghost, replace=False))
    width = max(7, len(str(int(max(number.max(), ghost.max())))))

    def fmt(x: np.ndarray) -> pa.Array:
        return _cat("C", pc.utf8_lpad(_num_str(x), width, "0"))

    return fmt(number), order, fmt(ghost)


def _email_strings(rng: np.random.Generator, ct: _Contacts, domain: pa.Array) -> pa.Array:
    n = ct.n
    fi = rng.integers(0, len(_FIRST), n)
    la = rng.integers(0, len(_LAST), n)
    first, last = _pick(_FIRST, fi), _pick(_LAST, la)
    ini = pc.utf8_slice_codeunits(first, 0, 1)
    local = pc.choose(pa.array(_draw(rng, n, _norm([0.45, 0.15, 0.12, 0.08, 0.15, 0.05]))),
                      _cat(first, ".", last), _cat(ini, ".", last), _cat(first, last),
                      _cat(first, "_", last), _cat(ini, last), last)
    digits = _num_str(rng.integers(1, 99, n))
    free_local = pc.if_else(pa.array(rng.random(n) < 0.4), _cat(local, digits), local)
    corp = _cat(local, "@", domain)
    free = _cat(free_local, "@", _pick(_FREE_MAIL, rng.integers(0, len(_FREE_MAIL), n)))
    disp = _cat(free_local, "@", _pick(_DISPOSABLE, rng.integers(0, len(_DISPOSABLE), n)))
    invalid = pc.choose(pa.array(rng.integers(0, 7, n).astype(np.int8)),
                        _cat(local, "@"), pa.array(["n/a"] * n), pa.array(["test@test"] * n),
                        _cat(local, "[at]", domain), _cat(local, "@@", domain),
                        pc.replace_substring(corp, ".", "", max_replacements=None),
                        pa.array(["none"] * n))
    # sendable invalids ("test@test"-like) bounce; the others are never sent.
    missing = pa.nulls(n, pa.string())
    out = pc.choose(pa.array(ct.email_q), *[{"corporate": corp, "free": free, "disposable": disp,
                                              "invalid": invalid, "missing": missing}[q]
                                             for q in EMAIL_QUALITIES])
    # Some people type their address with capitals.
    caps = pa.array(rng.random(n) < 0.03)
    return pc.if_else(caps, pc.utf8_title(out), out)


def _phone_strings(rng: np.random.Generator, country: np.ndarray) -> pa.Array:
    n = country.size
    codes = [c[3] for c in _COUNTRIES]
    cc = _pick(codes, country)
    area = _num_str(rng.integers(20, 999, n))
    sub_n = rng.integers(1_000_000, 99_999_999, n)
    sub = _num_str(sub_n)
    sub_sp = _cat(pc.utf8_slice_codeunits(sub, 0, 3), " ", pc.utf8_slice_codeunits(sub, 3, 20))
    intl = pc.choose(pa.array(_draw(rng, n, _norm([0.3, 0.25, 0.2, 0.08, 0.07, 0.05, 0.05]))),
                     _cat("+", cc, area, sub), _cat("0", area, " ", sub_sp),
                     _cat("+", cc, " ", area, " ", sub), _cat("+", cc, " (0)", area, " ", sub),
                     _cat("00", cc, " ", area, " ", sub), _cat("0", area, "/", sub),
                     _cat("0", area, "-", sub))
    a3 = _num_str(rng.integers(201, 989, n))
    e3 = _num_str(rng.integers(200, 999, n))
    l4 = pc.utf8_lpad(_num_str(rng.integers(0, 9999, n)), 4, "0")
    nanp = pc.choose(pa.array(_draw(rng, n, _norm([0.35, 0.3, 0.2, 0.15]))),
                     _cat("(", a3, ") ", e3, "-", l4), _cat(a3, "-", e3, "-", l4),
                     _cat("+1 ", a3, " ", e3, " ", l4), _cat("+1", a3, e3, l4))
    is_nanp = np.isin(country, [i for i, c in enumerate(_COUNTRIES) if c[0] in _NANP])
    out = pc.if_else(pa.array(is_nanp), nanp, intl)
    junk = rng.random(n) < 0.02
    out = pc.if_else(pa.array(junk), _pick(_PHONE_JUNK, rng.integers(0, len(_PHONE_JUNK), n)), out)
    missing = (rng.random(n) < 0.25) & ~junk
    return pc.if_else(pa.array(missing), pa.nulls(n, pa.string()), out)


def _null_where(a: pa.Array, mask: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(mask), pa.nulls(len(a), a.type), a)


def _with_aliases(rng: np.random.Generator, codes: np.ndarray, names: Sequence[str],
                  aliases: Sequence[Sequence[str]], junk: Sequence[str], p_alias: float,
                  p_junk: float, p_case: float) -> pa.Array:
    """Category names with dirty spellings, junk values and case/space noise."""
    n = codes.size
    out = _pick(names, codes)
    flat = [a for al in aliases for a in al]
    off = np.cumsum([0] + [len(al) for al in aliases])[:-1]
    cnt = np.array([len(al) for al in aliases])
    if flat:
        k = off[codes] + (rng.random(n) * np.maximum(cnt[codes], 1)).astype(np.int64)
        use = (rng.random(n) < p_alias) & (cnt[codes] > 0)
        out = pc.if_else(pa.array(use), _pick(flat, np.minimum(k, len(flat) - 1)), out)
    use = rng.random(n) < p_junk
    out = pc.if_else(pa.array(use), _pick(junk, rng.integers(0, len(junk), n)), out)
    u = rng.random(n)
    out = pc.if_else(pa.array(u < p_case / 2), pc.utf8_lower(out), out)
    return pc.if_else(pa.array((u >= p_case / 2) & (u < p_case)), _cat(out, " "), out)


def _round_sig(x: np.ndarray, digits: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.floor(np.log10(np.abs(x)))
        f = 10.0 ** (digits - 1 - mag)
        return np.where(x > 0, np.round(x * f) / f, x)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def generate(n_contacts: int, seed: int = 7, *, end: str = "2026-07-01",
             months: int = 18) -> dict[str, pd.DataFrame]:
    """Generate a synthetic B2B contact base with known conversion probabilities.

    Parameters
    ----------
    n_contacts
        Number of (canonical) contacts; about 2.5% duplicate rows come on top.
    seed
        Seed of the ``numpy.random.Generator(PCG64(seed))``; same seed, same tables.
    end
        Export date (tz-naive, UTC implied): no legitimate event on or after it.
    months
        Months of history before ``end``; contacts are created over that span.

    Returns
    -------
    dict
        ``{"contacts", "events", "stages", "truth"}`` DataFrames with the columns of
        ``features.schema`` (CONTACTS, EVENTS, STAGE_CHANGES, TRUTH).
    """
    if n_contacts < 1:
        raise ValueError("n_contacts must be >= 1")
    if months < 1:
        raise ValueError("months must be >= 1")
    cal = _calendar(end, months)
    rng = np.random.Generator(np.random.PCG64(seed))
    (r_world, r_states, r_conv, r_stage, r_cat, r_events, r_dirt,
     r_str) = rng.spawn(8)

    n = int(n_contacts)
    co = _companies(r_world, max(5, n // 3))
    ct = _contacts(r_world, n, co, cal)
    q = 1.0 / (1.0 + np.exp(-ct.fit))
    p = transition_matrices(q)
    h = daily_hazards(ct.fit, ct.junk)
    states = _simulate_states(r_states, ct, p, months)
    conv = _simulate_conversion(r_conv, ct, states, h, cal)
    dq_t = ct.created_s + (r_conv.gamma(2.0, 10.0, n) * DAY).astype(np.int64) + 3600
    dq = np.where(ct.junk & (r_conv.random(n) < 0.8) & (dq_t < cal.end_s), dq_t, NEVER)

    st_c, st_t, st_s = _stages(r_stage, ct, states, conv, dq, cal)
    cat = _catalog(r_cat, cal)
    ev = _events(r_events, ct, states, conv, cat, cal)
    truth = _truth(ct, states, conv, dq, p, h, cal)

    # --- duplicates: same person, new row, later or same created_at ---------------------
    n_dup = _count(0.025, n, 1 if n >= 2 else 0)
    src_dup = np.sort(r_dirt.choice(n, n_dup, replace=False))
    delay = np.where(r_dirt.random(n_dup) < 0.6,
                     r_dirt.exponential(45 * DAY, n_dup), r_dirt.uniform(60, 7200, n_dup))
    dup_created = ct.created_s[src_dup] + delay.astype(np.int64)
    late = dup_created >= cal.end_s
    dup_created[late] = np.minimum(ct.created_s[src_dup][late] + 60, cal.end_s - 1)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_of[src_dup] = n + np.arange(n_dup)
    dup_t = np.full(n, NEVER, dtype=np.int64)
    dup_t[src_dup] = dup_created
    move = (dup_of[ev["c"]] >= 0) & (ev["ts"] >= dup_t[ev["c"]]) & (
        r_dirt.random(ev["c"].size) < 0.5)
    ev["c"] = np.where(move, dup_of[ev["c"]], ev["c"]).astype(np.int32)
    st_c = np.concatenate([st_c, n + np.arange(n_dup)])
    st_t = np.concatenate([st_t, dup_created])
    st_s = np.concatenate([st_s, np.full(n_dup, _ST["lead"], dtype=np.int8)])
    created_all = np.concatenate([ct.created_s, dup_created])

    # --- event dirt: unknown contacts, unknown types, future timestamps -----------------
    n_ev = ev["c"].size
    n_total = n + n_dup
    n_ghost_ev = _count(0.002, n_ev, 5) if n_ev else 0
    n_ghost = max(1, n_ghost_ev // 4)
    ids, order, ghost_ids = _ids(r_dirt, created_all, n_ghost)
    extra = []
    if n_ev:
        pick = r_dirt.integers(0, n_ev, n_ghost_ev)
        g = {k: v[pick] for k, v in ev.items()}
        g["c"] = (n_total + r_dirt.integers(0, n_ghost, n_ghost_ev)).astype(np.int32)
        extra.append(g)
        pv = np.flatnonzero(ev["et"] == _ET["page_view"])
        if pv.size:
            pick = pv[r_dirt.integers(0, pv.size, _count(0.003, n_ev, 5))]
            u = {k: v[pick] for k, v in ev.items()}
            u["et"] = (len(EVENT_TYPES) + _draw(r_dirt, pick.size, np.array([0.6, 0.25, 0.15])))
            u["et"] = u["et"].astype(np.int8)
            u["ts"] = u["ts"] + r_dirt.integers(5, 120, pick.size)
            u["pcat"] = np.full(pick.size, -1, dtype=np.int8)
            ok = u["ts"] < cal.end_s
            extra.append({k: v[ok] for k, v in u.items()})
    for e in extra:
        for k in ev:
            ev[k] = np.concatenate([ev[k], e[k].astype(ev[k].dtype)])
    n_ev = ev["c"].size
    if n_ev:
        fut = r_dirt.choice(n_ev, _count(0.0004, n_ev, 3), replace=False)
        ev["ts"][fut] = cal.end_s + r_dirt.integers(3600, 200 * DAY, fut.size)

    # --- order: day by day (as exported in daily batches), shuffled within blocks ------
    day = ev["ts"] // DAY
    perm = np.argsort(day.astype(np.int16 if day.max(initial=0) < 2**15 else np.int32),
                      kind="stable")  # radix sort; stable, so the same on every machine
    del day
    block = 1024
    full = (perm.size // block) * block
    if full:
        perm[:full] = r_dirt.permuted(perm[:full].reshape(-1, block), axis=1).ravel()
    if perm.size > full:
        perm[full:] = r_dirt.permutation(perm[full:])
    ev = {k: v[perm] for k, v in ev.items()}
    del perm

    events = _events_table(ev, pa.concat_arrays([ids, ghost_ids]), cat, cal)
    del ev
    contacts = _contacts_table(r_str, ct, co, cal, src_dup, dup_created, ids, order)
    so = np.lexsort((st_t, np.argsort(order)[st_c]))
    stages = _to_pandas(pa.table({
        "contact_id": ids.take(pa.array(st_c[so])),
        "ts": pa.array(cal.to_datetime(st_t[so])),
        "stage": _decode(st_s[so], STAGES),
    }))
    truth_df = _to_pandas(pa.table({
        "contact_id": ids.take(pa.array(truth[0])),
        "as_of": pa.array(cal.to_datetime(truth[1])),
        "p_convert_90d": pa.array(truth[2]),
    }))
    return {
        "contacts": contacts[list(CONTACTS.columns)],
        "events": events[list(EVENTS.columns)],
        "stages": stages[list(STAGE_CHANGES.columns)],
        "truth": truth_df[list(TRUTH.columns)],
    }


def _truth(ct: _Contacts, states: np.ndarray, conv: np.ndarray, dq: np.ndarray, p: np.ndarray,
           h: np.ndarray, cal: _Calendar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(contact index, as_of seconds, p_convert_90d) for every eligible (contact, as_of)."""
    lq = np.log1p(-h)
    cs, ts, ps = [], [], []
    bd = cal.bounds_day
    for k in range(1, cal.months + 1):
        t = cal.bounds_s[k]
        idx = np.flatnonzero((ct.created_s < t) & (conv >= t) & (dq >= t))
        prob = np.zeros(idx.size)
        live = ~ct.junk[idx]
        li = idx[live]
        prob[live] = _oracle(p[li], lq[li], states[k - 1, li].astype(np.int64), int(bd[k]), bd, k)
        cs.append(idx)
        ts.append(np.full(idx.size, t, dtype=np.int64))
        ps.append(prob)
    return np.concatenate(cs), np.concatenate(ts), np.concatenate(ps)


def _contacts_table(rng: np.random.Generator, ct: _Contacts, co: _Companies, cal: _Calendar,
                    src_dup: np.ndarray, dup_created: np.ndarray, ids: pa.Array,
                    order: np.ndarray) -> pd.DataFrame:
    """The contacts table: canonical rows, duplicate rows and cosmetic dirt, in id order."""
    n = ct.n
    comp = ct.company
    email = _email_strings(rng, ct, co.domain.take(pa.array(comp)))
    phone = _phone_strings(rng, co.country[comp])
    titles, off, cnt = _title_table()
    combo = ct.seniority.astype(np.int64) * len(DEPARTMENTS) + ct.department
    title_idx = off[combo] + (rng.random(n) * cnt[combo]).astype(np.int64)
    title = _pick(titles, title_idx)
    u = rng.random(n)
    title = pc.if_else(pa.array(u < 0.08), pc.utf8_lower(title), title)
    title = pc.if_else(pa.array((u >= 0.08) & (u < 0.10)), pc.utf8_upper(title), title)
    title = pc.if_else(pa.array((u >= 0.10) & (u < 0.13)), _cat(" ", title, "  "), title)
    src_names = list(LEAD_SOURCES)
    source = _pick(src_names, ct.source)

    # duplicates: copies of the source rows, email in another case and/or padded
    d = pa.array(src_dup)
    v = rng.integers(0, 3, src_dup.size)
    de = email.take(d)
    de = pc.choose(pa.array(v.astype(np.int8)), pc.utf8_upper(de), _cat(" ", de, " "),
                   _cat(pc.utf8_capitalize(de), " "))
    dphone = _null_where(phone.take(d), rng.random(src_dup.size) < 0.5)
    dsource = pc.if_else(pa.array(rng.random(src_dup.size) < 0.5),
                         _pick(src_names, rng.integers(0, len(src_names), src_dup.size)),
                         source.take(d))
    rows = np.concatenate([np.arange(n), src_dup])
    nt = rows.size
    comp_all = comp[rows]
    email = pa.concat_arrays([email, de])
    phone = pa.concat_arrays([phone, dphone])
    title = pa.concat_arrays([title, title.take(d)])
    source = pa.concat_arrays([source, dsource])

    # cosmetic dirt on every row (the latent values that drive the model stay clean)
    title = _null_where(title, np.concatenate([ct.no_title,
                                               rng.random(src_dup.size) < P_NO_TITLE]))
    industry = _with_aliases(rng, co.industry[comp_all], [i[0] for i in _INDUSTRIES],
                             [i[4] for i in _INDUSTRIES], _INDUSTRY_JUNK, 0.03, 0.01, 0.02)
    industry = _null_where(industry, rng.random(nt) < 0.05)
    source = pc.if_else(pa.array(rng.random(nt) < 0.02),
                        _pick(_SOURCE_JUNK, rng.integers(0, len(_SOURCE_JUNK), nt)), source)
    source = _null_where(source, rng.random(nt) < 0.01)
    country = _pick([c[0] for c in _COUNTRIES], co.country[comp_all])
    country = pc.if_else(pa.array(rng.random(nt) < 0.01),
                         _pick(_COUNTRY_JUNK, rng.integers(0, len(_COUNTRY_JUNK), nt)), country)
    country = _null_where(country, rng.random(nt) < 0.03)
    emp = co.employees[comp_all].copy()
    rnd = rng.random(nt) < 0.4
    emp[rnd] = _round_sig(emp[rnd], 1 + (emp[rnd] >= 100))
    # enrichment knows big companies better: size is missing more often for small ones
    emp[rng.random(nt) < np.where(co.employees[comp_all] < 20, 0.16, 0.05)] = np.nan
    rev = _round_sig(co.revenue[comp_all], 2)
    rev[rng.random(nt) < np.where(co.employees[comp_all] < 50, 0.35, 0.12)] = np.nan
    cname = _null_where(co.name.take(pa.array(comp_all)), rng.random(nt) < 0.02)
    free = np.isin(ct.email_q[rows], [_EQ["free"], _EQ["disposable"], _EQ["missing"]])
    cdom = _null_where(co.domain.take(pa.array(comp_all)),
                       rng.random(nt) < np.where(free, 0.35, 0.02))
    created = np.concatenate([ct.created_s, dup_created])

    tab = pa.table({
        "contact_id": ids,
        "created_at": pa.array(cal.to_datetime(created)),
        "email": email, "phone": phone, "company_name": cname, "company_domain": cdom,
        "job_title": title, "industry": industry, "employees": pa.array(emp),
        "annual_revenue": pa.array(rev), "country": country, "lead_source": source,
        "do_not_email": pa.array(ct.do_not_email[rows]),
    }).take(pa.array(order))
    return _to_pandas(tab)


def _decode(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    """Integer codes to strings (``-1`` -> null)."""
    mask = codes < 0
    arr = pa.DictionaryArray.from_arrays(
        pa.array(np.where(mask, 0, codes).astype(np.int32), mask=mask),
        pa.array(list(names), pa.string()))
    return arr.cast(pa.large_string())  # what pandas' str dtype holds: no copy later


def _events_table(ev: dict[str, np.ndarray], all_ids: pa.Array, cat: _Catalog,
                  cal: _Calendar) -> pd.DataFrame:
    """Integer-coded events to the events table."""
    tab = pa.table({
        "contact_id": all_ids.cast(pa.large_string()).take(pa.array(ev["c"])),
        "ts": pa.array(cal.to_datetime(ev["ts"])),
        "event_type": _decode(ev["et"], EVENT_TYPES + UNKNOWN_EVENT_TYPES),
        "page_category": _decode(ev["pcat"], PAGE_CATEGORIES),
        "campaign_id": _decode(ev["camp"], cat.ids),
        "channel": _decode(ev["chan"], CHANNELS),
    })
    return _to_pandas(tab)


def _to_pandas(tab: pa.Table) -> pd.DataFrame:
    """Arrow table to pandas with the default ``str`` dtype for string columns."""
    strings = [f.name for f in tab.schema
               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    tab = tab.cast(pa.schema([pa.field(f.name, pa.large_string()) if f.name in strings else f
                              for f in tab.schema]))
    df = tab.to_pandas()
    for name in strings:
        if df[name].dtype != "str":
            df[name] = df[name].astype("str")
    return df


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Write each table as ``<out_dir>/<name>.parquet``, byte-identical for identical input.

    Parquet via pyarrow, no pandas index, zstd level 3, fixed row-group size; each file is
    written to a temporary name and renamed into place.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in sorted(tables):
        path = out_dir / f"{name}.parquet"
        tmp = out_dir / f".{name}.parquet.tmp"
        table = pa.Table.from_pandas(tables[name], preserve_index=False)
        pq.write_table(table, tmp, compression="zstd", compression_level=3,
                       row_group_size=1 << 20, use_dictionary=True, write_statistics=True)
        os.replace(tmp, path)
        paths[name] = path
    return paths
