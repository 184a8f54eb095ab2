"""Fit features: who the contact is (firmographics and the job title)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
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
def _title_placeholders() -> frozenset[str]:
    return frozenset(_normalise_title(str(w)) for w in yaml.safe_load(_TITLES_YAML.read_text())["placeholders"])


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
    >>> parse_job_title(" N/A ")
    ('unknown', 'unknown')
    """
    if not isinstance(title, str):
        return "unknown", "unknown"
    t = _normalise_title(title)
    if t in _title_placeholders() or not any(c.isalpha() for c in t):
        return "unknown", "unknown"
    seniority_patterns, department_patterns = _title_patterns()
    seniority = next((lvl for lvl, p in seniority_patterns if p.search(t)), "individual")
    department = next((dep for dep, p in department_patterns if p.search(t)), "other")
    if seniority == "c_level" and department == "other":
        department = "executive"
    if seniority == "student":
        department = "other" if department == "other" else department
    return seniority, department


_SMALL = 16  # up to this many values, per-value loops beat pd.factorize (same results)


@lru_cache(maxsize=8192)
def _parse_title_cached(title: str) -> tuple[str, str]:
    return parse_job_title(title)


def parse_job_titles(titles: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seniority and department arrays for a column of titles; each distinct title is parsed once."""
    if len(titles) <= _SMALL:  # the online path: a few leads, titles seen before are cached
        parsed = [_parse_title_cached(t) if isinstance(t, str) else ("unknown", "unknown")
                  for t in titles]
        return (np.array([p[0] for p in parsed], dtype=object).reshape(len(titles)),
                np.array([p[1] for p in parsed], dtype=object).reshape(len(titles)))
    codes, uniques = pd.factorize(titles, use_na_sentinel=True)
    parsed = [_parse_title_cached(t) if isinstance(t, str) else parse_job_title(t) for t in uniques]
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


def _clean_category(values: pd.Series | np.ndarray, *, case: str) -> np.ndarray:
    """Whitespace-folded labels (``lower``: lower-case with ``_``; ``upper``; ``keep``), None
    for missing; each distinct value is cleaned once."""
    if len(values) <= _SMALL:
        return np.array([_clean_value(v, case) for v in values], dtype=object).reshape(len(values))
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    cleaned = np.array([_clean_value(u, case) for u in uniques] + [None], dtype=object)
    return cleaned[codes]


_PLAIN = (type(None), str, bool, int, float)


def _isna_one(v: object) -> bool:
    if type(v) in _PLAIN:
        return v is None or (type(v) is float and v != v)
    return bool(pd.isna(v))


def _fit_rows(contacts: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """:func:`fit_features` of a few contacts given as columns, value by value (the online
    path: the same rules without the fixed cost of ~30 numpy calls)."""

    def col(name: str) -> list:
        if name not in contacts:
            return [None] * n
        return [None if _isna_one(v) else v for v in contacts[name]]

    def objects(values: list) -> np.ndarray:
        out = np.empty(n, dtype=object)
        out[:] = values
        return out

    titles = [_parse_title_cached(t) if isinstance(t, str) else ("unknown", "unknown")
              for t in col("job_title")]
    raw_employees, raw_revenue = col("employees"), col("annual_revenue")
    employees, revenue = _numbers(objects(raw_employees)), _numbers(objects(raw_revenue))
    email_quality = ["missing" if v is None else v for v in col("email_quality")]
    has_phone = _numbers(objects([0 if v is None else v for v in col("has_phone")]))
    company, title, industry, country = col("company_name"), col("job_title"), col("industry"), col("country")
    completeness = [
        ((q == "corporate") | (q == "free")) + bool(h > 0) + (c is not None) + (t is not None)
        + (i is not None) + (e is not None) + (r is not None) + (k is not None)
        for q, h, c, t, i, e, r, k in zip(email_quality, has_phone.tolist(), company, title, industry,
                                          raw_employees, raw_revenue, country)
    ]
    return {
        "industry": objects([_clean_value(v, "keep") for v in industry]),
        "employees_band": objects([_band(x, schema.EMPLOYEE_EDGES, schema.EMPLOYEE_BANDS)
                                   for x in employees.tolist()]),
        "revenue_band": objects([_band(x, schema.REVENUE_EDGES, schema.REVENUE_BANDS)
                                 for x in revenue.tolist()]),
        "country": objects([_clean_value(v, "upper") for v in country]),
        "lead_source": objects([_clean_value(v, "lower") for v in col("lead_source")]),
        "seniority": objects([t[0] for t in titles]),
        "department": objects([t[1] for t in titles]),
        "email_quality": objects(email_quality),
        "employees": employees,
        "annual_revenue": revenue,
        "has_phone": has_phone,
        "do_not_email": np.array([1.0 if v == True else 0.0 for v in col("do_not_email")],
                                 dtype="float64").reshape(n),
        "profile_completeness": np.array([c / len(_PROFILE_FIELDS) for c in completeness],
                                         dtype="float64").reshape(n),
    }


def _band(x: float, edges: tuple[float, ...], labels: tuple[str, ...]) -> str:
    """:func:`size_band` of one value."""
    if x != x or x < 0:
        return labels[-1]
    return labels[bisect.bisect_right(edges, x)]


def _fill(values: pd.Series | np.ndarray, value: object) -> np.ndarray:
    """The values as an object array with ``value`` where missing (each distinct value once)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return np.array(list(uniques) + [value], dtype=object)[codes]


def _numbers(values: pd.Series | np.ndarray) -> np.ndarray:
    """Values as float64: NaN where missing or not a number."""
    if isinstance(values, pd.Series):
        if pd.api.types.is_numeric_dtype(values.dtype):
            return values.to_numpy(dtype="float64", na_value=np.nan)
        values = _fill(values, None)
    try:
        return values.astype("float64")
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")


def fit_features(contacts: pd.DataFrame | Mapping[str, np.ndarray], *, n: int | None = None
                 ) -> dict[str, np.ndarray]:
    """Fit features (column name -> array) of contacts that do not depend on the as-of date.

    ``contacts`` (a DataFrame, or a mapping of column name -> array of ``n`` values, the
    online path) carries the contact columns of :data:`schema.CONTACTS` plus the hygiene
    columns ``email_quality`` and ``has_phone``; missing optional columns count as missing.
    ``contact_age_days`` is added per snapshot by the caller. Works on plain arrays, so one
    online lead costs well under a millisecond; a DataFrame's columns are used as they are
    (Arrow-backed text is never turned into a million Python objects).
    """
    n = len(contacts) if n is None else n
    frame = isinstance(contacts, pd.DataFrame)
    if not frame and n <= _SMALL:
        return _fit_rows(contacts, n)
    missing = np.full(n, None, dtype=object)

    def col(name: str) -> pd.Series | np.ndarray:
        if name not in contacts:
            return missing
        return contacts[name] if frame else np.asarray(contacts[name], dtype=object)

    seniority, department = parse_job_titles(col("job_title"))
    employees, revenue = _numbers(col("employees")), _numbers(col("annual_revenue"))
    email_quality = _fill(col("email_quality"), "missing")
    has_phone = _numbers(_fill(col("has_phone"), 0))
    present = np.column_stack([~np.asarray(pd.isna(col(c))) for c in _PROFILE_FIELDS])
    present[:, 0] = (email_quality == "corporate") | (email_quality == "free")
    present[:, 1] = has_phone > 0
    return {
        "industry": _clean_category(col("industry"), case="keep"),
        "employees_band": size_band(employees, schema.EMPLOYEE_EDGES, schema.EMPLOYEE_BANDS),
        "revenue_band": size_band(revenue, schema.REVENUE_EDGES, schema.REVENUE_BANDS),
        "country": _clean_category(col("country"), case="upper"),
        "lead_source": _clean_category(col("lead_source"), case="lower"),
        "seniority": seniority,
        "department": department,
        "email_quality": email_quality,
        "employees": employees,
        "annual_revenue": revenue,
        "has_phone": has_phone,
        "do_not_email": (_fill(col("do_not_email"), None) == True).astype("float64"),
        "profile_completeness": present.mean(axis=1) if n else np.zeros(0),
    }
