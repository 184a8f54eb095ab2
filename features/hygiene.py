"""Data hygiene: email and phone quality, duplicate contacts, orphan and future rows.

:func:`clean` is the pipeline stage between :func:`features.io.read_tables` (or
:func:`features.io.validate_tables`) and feature building. It never drops a row
silently: every dropped row is in ``CleanResult.rejects`` with one of these reasons.

==================== ==================================================================
reason               rows
==================== ==================================================================
duplicate_contact    a contact merged into another one (same normalised email, or the
                     same ``contact_id`` twice)
unknown_contact      an event or stage change whose ``contact_id`` is not a contact
future_timestamp     an event or stage change after the export date
==================== ==================================================================

``CleanResult.rejects`` holds the rows rejected *here*; the rows rejected while loading
stay in ``Tables.rejects`` (concatenate both for the full picture).

Choices worth knowing:

* Only *valid* normalised emails link duplicates: placeholders such as ``"n/a"`` or
  ``"test@test"`` would otherwise merge unrelated people.
* Duplicates are linked transitively (A and B share an email, B and C share an id: one
  contact). The canonical contact is the earliest ``created_at`` (tie: smallest id as
  text); its missing values are filled from the duplicates, earliest first; its
  ``do_not_email`` is True if any duplicate's is (an opt-out is never lost). A value that
  came with a duplicate created *later* was not known before that record existed (a
  returning lead's second form fill would tell a snapshot before it who comes back), so
  the canonical row records it: ``filled_fields`` (int16 bitmask, bit ``i`` for
  :data:`FILLABLE_FIELDS` ``[i]``: filled from a later duplicate) and ``filled_at`` (the
  latest ``created_at`` among the later duplicates that filled something; NaT when none
  did). Point-in-time snapshots before ``filled_at`` read those fields as missing
  (:class:`features.build.Snapshotter`); duplicates created at the canonical's instant fill
  unconditionally and set no bit. Both columns are internal (never in a feature table,
  scores or rejects).
* Events and stage changes of duplicates move to the canonical id; all are kept, and count
  from their own timestamps (a later record's unsubscribe too: ``unsubscribed``).
* Events before the contact's ``created_at`` are kept: marketing automation tracks
  anonymous visits and links them to the contact at the form fill.
* Stage changes after the export date are rejected like events.
* Raw ``email`` and ``phone`` stay in ``contacts`` (an internal frame); rejects carry
  ``table, row, contact_id, reason`` only.
* ``country`` codes are stripped and upper-cased (``" de"`` → ``"DE"``), before duplicates
  are merged and phones are read in them.

A base too large for memory is cleaned in two steps (as ``leadscore score`` does):
:func:`canonical_rows` links the whole base from its key columns only (``contact_id``,
``created_at``, normalised ``email``); then :func:`clean_contacts` cleans any set of
contacts closed under those links (all contacts whose canonical contact falls in one chunk)
exactly as :func:`clean` would within the whole table.

Email syntax follows ``email-validator`` (``check_deliverability=False``, no DNS) and
phone validity follows ``phonenumbers``; both are exact but run in Python, so they are
applied to distinct values only, with vectorised shortcuts for the common shapes
(ordinary ASCII addresses, ``+<country code>`` numbers) that give the same answers.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import email_validator
import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from phonenumbers.phonemetadata import PhoneMetadata, PhoneNumberDesc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features import schema
from features.io import (
    Tables,
    concat_rejects,
    empty_rejects,
    filter_rows,
    make_rejects,
    to_text,
)

DUPLICATE_CONTACT = "duplicate_contact"
UNKNOWN_CONTACT = "unknown_contact"
FUTURE_TIMESTAMP = "future_timestamp"

CORPORATE, FREE, DISPOSABLE, INVALID, MISSING = schema.EMAIL_QUALITIES
EMAIL_QUALITIES_INDEX: dict[str, int] = {q: i for i, q in enumerate(schema.EMAIL_QUALITIES)}
DEFAULT_PHONE_REGION = "US"
_REGION_ALIASES = {"UK": "GB"}
_STR = pd.StringDtype("pyarrow", na_value=np.nan)


@dataclass
class CleanResult:
    """Output of :func:`clean`.

    Attributes
    ----------
    contacts
        One row per contact (index = original row number), plus ``email_quality``
        (one of :data:`schema.EMAIL_QUALITIES`) and ``has_phone`` (int8 0/1).
    events, stages
        Kept rows, ``contact_id`` mapped to the canonical contact.
    rejects
        Rows rejected by hygiene: ``table, row, contact_id, reason``.
    id_map
        ``duplicate_id -> contact_id`` (canonical) for every merged contact id.
    """

    contacts: pd.DataFrame
    events: pd.DataFrame
    stages: pd.DataFrame
    rejects: pd.DataFrame
    id_map: pd.DataFrame


# ---------------------------------------------------------------------------
# Emails
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def email_domains() -> dict[str, frozenset[str]]:
    """Free-mail and disposable domains from ``features/email_domains.yaml``."""
    text = importlib.resources.files("features").joinpath("email_domains.yaml").read_text()
    data = yaml.safe_load(text)
    return {
        k: frozenset(d.strip().lower() for d in data.get(k) or ()) for k in ("free", "disposable")
    }


# RFC 5322 dot-atom, ASCII only: email-validator's first (fast) test for local parts.
_ATEXT = r"a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~"
_LOCAL_ASCII = rf"^[{_ATEXT}]+(?:\.[{_ATEXT}]+)*$"
# An ordinary ASCII host name: letter/digit labels with inner hyphens, alphabetic TLD.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_ASCII = rf"^(?:{_LABEL}\.)+[a-z]{{2,63}}$"
_RESERVED_HYPHENS = r"(?:^|\.)[a-z0-9]{2}--"  # "ab--" label starts: IDNA rules apply
_EMAIL_MAX = 254
_DOMAIN_MAX = 253


def normalise_email(emails: pd.Series) -> pd.Series:
    """Strip and lower-case; NaN when missing or not a valid address.

    Parameters
    ----------
    emails
        Raw addresses (any dtype).

    Returns
    -------
    pd.Series
        ``str`` dtype, same index.

    Examples
    --------
    >>> import pandas as pd
    >>> normalise_email(pd.Series([" Ann@Example.COM ", "n/a", None])).tolist()
    ['ann@example.com', nan, nan]
    """
    norm, _ = _analyse_emails(emails)
    return norm


def email_quality(emails: pd.Series) -> pd.Series:
    """Classify addresses as corporate, free, disposable, invalid or missing.

    Parameters
    ----------
    emails
        Raw addresses (any dtype).

    Returns
    -------
    pd.Series
        ``str`` dtype with values from :data:`schema.EMAIL_QUALITIES`, same index.

    Examples
    --------
    >>> import pandas as pd
    >>> emails = pd.Series(["a@acme.com", "B@GMAIL.com", "x@mailinator.com", "x@", ""])
    >>> email_quality(emails).tolist()
    ['corporate', 'free', 'disposable', 'invalid', 'missing']
    """
    _, quality = _analyse_emails(emails)
    return quality


def _analyse_emails(emails: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Normalised address (NaN unless valid) and quality class, per row.

    Vectorised with Arrow; ``email-validator`` runs once per distinct unusual domain
    and once per distinct address whose local part is not plain ASCII dot-atom.
    """
    index = emails.index
    lower = pc.utf8_lower(_arrow(to_text(emails)).combine_chunks())
    n = len(lower)
    present = _np_bool(pc.is_valid(lower))
    has_at = present & _np_bool(pc.match_substring(lower, "@"))
    # split at the last "@" (rows without one get an empty local part and domain)
    parts = pc.split_pattern(
        pc.if_else(pa.array(has_at), lower, "@"), "@", max_splits=1, reverse=True
    )
    local, domain = pc.list_element(parts, 0), pc.list_element(parts, 1)
    plain = (
        has_at
        & _np_bool(pc.string_is_ascii(lower))
        & _np_bool(pc.match_substring_regex(local, _LOCAL_ASCII))
    )
    domains = pc.unique(domain.filter(pa.array(has_at)))
    dom_idx = pc.fill_null(pc.index_in(domain, value_set=domains), 0).to_numpy(zero_copy_only=False)
    dom_ok = _domains_valid(domains)
    length_ok = _np_bool(pc.less_equal(pc.utf8_length(lower), _EMAIL_MAX))
    valid = plain & length_ok & dom_ok[dom_idx] if len(domains) else np.zeros(n, dtype=bool)
    slow = has_at & ~plain
    if slow.any():  # non-ASCII, quoted or odd local parts: the library decides
        addresses = lower.filter(pa.array(slow))
        distinct = pc.unique(addresses)
        verdict = np.array([_email_valid_exact(a) for a in distinct.to_pylist()], dtype=bool)
        valid[np.flatnonzero(slow)] = verdict[
            pc.index_in(addresses, value_set=distinct).to_numpy(zero_copy_only=False)
        ]
    codes = np.full(n, EMAIL_QUALITIES_INDEX[INVALID], dtype=np.int8)
    codes[~present] = EMAIL_QUALITIES_INDEX[MISSING]
    if valid.any():
        codes[valid] = _domain_kinds(domains)[dom_idx[valid]]
    quality = pa.DictionaryArray.from_arrays(
        pa.array(codes), pa.array(schema.EMAIL_QUALITIES, type=pa.large_string())
    ).cast(pa.large_string())
    norm = pc.if_else(pa.array(valid), lower, pa.scalar(None, pa.large_string()))
    return _str_series(norm, index), _str_series(quality, index)


def _domains_valid(domains: pa.Array) -> np.ndarray:
    """Validity of distinct domains: regex for ordinary ASCII names, email-validator otherwise.

    An ordinary name (ASCII letter/digit labels with inner hyphens, no ``ab--`` label
    start, at least one dot, alphabetic TLD, at most 253 characters) passes every check
    ``email-validator`` makes except the special-use names, checked here too.
    """
    ordinary = (
        _np_bool(pc.match_substring_regex(domains, _DOMAIN_ASCII))
        & ~_np_bool(pc.match_substring_regex(domains, _RESERVED_HYPHENS))
        & _np_bool(pc.less_equal(pc.utf8_length(domains), _DOMAIN_MAX))
    )
    ok = ordinary & ~_np_bool(
        pc.match_substring_regex(
            domains, _suffix_pattern(tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES))
        )
    )
    for i in np.flatnonzero(~ordinary):
        ok[i] = _email_valid_exact(f"a@{domains[i].as_py()}")
    return ok


def _domain_kinds(domains: pa.Array) -> np.ndarray:
    """Quality code (index in :data:`schema.EMAIL_QUALITIES`) of each distinct domain."""
    lists = email_domains()
    kinds = np.full(len(domains), EMAIL_QUALITIES_INDEX[CORPORATE], dtype=np.int8)
    free = _np_bool(
        pc.match_substring_regex(domains, _suffix_pattern(tuple(sorted(lists["free"]))))
    )
    disposable = _np_bool(
        pc.match_substring_regex(domains, _suffix_pattern(tuple(sorted(lists["disposable"]))))
    )
    kinds[free] = EMAIL_QUALITIES_INDEX[FREE]
    kinds[disposable] = EMAIL_QUALITIES_INDEX[DISPOSABLE]
    return kinds


@functools.lru_cache(maxsize=8)
def _suffix_pattern(names: tuple[str, ...]) -> str:
    """Regex matching a domain equal to one of ``names`` or a subdomain of one."""
    if not names:
        return r"^\b$"  # matches nothing
    return r"(?:^|\.)(?:" + "|".join(re.escape(d) for d in names) + r")$"


def _email_valid_exact(address: str) -> bool:
    try:
        email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return False
    return True


# ---------------------------------------------------------------------------
# Phones
# ---------------------------------------------------------------------------


def phone_valid(
    phones: pd.Series,
    countries: pd.Series | None = None,
    *,
    default_region: str | None = DEFAULT_PHONE_REGION,
) -> pd.Series:
    """Whether each phone number is a valid number (``phonenumbers.is_valid_number``).

    Numbers in national format are read in the region of the contact's ISO-2
    ``country``; when it is missing or unknown, in ``default_region`` (None: such
    numbers are invalid). ``+<country code>`` numbers need no region.

    Parameters
    ----------
    phones
        Raw phone numbers (any dtype).
    countries
        ISO-2 country codes aligned with ``phones`` (``UK`` is read as ``GB``).
    default_region
        Region for numbers without a usable country.

    Returns
    -------
    pd.Series
        bool, same index; missing numbers are False.

    Notes
    -----
    ``phonenumbers.parse`` costs ~40 µs a number in Python. The two common shapes,
    ``+<digits>`` and national digits with ordinary punctuation, are parsed here with
    vectorised string operations and the library's own metadata (same country-code,
    national-prefix and number-pattern rules); whatever those rules leave open
    (international dialling prefixes, a national number starting with the country
    code, regions with prefix rewriting, anything unusual) goes to the library itself,
    once per distinct (number, region).

    Examples
    --------
    >>> import pandas as pd
    >>> phone_valid(pd.Series(["030 901820", "+1 650-253-0000", "12", None]),
    ...             pd.Series(["DE", None, "FR", "US"])).tolist()
    [True, True, False, False]
    """
    index = phones.index
    text = to_text(phones)
    n = len(text)
    region_code, region_names = _regions(countries, default_region, n)
    valid = np.zeros(n, dtype=bool)
    present = text.notna().to_numpy()
    if not present.any():
        return pd.Series(valid, index=index)
    arr = _arrow(text).combine_chunks()
    plus = present & _np_bool(pc.match_substring_regex(arr, r"^\+[0-9][0-9 ().\-/]*[0-9]$"))
    has_region = np.array([r is not None for r in region_names], dtype=bool)[region_code]
    national = (
        present
        & ~plus
        & has_region
        & _np_bool(pc.match_substring_regex(arr, r"^[0-9(][0-9 ().\-/]*[0-9]$"))
    )
    slow = present & ~plus & ~national
    for sel in (plus, national):
        if not sel.any():
            continue
        rows = np.flatnonzero(sel)
        digits = pc.replace_substring_regex(arr.filter(pa.array(sel)), r"[^0-9]", "")
        if sel is plus:
            cc, nsn, unsure = _split_international(digits)
        else:
            cc, nsn, unsure = _split_by_region(digits, region_code[rows], region_names)
        sure = np.flatnonzero(~unsure)
        valid[rows[sure]] = _nsn_valid(cc[sure], nsn.take(pa.array(sure)))
        slow[rows[unsure]] = True
    if slow.any():  # the library itself, once per distinct (number, region)
        rows = np.flatnonzero(slow)
        keys = pd.DataFrame({"phone": _take(arr, slow), "region": region_code[rows]})
        distinct = keys.drop_duplicates()
        verdict = {
            (p, r): _phone_valid_exact(p, region_names[r])
            for p, r in zip(distinct["phone"], distinct["region"], strict=True)
        }
        valid[rows] = [verdict[key] for key in zip(keys["phone"], keys["region"], strict=True)]
    return pd.Series(valid, index=index)


def _split_by_region(
    digits: pa.Array, region_code: np.ndarray, region_names: list[str | None]
) -> _Split:
    """:func:`_split_national` for each region present, reassembled in row order."""
    n = len(digits)
    cc = np.zeros(n, dtype=np.int64)
    unsure = np.ones(n, dtype=bool)
    nsn = digits
    for code in np.unique(region_code):
        sub = np.flatnonzero(region_code == code)
        cc[sub], nsn_sub, unsure[sub] = _split_national(
            digits.take(pa.array(sub)), str(region_names[code])
        )
        nsn = _put(nsn, sub, nsn_sub)
    return cc, nsn, unsure


def _regions(
    countries: pd.Series | None, default: str | None, n: int
) -> tuple[np.ndarray, list[str | None]]:
    """Phone region per row, as codes into a list of region names.

    The region is the ISO-2 country when ``phonenumbers`` knows it, else the default.
    """
    default = default.upper() if default else None
    if countries is None:
        return np.zeros(n, dtype=np.int64), [default]
    if len(countries) != n:
        raise ValueError("countries must be aligned with phones (same length)")
    codes, uniques = pd.factorize(to_text(countries).str.upper())
    names: list[str | None] = [default]
    for code in uniques:
        region = _REGION_ALIASES.get(code, code)
        names.append(region if region in phonenumbers.SUPPORTED_REGIONS else default)
    return codes.astype(np.int64) + 1, names  # factorize's -1 (missing) -> 0 (default)


def _phone_valid_exact(phone: str, region: str | None) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(phone, region))
    except phonenumbers.NumberParseException:
        return False


_NUMBER_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' limits on the national significant number
_Split = tuple[np.ndarray, pa.Array, np.ndarray]  # country code, NSN, unsure


def _split_international(digits: pa.Array) -> _Split:
    """``+``-numbers (digits after the plus) → country code and national significant number.

    As ``phonenumbers.parse``: the code is the 1-3 digit prefix that is a calling code
    (codes are prefix-free), then the national prefix of the code's main region is
    dropped as in :func:`_strip_national_prefix` (``+49 (0)30 ...``). An unknown code
    leaves the number ``unsure`` (the library retries the digits in the default region).
    """
    n = len(digits)
    lengths = _lengths(digits)
    cc = np.zeros(n, dtype=np.int64)
    leading_zero = _np_bool(pc.starts_with(digits, "0"))
    for k in (1, 2, 3):
        open_ = (cc == 0) & (lengths > k) & ~leading_zero
        if not open_.any():
            break
        prefix = (
            pc.utf8_slice_codeunits(digits, 0, k).cast(pa.int64()).to_numpy(zero_copy_only=False)
        )
        known = open_ & np.isin(prefix, _calling_codes())
        cc[known] = prefix[known]
    unsure = cc == 0
    cc_len = np.where(cc >= 100, 3, np.where(cc >= 10, 2, 1))
    nsn = digits
    for k in (1, 2, 3):
        nsn = pc.if_else(pa.array(cc_len == k), pc.utf8_slice_codeunits(digits, k), nsn)
    out = nsn
    for code in np.unique(cc[cc > 0]):
        sel = np.flatnonzero(cc == code)
        main = phonenumbers.region_code_for_country_code(int(code))
        meta = PhoneMetadata.metadata_for_region_or_calling_code(int(code), main)
        if meta is None:
            unsure[sel] = True
            continue
        stripped, sel_unsure = _strip_national_prefix(nsn.take(pa.array(sel)), meta)
        unsure[sel] |= sel_unsure
        out = _put(out, sel, stripped)
    return cc, out, unsure


def _split_national(digits: pa.Array, region: str) -> _Split:
    """National-format digits in ``region`` → country code and NSN (national prefix off).

    Digits starting with the region's international dialling prefix or with its country
    code are left ``unsure`` (the library has extra rules for them), as are strings of
    fewer than 3 digits.
    """
    n = len(digits)
    meta = PhoneMetadata.metadata_for_region(region, None)
    if meta is None or meta.country_code is None:
        return np.zeros(n, dtype=np.int64), digits, np.ones(n, dtype=bool)
    cc = np.full(n, meta.country_code, dtype=np.int64)
    unsure = _lengths(digits) < 3
    if meta.international_prefix:
        unsure |= _starts(digits, meta.international_prefix)
    unsure |= _np_bool(pc.starts_with(digits, str(meta.country_code)))
    sure = np.flatnonzero(~unsure)
    stripped, sure_unsure = _strip_national_prefix(digits.take(pa.array(sure)), meta)
    unsure[sure] |= sure_unsure
    return cc, _put(digits, sure, stripped), unsure


def _strip_national_prefix(numbers: pa.Array, meta: PhoneMetadata) -> tuple[pa.Array, np.ndarray]:
    """``_maybe_strip_national_prefix_carrier_code`` + ``parse``'s length test, vectorised.

    Where the region's national-prefix pattern matches the start, the match is dropped
    unless that turns a number matching the general pattern into one that does not, or
    leaves a length the region cannot have (too short, local-only or invalid). Regions
    with prefix *rewriting* rules (some NANPA islands, AR, BR, JP, ...) are ``unsure``
    wherever their pattern matches.
    """
    unsure = np.zeros(len(numbers), dtype=bool)
    prefix = meta.national_prefix_for_parsing
    if not prefix or not len(numbers):
        return numbers, unsure
    matched = _starts(numbers, prefix)
    if not matched.any():
        return numbers, unsure
    if meta.national_prefix_transform_rule:
        return numbers, matched
    idx = np.flatnonzero(matched)
    original = numbers.take(pa.array(idx))
    if re.fullmatch(r"[0-9]+", prefix):
        stripped = pc.utf8_slice_codeunits(original, len(prefix))
    else:
        pattern = re.compile(prefix)
        stripped = pa.array(
            [d[pattern.match(d).end() :] for d in original.to_pylist()], type=pa.large_string()
        )
    general = meta.general_desc.national_number_pattern
    keep = _fullmatch(original, general) & ~_fullmatch(stripped, general)
    keep |= ~_strip_length_ok(_lengths(stripped), meta.general_desc)
    return _put(numbers, idx, pc.if_else(pa.array(keep), original, stripped)), unsure


def _strip_length_ok(lengths: np.ndarray, general: PhoneNumberDesc) -> np.ndarray:
    """``_test_number_length`` (general description) is IS_POSSIBLE or TOO_LONG."""
    possible = np.array(general.possible_length or (-1,), dtype=np.int64)
    local_only = np.array(general.possible_length_local_only or (), dtype=np.int64)
    if possible[0] == -1:
        return np.zeros(len(lengths), dtype=bool)
    ok = np.isin(lengths, possible) | (lengths > possible.max())
    return ok & ~np.isin(lengths, local_only)


def _nsn_valid(cc: np.ndarray, nsn: pa.Array) -> np.ndarray:
    """``is_valid_number`` for (country code, national significant number) pairs.

    Valid when the NSN matches the general pattern and one of the number-type patterns
    (with their possible lengths) of the region the library would pick for it: the only
    region of the code, or among regions sharing it (+1, +44, +7, ...) the first whose
    leading digits match, or (without leading digits) under which the number has a type.
    """
    valid = np.zeros(len(cc), dtype=bool)
    lengths = _lengths(nsn)
    for code in np.unique(cc):
        rows = np.flatnonzero((cc == code) & (lengths >= _MIN_NSN) & (lengths <= _MAX_NSN))
        metas = _region_metadata(int(code))
        if not len(rows) or not metas:
            continue
        numbers = nsn.take(pa.array(rows))
        open_ = np.ones(len(rows), dtype=bool)
        for meta in metas:
            if not open_.any():
                break
            sub = np.flatnonzero(open_)
            sub_numbers = numbers.take(pa.array(sub))
            has_type = _type_ok(meta, sub_numbers, lengths[rows[sub]])
            if len(metas) == 1:
                chosen = np.ones(len(sub), dtype=bool)
            elif meta.leading_digits is not None:
                chosen = _starts(sub_numbers, meta.leading_digits)
            else:
                chosen = has_type
            open_[sub[chosen]] = False
            valid[rows[sub[chosen & has_type]]] = True
    return valid


@functools.lru_cache(maxsize=1)
def _calling_codes() -> np.ndarray:
    return np.array(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE), dtype=np.int64)


@functools.cache
def _region_metadata(code: int) -> tuple[PhoneMetadata, ...]:
    """Metadata of the regions sharing a calling code, in the library's order."""
    metas = (
        PhoneMetadata.metadata_for_region_or_calling_code(code, r)
        for r in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    )
    return tuple(m for m in metas if m is not None)


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def _put(arr: pa.Array, idx: np.ndarray, values: pa.Array) -> pa.Array:
    """``arr`` with ``arr[idx] = values`` (a new array)."""
    if len(idx) == 0:
        return arr
    if len(idx) == len(arr):
        return values.take(pa.array(np.argsort(idx, kind="stable")))
    pos = np.full(len(arr), -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    mask = pos >= 0
    spread = values.take(pa.array(np.where(mask, pos, 0)))
    return pc.if_else(pa.array(mask), spread, arr)


def _starts(numbers: pa.Array, pattern: str) -> np.ndarray:
    """``re.match(pattern, number)`` for each number (anchored at the start only)."""
    return _np_bool(pc.match_substring_regex(numbers, f"^(?:{pattern})"))


def _fullmatch(numbers: pa.Array, pattern: str | None) -> np.ndarray:
    if not pattern:
        return np.zeros(len(numbers), dtype=bool)
    return _np_bool(pc.match_substring_regex(numbers, f"^(?:{pattern})$"))


def _type_ok(meta: PhoneMetadata, nsn: pa.Array, lengths: np.ndarray) -> np.ndarray:
    """``_number_type_helper(nsn, meta) != UNKNOWN``, vectorised."""
    ok = _desc_match(meta.general_desc, nsn, lengths, np.ones(len(nsn), dtype=bool))
    any_type = np.zeros(len(nsn), dtype=bool)
    for name in _NUMBER_TYPES:
        todo = ok & ~any_type
        if not todo.any():
            break
        any_type |= _desc_match(getattr(meta, name), nsn, lengths, todo)
    return ok & any_type


def _desc_match(
    desc: PhoneNumberDesc | None, nsn: pa.Array, lengths: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``_is_number_matching_desc``: possible length (when listed) and full pattern match."""
    out = np.zeros(len(nsn), dtype=bool)
    if desc is None or not desc.national_number_pattern:
        return out
    cand = mask.copy()
    if desc.possible_length:
        cand &= np.isin(lengths, np.array(desc.possible_length))
    if cand.any():
        idx = np.flatnonzero(cand)
        hit = _fullmatch(nsn.take(pa.array(idx)), desc.national_number_pattern)
        out[idx[hit]] = True
    return out


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------


def clean(
    tables: Tables,
    *,
    export_date: pd.Timestamp | str | None = None,
    default_phone_region: str | None = DEFAULT_PHONE_REGION,
) -> CleanResult:
    """Deduplicate contacts, add email/phone quality, reject orphan and future rows.

    Parameters
    ----------
    tables
        Validated tables (:func:`features.io.read_tables` / ``validate_tables``).
    export_date
        The instant of the export: events and stage changes strictly after it are
        rejected as ``future_timestamp`` (a bare date means its midnight). Default: now
        (UTC). Tz-aware values are converted to UTC.
    default_phone_region
        Region for national-format phone numbers of contacts without a country.

    Returns
    -------
    CleanResult
        Clean tables, the rows rejected here (not those of ``tables.rejects``) and the
        duplicate → canonical id map.

    Examples
    --------
    >>> import pandas as pd
    >>> from features.io import validate_tables
    >>> tables = validate_tables(
    ...     pd.DataFrame({"contact_id": ["a", "b"], "created_at": ["2024-02-01", "2024-01-01"],
    ...                   "email": ["Ann@Acme.com", "ann@acme.com"]}),
    ...     pd.DataFrame({"contact_id": ["a", "x"], "ts": ["2024-02-02", "2024-02-02"],
    ...                   "event_type": ["chat", "chat"]}),
    ...     pd.DataFrame(),
    ... )
    >>> result = clean(tables, export_date="2024-06-30")
    >>> result.contacts["contact_id"].tolist(), result.events["contact_id"].tolist()
    (['b'], ['b'])
    >>> result.rejects["reason"].tolist()
    ['duplicate_contact', 'unknown_contact']
    """
    export = _naive_utc(export_date)
    contacts, rejects, id_map = clean_contacts(
        tables.contacts, default_phone_region=default_phone_region
    )
    known = pc.unique(_arrow(tables.contacts["contact_id"]).combine_chunks().drop_null())
    canonical = known
    if len(id_map):
        dup = _arrow(id_map["duplicate_id"]).combine_chunks()
        target = _arrow(id_map["contact_id"]).combine_chunks()
        pos = pc.index_in(known, value_set=dup)
        canonical = pc.if_else(pc.is_valid(pos), target.take(pc.fill_null(pos, 0)), known)
    events, ev_rej = _attach(tables.events, "events", known, canonical, export)
    stages, st_rej = _attach(tables.stages, "stages", known, canonical, export)
    return CleanResult(
        contacts=contacts,
        events=events,
        stages=stages,
        rejects=concat_rejects([rejects, ev_rej, st_rej]),
        id_map=id_map,
    )


def clean_contacts(
    contacts: pd.DataFrame, *, default_phone_region: str | None = DEFAULT_PHONE_REGION
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The contacts part of :func:`clean`: country codes, email quality, duplicates, phones.

    Parameters
    ----------
    contacts
        Validated contacts (index = original row number). Every contact linked to one of
        them (same id, same valid email, transitively) must be there too: a subset closed
        under duplicate links (e.g. all contacts whose canonical contact falls in one bucket,
        :func:`canonical_rows`) is cleaned exactly as within the whole table.
    default_phone_region
        Region for national-format phone numbers of contacts without a country.

    Returns
    -------
    contacts, rejects, id_map
        As :class:`CleanResult`'s (rejects: the ``duplicate_contact`` rows only).
    """
    if "country" in contacts:
        contacts = contacts.assign(country=normalise_country(contacts["country"]))
    norm, quality = _analyse_emails(_column(contacts, "email"))
    contacts = contacts.assign(email_quality=quality)
    contacts, rejects, id_map = _deduplicate(contacts, norm)
    valid_phone = phone_valid(
        _column(contacts, "phone"),
        contacts.get("country"),
        default_region=default_phone_region,
    )
    contacts = contacts.assign(has_phone=valid_phone.to_numpy().astype(np.int8))
    return contacts, rejects, id_map


def normalise_country(countries: pd.Series) -> pd.Series:
    """ISO country codes as text, stripped and upper-cased (``" de"`` → ``"DE"``); blank → missing.

    Aliases are kept as given (``UK`` stays ``UK``; :func:`phone_valid` reads it as ``GB``).

    Examples
    --------
    >>> import pandas as pd
    >>> normalise_country(pd.Series([" de", "Us", None, ""])).tolist()
    ['DE', 'US', nan, nan]
    """
    text = to_text(countries)
    return _str_series(pc.utf8_upper(_arrow(text)), text.index).rename(countries.name)


def _naive_utc(ts: pd.Timestamp | str | None) -> pd.Timestamp:
    if ts is None:
        return pd.Timestamp.now(tz="UTC").tz_localize(None)
    ts = pd.Timestamp(ts)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame:
        return frame[name]
    return pd.Series(np.full(len(frame), None, dtype=object), index=frame.index, dtype=_STR)


def _empty_id_map() -> pd.DataFrame:
    return pd.DataFrame(
        {"duplicate_id": pd.Series([], dtype=_STR), "contact_id": pd.Series([], dtype=_STR)}
    )


@dataclass
class _Groups:
    """Duplicate groups of a contacts table (positions are rows of that table)."""

    canonical_of: np.ndarray  # position of each row's canonical row (itself when canonical)
    comp: np.ndarray  # group label of each row
    order: np.ndarray  # rows sorted by group, canonical first, then its duplicates in merge order
    first: np.ndarray  # along ``order``: the row is its group's first (canonical)
    id_codes: np.ndarray  # rank of each row's id as text


def _groups(ids: pd.Series, created_at: np.ndarray, norm_email: pd.Series) -> _Groups | None:
    """Link rows sharing a contact_id or a valid normalised email (transitively); None when no
    two rows are linked."""
    n = len(ids)
    id_codes = _codes(ids, rank=True)  # rank of the id as text
    email_codes = _codes(norm_email)  # -1 for NaN: never links
    valid_email = email_codes[email_codes >= 0]
    if n == 0 or (
        id_codes.max() + 1 == n and (not len(valid_email) or np.bincount(valid_email).max() == 1)
    ):
        return None
    comp = _components(n, id_codes, email_codes)
    # canonical first within each group: earliest created_at, then smallest id, then row order
    order = np.lexsort((id_codes, created_at, comp))
    comp_sorted = comp[order]
    first = np.ones(n, dtype=bool)
    first[1:] = comp_sorted[1:] != comp_sorted[:-1]
    canonical_of = np.empty(n, dtype=np.int64)  # original position -> its canonical's
    canonical_of[order] = order[np.maximum.accumulate(np.where(first, np.arange(n), 0))]
    return _Groups(canonical_of, comp, order, first, id_codes)


def _codes(values: pd.Series, *, rank: bool = False) -> np.ndarray:
    """``pd.factorize`` in Arrow (no Python strings): equal values share a code, missing -> -1;
    with ``rank``, codes are the values' ranks as text (code-point order)."""
    arr = _arrow(values).combine_chunks()
    encoded = pc.dictionary_encode(arr)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if rank and len(encoded.dictionary):
        ranks = np.empty(len(encoded.dictionary), dtype=np.int64)
        ranks[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(encoded.dictionary))
        codes = np.where(codes >= 0, ranks[np.maximum(codes, 0)], -1)
    return codes


def canonical_rows(
    contact_ids: pd.Series, created_at: np.ndarray, norm_email: pd.Series
) -> np.ndarray | None:
    """Which contact each row is merged into: the position of its canonical row.

    Only the key columns are needed, so a whole base can be linked without holding its other
    columns: the same rule as :func:`clean` (same id or same valid normalised email,
    transitively; canonical = earliest ``created_at``, then smallest id as text, then first row).

    Parameters
    ----------
    contact_ids
        Validated ids (``str`` dtype), one per contact row.
    created_at
        Their ``created_at`` (datetime64, no missing values).
    norm_email
        Normalised emails (:func:`normalise_email`; NaN never links).

    Returns
    -------
    numpy.ndarray or None
        int64 positions (a canonical row points at itself); None when no two rows are linked.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> canonical_rows(pd.Series(["a", "b", "c"]),
    ...                np.array(["2024-02-01", "2024-01-01", "2024-01-05"], dtype="datetime64[us]"),
    ...                pd.Series(["x@acme.com", "x@acme.com", None])).tolist()
    [1, 1, 2]
    """
    groups = _groups(contact_ids, np.asarray(created_at), norm_email)
    return None if groups is None else groups.canonical_of


def duplicate_id_map(contact_ids: pd.Series, canonical_of: np.ndarray | None) -> pd.DataFrame:
    """``duplicate_id -> contact_id`` (canonical) for every id merged into another id.

    ``canonical_of`` as returned by :func:`canonical_rows` (None: no duplicates, empty map).
    """
    if canonical_of is None:
        return _empty_id_map()
    ids = _arrow(contact_ids).combine_chunks()
    canonical = ids.take(pa.array(canonical_of))
    moved = (canonical_of != np.arange(len(ids))) & _np_bool(pc.not_equal(ids, canonical))
    rows = pa.array(np.flatnonzero(moved))
    return (
        pd.DataFrame(
            {
                "duplicate_id": ids.take(rows).to_numpy(zero_copy_only=False),
                "contact_id": canonical.take(rows).to_numpy(zero_copy_only=False),
            }
        )
        .drop_duplicates("duplicate_id")
        .sort_values("duplicate_id", kind="stable")
        .astype(_STR)
        .reset_index(drop=True)
    )


def _deduplicate(
    contacts: pd.DataFrame, norm_email: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Merge contacts sharing a valid normalised email or a contact_id (transitively).

    Returns the canonical contacts (original order, missing values filled from their
    duplicates, with ``filled_fields`` and ``filled_at``: what later duplicates filled, and
    since when), the ``duplicate_contact`` rejects and the id map.
    """
    n = len(contacts)
    groups = _groups(contacts["contact_id"], contacts["created_at"].to_numpy(), norm_email)
    if groups is None:
        return _with_filled(contacts, None, None, None), empty_rejects(), _empty_id_map()
    canonical_of, comp, order, first = groups.canonical_of, groups.comp, groups.order, groups.first
    is_canonical = canonical_of == np.arange(n)

    rejects = make_rejects(contacts, ~is_canonical, "contacts", DUPLICATE_CONTACT)
    id_map = duplicate_id_map(contacts["contact_id"], canonical_of)

    keep = filter_rows(contacts, is_canonical)
    in_group = np.bincount(comp, minlength=n)[comp[order]] > 1
    members = order[in_group]  # rows of multi-contact groups, canonical first
    if not len(members):
        return _with_filled(keep, None, None, None), rejects, id_map
    merged, bits, since = _merge_group_values(contacts.iloc[members], comp[members])
    canon_rows = members[first[in_group]]
    merged, bits, since = merged.loc[comp[canon_rows]], bits.loc[comp[canon_rows]], since.loc[comp[canon_rows]]
    at = np.cumsum(is_canonical)[canon_rows] - 1  # positions of those rows in keep
    keep = keep.copy()
    for col in merged.columns:
        keep.iloc[at, keep.columns.get_loc(col)] = merged[col].to_numpy()
    return _with_filled(keep, at, bits.to_numpy(), since.to_numpy()), rejects, id_map


#: the contact fields a later duplicate can fill, in the order of their bits in ``filled_fields``
FILLABLE_FIELDS: tuple[str, ...] = tuple(schema.CONTACTS.optional)


def filled_field_mask(filled_fields: np.ndarray, field: str) -> np.ndarray:
    """Whether ``field`` of each contact was filled from a later duplicate (``filled_fields``
    as :func:`clean` gives it)."""
    return (np.asarray(filled_fields).astype(np.int64) >> FILLABLE_FIELDS.index(field)) & 1 == 1


def _with_filled(keep: pd.DataFrame, at: np.ndarray | None, bits: np.ndarray | None,
                 since: np.ndarray | None) -> pd.DataFrame:
    """``keep`` with ``filled_fields`` (0 but at positions ``at``: ``bits``) and ``filled_at``
    (NaT but at ``at``: ``since``), typed as ``created_at``."""
    filled = np.zeros(len(keep), dtype=np.int16)
    created = keep["created_at"]
    dtype = created.dtype if isinstance(created.dtype, np.dtype) and created.dtype.kind == "M" \
        else np.dtype("datetime64[ns]")
    when = np.full(len(keep), np.datetime64("NaT"), dtype=dtype)
    if at is not None and len(at):
        filled[at] = bits
        when[at] = since.astype(dtype)
    return keep.assign(filled_fields=filled, filled_at=when)


def _components(n: int, *codes: np.ndarray) -> np.ndarray:
    """Connected components of rows linked by equal codes (code -1 never links)."""
    src, dst = [], []
    for c in codes:
        rows = np.flatnonzero(c >= 0)
        order = rows[np.argsort(c[rows], kind="stable")]
        same = c[order[1:]] == c[order[:-1]]
        src.append(order[:-1][same])
        dst.append(order[1:][same])
    src_a, dst_a = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(src_a), dtype=np.int8), (src_a, dst_a)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def _merge_group_values(rows: pd.DataFrame, groups: np.ndarray
                        ) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Per group (rows sorted canonical-first, then by ``created_at``): first non-null of
    each column; any opt-out. Also per group: the bitmask of :data:`FILLABLE_FIELDS` filled
    from a row created after the canonical's (none at its instant had a value) and the
    latest ``created_at`` among the rows that filled one (NaT when none)."""
    cols = [c for c in rows.columns if c not in ("contact_id", "created_at")]
    data = rows[cols].copy()
    email_missing = data["email"].isna() if "email" in data else None
    if email_missing is not None and "email_quality" in data:
        # quality travels with the address it describes
        data["email_quality"] = data["email_quality"].where(~email_missing)
    grouped = data.groupby(groups, sort=False)
    out = grouped.first()
    any_opt_out = "do_not_email" in data and data["do_not_email"].dtype == bool
    if any_opt_out:
        out["do_not_email"] = grouped["do_not_email"].any()
    if "email_quality" in out:
        out["email_quality"] = out["email_quality"].fillna(MISSING)

    created = pd.to_datetime(rows["created_at"]).to_numpy(dtype="datetime64[ns]")
    key = pd.Series(groups)
    canon_created = pd.Series(created).groupby(key, sort=False).transform("first").to_numpy()
    later = created > canon_created
    bits = np.zeros(len(out), dtype=np.int16)
    since = np.full(len(out), np.datetime64("NaT"), dtype="datetime64[ns]")
    for i, field in enumerate(FILLABLE_FIELDS):
        if field not in data:
            continue
        values = data[field]
        if field == "do_not_email" and any_opt_out:
            has = values.to_numpy(dtype=bool)
        else:
            has = values.notna().to_numpy()
        if not (has & later).any():
            continue
        at_instant = pd.Series(has & ~later).groupby(key, sort=False).any()
        first_later = pd.Series(np.where(has & later, created, np.datetime64("NaT"))
                                ).groupby(key, sort=False).min()
        filled = (~at_instant.reindex(out.index).to_numpy()
                  & first_later.reindex(out.index).notna().to_numpy())
        if not filled.any():
            continue
        bits[filled] |= np.int16(1 << i)
        when = first_later.reindex(out.index).to_numpy(dtype="datetime64[ns]")[filled]
        before = since[filled]
        since[filled] = np.where(np.isnat(before), when, np.maximum(before, when))
    return out, pd.Series(bits, index=out.index), pd.Series(since, index=out.index)


def _attach(
    frame: pd.DataFrame,
    table: str,
    known: pa.Array,
    canonical: pa.Array,
    export: pd.Timestamp,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reject rows of unknown contacts and future rows; move the rest to canonical ids.

    ``known`` holds every contact id, ``canonical`` the id each one is merged into.
    """
    if frame.empty:
        return frame, empty_rejects()
    ids = _arrow(frame["contact_id"])
    codes = _index_in(ids, known)
    unknown = _np_bool(pc.is_null(codes))
    future = (frame["ts"] > export).to_numpy() & ~unknown
    drop = unknown | future
    rejects = empty_rejects()
    if drop.any():
        reasons = np.where(unknown[drop], UNKNOWN_CONTACT, FUTURE_TIMESTAMP)
        rejects = make_rejects(frame, drop, table, reasons)
    moved_id = _np_bool(pc.not_equal(known, canonical))
    if moved_id.any():
        codes_np = pc.fill_null(codes, 0).to_numpy(zero_copy_only=False)
        moved = moved_id[codes_np] & ~unknown
        if moved.any():
            new_ids = pc.replace_with_mask(
                ids.combine_chunks(), pa.array(moved), canonical.take(pa.array(codes_np[moved]))
            )
            frame = frame.assign(contact_id=_str_series(new_ids, frame.index))
    return filter_rows(frame, ~drop), rejects


def _index_in(values: pa.ChunkedArray, value_set: pa.Array) -> pa.ChunkedArray:
    """``pc.index_in`` over large arrays, split across threads (Arrow releases the GIL)."""
    workers = min(os.cpu_count() or 1, 4)
    n = len(values)
    if workers == 1 or n < 1_000_000:
        return pc.index_in(values, value_set=value_set)
    step = -(-n // workers)
    parts = [values.slice(i * step, step) for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda part: pc.index_in(part, value_set=value_set), parts))
    return pa.chunked_array([c for part in done for c in part.chunks], type=pa.int32())


# ---------------------------------------------------------------------------
# Arrow helpers
# ---------------------------------------------------------------------------


def _arrow(s: pd.Series) -> pa.ChunkedArray:
    if not (isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow"):
        s = s.astype(_STR)
    arr = pa.array(s.array)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr], type=arr.type)


def _str_series(arr: pa.ChunkedArray | pa.Array, index: pd.Index) -> pd.Series:
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], type=arr.type)
    out = arr.to_pandas()
    if out.dtype != _STR:
        out = out.astype(_STR)
    return out.set_axis(index)


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow booleans as numpy; nulls are False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _take(arr: pa.ChunkedArray, mask: np.ndarray) -> np.ndarray:
    """Values of ``arr`` where ``mask``, as a numpy object array."""
    return arr.filter(pa.array(mask)).to_numpy(zero_copy_only=False)
