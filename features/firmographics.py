"""Fit features: who the contact is (firmographics and the job title)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from features import schema

_TITLES_YAML = Path(__file__).with_name("job_titles.yaml")
_PROFILE_FIELDS = (
    "email", "phone", "company_name", "job_title", "industry",
    "employees", "annual_revenue", "country",
)


@lru_cache(maxsize=1)
def _title_patterns() -> tuple[list[tuple[str, re.Pattern]], list[tuple[str, re.Pattern]]]:
    spec = yaml.safe_load(_TITLES_YAML.read_text())

    def compile_levels(levels: dict[str, list[str]]) -> list[tuple[str, re.Pattern]]:
        out = []
        for level, words in levels.items():
            alternatives = "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True))
            out.append((level, re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])")))
        return out

    return compile_levels(spec["seniority"]), compile_levels(spec["department"])


def _normalise_title(title: str) -> str:
    t = title.lower()
    t = re.sub(r"\bsr\.?(?=\s)", "senior", t)
    t = re.sub(r"\bjr\.?(?=\s)", "junior", t)
    t = t.replace("&", " & ").replace("/", " / ").replace(",", " , ")
    return re.sub(r"\s+", " ", t).strip()


def parse_job_title(title: object) -> tuple[str, str]:
    """Seniority and department of one free-text job title.

    Examples
    --------
    >>> parse_job_title("VP Marketing")
    ('vp', 'marketing')
    >>> parse_job_title("Leiter Einkauf")
    ('director', 'purchasing')
    >>> parse_job_title(None)
    ('unknown', 'unknown')
    """
    if not isinstance(title, str) or not title.strip():
        return "unknown", "unknown"
    seniority_patterns, department_patterns = _title_patterns()
    t = _normalise_title(title)
    seniority = next((lvl for lvl, p in seniority_patterns if p.search(t)), "individual")
    department = next((dep for dep, p in department_patterns if p.search(t)), "other")
    if seniority == "c_level" and department == "other":
        department = "executive"
    if seniority == "student":
        department = "other" if department == "other" else department
    return seniority, department


def parse_job_titles(titles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seniority and department arrays for a column of titles; each distinct title is parsed once."""
    codes, uniques = pd.factorize(titles, use_na_sentinel=True)
    parsed = [parse_job_title(t) for t in uniques]
    seniority = np.array([p[0] for p in parsed] + ["unknown"], dtype=object)
    department = np.array([p[1] for p in parsed] + ["unknown"], dtype=object)
    return seniority[codes], department[codes]


def size_band(values: np.ndarray, edges: tuple[float, ...], labels: tuple[str, ...]) -> np.ndarray:
    """Band label of each value (the last label is for missing).

    Examples
    --------
    >>> list(size_band(np.array([5, 10, np.nan]), schema.EMPLOYEE_EDGES, schema.EMPLOYEE_BANDS))
    ['1-9', '10-49', 'unknown']
    """
    x = np.asarray(values, dtype="float64")
    idx = np.searchsorted(np.asarray(edges), x, side="right")
    idx = np.where(np.isnan(x) | (x < 0), len(labels) - 1, idx)
    return np.asarray(labels, dtype=object)[idx]


def _clean_value(value: object, case: str) -> object:
    if not isinstance(value, str):
        return None
    v = " ".join(value.split())
    if not v or v.lower() in ("nan", "none", "null", "n/a"):
        return None
    return v.lower().replace(" ", "_") if case == "lower" else v.upper() if case == "upper" else v


def _clean_category(values: np.ndarray, *, case: str) -> np.ndarray:
    """Whitespace-folded labels (``lower``: lower-case with ``_``; ``upper``; ``keep``), None
    for missing; each distinct value is cleaned once."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    cleaned = np.array([_clean_value(u, case) for u in uniques] + [None], dtype=object)
    return cleaned[codes]


def _numbers(values: np.ndarray) -> np.ndarray:
    try:
        return values.astype("float64")
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")


def fit_features(contacts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Fit features (column name -> array) of contacts that do not depend on the as-of date.

    ``contacts`` carries the contact columns of :data:`schema.CONTACTS` plus the hygiene
    columns ``email_quality`` and ``has_phone``; missing optional columns count as missing.
    ``contact_age_days`` is added per snapshot by the caller. Works on plain arrays, so one
    online lead costs well under a millisecond.
    """
    n = len(contacts)
    missing = np.full(n, None, dtype=object)

    def col(name: str) -> np.ndarray:
        if name not in contacts:
            return missing
        values = contacts[name].to_numpy(dtype=object)
        return np.where(pd.isna(values), None, values)

    seniority, department = parse_job_titles(col("job_title"))
    employees, revenue = _numbers(col("employees")), _numbers(col("annual_revenue"))
    email_quality = np.where(col("email_quality") == None, "missing", col("email_quality"))  # noqa: E711
    has_phone = _numbers(np.where(col("has_phone") == None, 0, col("has_phone")))  # noqa: E711
    present = np.column_stack([col(c) != None for c in _PROFILE_FIELDS])  # noqa: E711
    present[:, 0] = np.isin(email_quality, ["corporate", "free"])
    present[:, 1] = has_phone > 0
    return {
        "industry": _clean_category(col("industry"), case="keep"),
        "employees_band": size_band(employees, schema.EMPLOYEE_EDGES, schema.EMPLOYEE_BANDS),
        "revenue_band": size_band(revenue, schema.REVENUE_EDGES, schema.REVENUE_BANDS),
        "country": _clean_category(col("country"), case="upper"),
        "lead_source": _clean_category(col("lead_source"), case="lower"),
        "seniority": seniority,
        "department": department,
        "email_quality": email_quality.astype(object),
        "employees": employees,
        "annual_revenue": revenue,
        "has_phone": has_phone,
        "do_not_email": (col("do_not_email") == True).astype("float64"),  # noqa: E712
        "profile_completeness": present.mean(axis=1) if n else np.zeros(0),
    }
