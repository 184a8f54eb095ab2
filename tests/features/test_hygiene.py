"""Data hygiene: email and phone quality, deduplication, orphan and future rows."""

from __future__ import annotations

import email_validator
import numpy as np
import pandas as pd
import phonenumbers
import pytest

from features import schema
from features.hygiene import (
    CleanResult,
    canonical_rows,
    clean,
    clean_contacts,
    duplicate_id_map,
    email_domains,
    email_quality,
    normalise_country,
    normalise_email,
    phone_valid,
)
from features.io import validate_tables

EXPORT = pd.Timestamp("2024-06-30")


# ---------------------------------------------------------------------------
# Emails
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "quality", "normalised"),
    [
        ("anna@acme.com", "corporate", "anna@acme.com"),
        ("  Anna.Smith@ACME.co.uk ", "corporate", "anna.smith@acme.co.uk"),
        ("BOB@GMAIL.COM", "free", "bob@gmail.com"),
        ("x@web.de", "free", "x@web.de"),
        ("x@mail.yandex.ru", "free", "x@mail.yandex.ru"),  # subdomain of a free provider
        ("temp@mailinator.com", "disposable", "temp@mailinator.com"),
        ("temp@YOPMAIL.com", "disposable", "temp@yopmail.com"),
        ("a@notgmail.com", "corporate", "a@notgmail.com"),  # suffix, not a subdomain
        ("n/a", "invalid", None),
        ("test@test", "invalid", None),  # no dot in the domain
        ("anna@acme", "invalid", None),
        ("anna@@acme.com", "invalid", None),
        ("anna[at]acme.com", "invalid", None),
        ("anna..smith@acme.com", "invalid", None),
        ("anna@localhost.localdomain.test", "invalid", None),  # special-use name
        ("anna smith@acme.com", "invalid", None),
        ("jürgen@müller.de", "corporate", "jürgen@müller.de"),  # internationalised
        ("", "missing", None),
        ("   ", "missing", None),
        (None, "missing", None),
    ],
)
def test_email_quality_and_normalisation(raw, quality, normalised):
    emails = pd.Series([raw], dtype=object)
    assert email_quality(emails).tolist() == [quality]
    got = normalise_email(emails).iloc[0]
    assert (pd.isna(got) and normalised is None) or got == normalised


def test_email_functions_keep_index_dtype_and_handle_nan():
    emails = pd.Series([np.nan, "a@b.com", None], index=[10, 20, 30])
    q = email_quality(emails)
    assert q.index.tolist() == [10, 20, 30]
    assert q.dtype == "str"
    assert q.tolist() == ["missing", "corporate", "missing"]
    assert set(q) <= set(schema.EMAIL_QUALITIES)
    assert email_quality(pd.Series([], dtype=object)).empty


def test_email_validity_agrees_with_email_validator():
    """The vectorised shortcut must give the library's answer, address by address."""
    samples = [
        "a@b.co",
        "a@b.c",
        "a@b.123",
        "a@123.com",
        "a@-b.com",
        "a@b-.com",
        "a@b--c.com",
        "a@xn--bcher-kva.de",
        "a@xn--zz.de",
        "a@ab--cd.com",
        "a@" + "b" * 63 + ".com",
        "a@" + "b" * 64 + ".com",
        ("a" * 245) + "@b.com",
        ("a" * 250) + "@b.com",
        ".a@b.com",
        "a.@b.com",
        "a+tag@b.com",
        "o'brien@b.ie",
        '"q"@b.com',
        "a@[1.2.3.4]",
        "a@b.onion",
        "a@b.local",
        "a@b.invalid",
        "a@example.com",
        "a@sub.example.com",
        "a@b..com",
        "a@.b.com",
        "ü@b.com",
        "a@bü.com",
        "a@b.com.",
        "a#b@c.com",
        "a@b_c.com",
    ]

    def library(address: str) -> bool:
        try:
            email_validator.validate_email(address, check_deliverability=False)
        except email_validator.EmailNotValidError:
            return False
        return True

    got = normalise_email(pd.Series(samples)).notna().tolist()
    assert got == [library(s) for s in samples]


def test_domain_lists_are_data():
    lists = email_domains()
    assert {"gmail.com", "outlook.com", "gmx.de", "qq.com", "proton.me"} <= lists["free"]
    assert {"mailinator.com", "guerrillamail.com", "yopmail.com"} <= lists["disposable"]
    assert not lists["free"] & lists["disposable"]


# ---------------------------------------------------------------------------
# Phones
# ---------------------------------------------------------------------------


def test_phone_valid_reads_national_numbers_in_the_contacts_country():
    phones = pd.Series(
        [
            "030 901820",
            "030 901820",
            "+49 30 901820",
            "(650) 253-0000",
            "06 12 34 56 78",
            "06 12 34 56 78",
            "12",
            "call me",
            None,
            "+1 650-253-0000",
        ]
    )
    countries = pd.Series(["DE", "US", "US", None, "fr", "US", "FR", "US", "US", "GB"])
    got = phone_valid(phones, countries, default_region="US")
    assert got.dtype == bool
    assert got.tolist() == [True, False, True, True, True, False, False, False, False, True]


def test_phone_valid_default_region_and_aliases():
    phones = pd.Series(["020 7946 0958", "020 7946 0958", "020 7946 0958"])
    assert phone_valid(phones).tolist() == [False] * 3  # US by default
    assert phone_valid(phones, default_region="GB").tolist() == [True] * 3
    assert phone_valid(phones, pd.Series(["UK", "gb", "ZZ"]), default_region=None).tolist() == [
        True,
        True,
        False,
    ]  # UK read as GB; unknown country and no default: unreadable


def test_phone_valid_agrees_with_phonenumbers():
    """The vectorised shortcut must give the library's answer, number by number."""
    samples: list[tuple[str, str | None]] = []
    for region in (
        "US",
        "CA",
        "GB",
        "JE",
        "DE",
        "FR",
        "IT",
        "RU",
        "KZ",
        "AU",
        "BR",
        "AR",
        "JP",
        "CN",
        "IN",
        "NL",
        "CH",
        "BB",
        "MX",
    ):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            number = phonenumbers.example_number_for_type(region, kind)
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            intl = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
            nsn = phonenumbers.national_significant_number(number)
            cc = str(number.country_code)
            samples += [
                (e164, None),
                (intl, region),
                (national, region),
                (national, "US"),
                (e164[:-1], None),
                (e164 + "1", None),
                ("0" + nsn, region),
                (cc + nsn, region),
                ("00" + cc + nsn, region),
                (f"+{cc} (0) {nsn}", None),
                (nsn[:-2], region),
            ]
    phones = pd.Series([p for p, _ in samples])
    regions = pd.Series([r for _, r in samples])

    def library(phone: str, region: str | None) -> bool:
        try:
            return phonenumbers.is_valid_number(phonenumbers.parse(phone, region or "US"))
        except phonenumbers.NumberParseException:
            return False

    got = phone_valid(phones, regions, default_region="US").tolist()
    assert got == [library(p, r) for p, r in samples]


# ---------------------------------------------------------------------------
# clean
# ---------------------------------------------------------------------------


def _tables(contacts: dict, events: dict | None = None, stages: dict | None = None):
    empty_events = {"contact_id": [], "ts": [], "event_type": []}
    empty_stages = {"contact_id": [], "ts": [], "stage": []}
    return validate_tables(
        pd.DataFrame(contacts),
        pd.DataFrame(events or empty_events),
        pd.DataFrame(stages or empty_stages),
    )


def test_duplicates_by_email_merge_onto_the_earliest_contact(filled_of):
    tables = _tables(
        {
            "contact_id": ["c1", "c2", "c3", "c4"],
            "created_at": ["2024-02-01", "2024-01-01", "2024-03-01", "2024-01-15"],
            "email": ["Ann@Acme.com", " ann@acme.com ", "ANN@ACME.COM", "bob@acme.com"],
            "phone": [None, None, "+44 20 7946 0958", None],
            "industry": [None, None, "software", "retail"],
            "employees": [250, None, 40, None],
            "do_not_email": [False, False, True, False],
        },
        events={
            "contact_id": ["c1", "c2", "c3", "c4", "c3"],
            "ts": ["2024-02-02", "2024-01-02", "2024-03-02", "2024-01-16", "2024-03-03"],
            "event_type": ["page_view", "form_submit", "demo_request", "page_view", "chat"],
        },
        stages={
            "contact_id": ["c3", "c2"],
            "ts": ["2024-03-05", "2024-01-03"],
            "stage": ["mql", "lead"],
        },
    )
    result = clean(tables, export_date=EXPORT)
    assert isinstance(result, CleanResult)
    contacts = result.contacts.set_index("contact_id")
    assert contacts.index.tolist() == ["c2", "c4"]  # original order of the canonical rows
    ann = contacts.loc["c2"]
    assert ann["created_at"] == pd.Timestamp("2024-01-01")  # the earliest one
    assert ann["employees"] == 250.0  # filled from c1 (earlier than c3)
    assert ann["industry"] == "software"  # only c3 had it
    assert ann["phone"] == "+44 20 7946 0958" and ann["has_phone"] == 1
    assert bool(ann["do_not_email"]) is True  # an opt-out survives the merge
    assert ann["email_quality"] == "corporate"
    # c1 and c3 were created later: what they filled is recorded, with when it became known
    # (the latest of them: snapshots before it read those fields as missing)
    assert filled_of(ann) == {"phone", "industry", "employees", "do_not_email"}
    assert ann["filled_at"] == pd.Timestamp("2024-03-01")
    bob = contacts.loc["c4"]
    assert bob["filled_fields"] == 0 and pd.isna(bob["filled_at"])
    # every event and stage change is kept, moved to the canonical id
    assert sorted(result.events.loc[result.events["contact_id"] == "c2"].index) == [0, 1, 2, 4]
    assert result.events.loc[4, "contact_id"] == "c2"
    assert result.stages["contact_id"].tolist() == ["c2", "c2"]
    assert result.id_map.to_dict("records") == [
        {"duplicate_id": "c1", "contact_id": "c2"},
        {"duplicate_id": "c3", "contact_id": "c2"},
    ]
    assert result.rejects.to_dict("records") == [
        {"table": "contacts", "row": 0, "contact_id": "c1", "reason": "duplicate_contact"},
        {"table": "contacts", "row": 2, "contact_id": "c3", "reason": "duplicate_contact"},
    ]


def test_tie_on_created_at_goes_to_the_smallest_id():
    tables = _tables(
        {
            "contact_id": ["b7", "a9"],
            "created_at": ["2024-01-01", "2024-01-01"],
            "email": ["x@acme.com", "X@acme.com"],
        }
    )
    result = clean(tables, export_date=EXPORT)
    assert result.contacts["contact_id"].tolist() == ["a9"]
    assert result.id_map.to_dict("records") == [{"duplicate_id": "b7", "contact_id": "a9"}]


def test_invalid_or_missing_emails_never_link_contacts():
    tables = _tables(
        {
            "contact_id": ["c1", "c2", "c3", "c4"],
            "created_at": ["2024-01-01"] * 4,
            "email": ["n/a", "N/A", None, None],
        }
    )
    result = clean(tables, export_date=EXPORT)
    assert len(result.contacts) == 4
    assert result.rejects.empty and result.id_map.empty


def test_same_id_twice_and_transitive_links_form_one_contact(filled_of):
    tables = _tables(
        {
            "contact_id": ["c1", "c1", "c2"],
            "created_at": ["2024-02-01", "2024-01-01", "2024-03-01"],
            "email": ["one@acme.com", None, "ONE@acme.com"],
            "country": [None, "DE", None],
        },
        events={"contact_id": ["c2"], "ts": ["2024-03-02"], "event_type": ["chat"]},
    )
    result = clean(tables, export_date=EXPORT)
    assert result.contacts["contact_id"].tolist() == ["c1"]
    assert result.contacts.index.tolist() == [1]  # the earliest row of c1
    row = result.contacts.iloc[0]
    assert row["email"] == "one@acme.com" and row["email_quality"] == "corporate"
    assert row["country"] == "DE"
    # the address came with the later rows (the earliest c2 row, 2024-02-01, brought it)
    assert filled_of(row) == {"email"} and row["filled_at"] == pd.Timestamp("2024-02-01")
    assert result.rejects["row"].tolist() == [0, 2]
    assert result.id_map.to_dict("records") == [{"duplicate_id": "c2", "contact_id": "c1"}]
    assert result.events["contact_id"].tolist() == ["c1"]


def test_orphan_and_future_rows_are_rejected_early_events_kept():
    tables = _tables(
        {"contact_id": ["c1"], "created_at": ["2024-03-01"], "email": ["a@acme.com"]},
        events={
            "contact_id": ["c1", "ghost", "c1", "c1"],
            "ts": ["2024-02-01", "2024-03-02", "2024-07-01", "2024-06-30"],
            "event_type": ["page_view"] * 4,
        },
        stages={
            "contact_id": ["c1", "ghost", "c1"],
            "ts": ["2024-03-01", "2024-03-01", "2025-01-01"],
            "stage": ["lead", "lead", "mql"],
        },
    )
    result = clean(tables, export_date=EXPORT)
    # an anonymous visit before the form fill (row 0) and one exactly at export are kept
    assert result.events.index.tolist() == [0, 3]
    assert result.stages.index.tolist() == [0]
    assert result.rejects.to_dict("records") == [
        {"table": "events", "row": 1, "contact_id": "ghost", "reason": "unknown_contact"},
        {"table": "events", "row": 2, "contact_id": "c1", "reason": "future_timestamp"},
        {"table": "stages", "row": 1, "contact_id": "ghost", "reason": "unknown_contact"},
        {"table": "stages", "row": 2, "contact_id": "c1", "reason": "future_timestamp"},
    ]


def test_export_date_defaults_to_now_and_accepts_tz_aware():
    tables = _tables(
        {"contact_id": ["c1"], "created_at": ["2024-03-01"]},
        events={
            "contact_id": ["c1", "c1"],
            "ts": ["2024-03-02 10:00", "2999-01-01"],
            "event_type": ["chat", "chat"],
        },
    )
    assert clean(tables).rejects["reason"].tolist() == ["future_timestamp"]
    aware = pd.Timestamp("2024-03-02 11:30", tz="Europe/Berlin")  # 10:30 UTC
    assert clean(tables, export_date=aware).events.index.tolist() == [0]
    early = pd.Timestamp("2024-03-02 10:30", tz="Europe/Berlin")  # 09:30 UTC
    assert clean(tables, export_date=early).events.empty


def test_rejects_never_carry_personal_data():
    tables = _tables(
        {
            "contact_id": ["c1", "c2"],
            "created_at": ["2024-01-02", "2024-01-01"],
            "email": ["jane.doe@acme.com", "Jane.Doe@acme.com"],
            "phone": ["+49 30 901820", "+49 30 901820"],
            "company_name": ["Acme", "Acme"],
        },
        events={"contact_id": ["zz"], "ts": ["2024-01-03"], "event_type": ["chat"]},
    )
    rejects = clean(tables, export_date=EXPORT).rejects
    assert list(rejects.columns) == ["table", "row", "contact_id", "reason"]
    text = rejects.to_csv()
    assert "jane" not in text.lower() and "901820" not in text and "Acme" not in text


def test_hygiene_columns_added():
    tables = _tables(
        {
            "contact_id": ["c1", "c2", "c3"],
            "created_at": ["2024-01-01"] * 3,
            "email": ["a@gmail.com", "x", None],
            "phone": ["+1 650-253-0000", "555", None],
        }
    )
    contacts = clean(tables, export_date=EXPORT).contacts
    assert contacts["email_quality"].tolist() == ["free", "invalid", "missing"]
    assert contacts["has_phone"].tolist() == [1, 0, 0]
    assert contacts["has_phone"].dtype == np.int8


def test_no_raise_on_empty_and_sparse_tables():
    empty = validate_tables(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    result = clean(empty, export_date=EXPORT)
    assert result.contacts.empty and result.events.empty and result.rejects.empty
    assert {"email_quality", "has_phone"} <= set(result.contacts.columns)
    assert result.id_map.columns.tolist() == ["duplicate_id", "contact_id"]

    # one contact, no events, all firmographics missing, NaN email
    sparse = _tables({"contact_id": ["c1"], "created_at": ["2024-01-01"], "email": [np.nan]})
    result = clean(sparse, export_date=EXPORT)
    assert result.contacts["email_quality"].tolist() == ["missing"]
    assert result.contacts["has_phone"].tolist() == [0]
    assert result.events.empty and result.rejects.empty

    # events but no contacts: all of them are orphans
    orphans = _tables(
        {"contact_id": [], "created_at": []},
        events={"contact_id": ["c1"], "ts": ["2024-01-01"], "event_type": ["chat"]},
    )
    assert clean(orphans, export_date=EXPORT).rejects["reason"].tolist() == ["unknown_contact"]


# ---------------------------------------------------------------------------
# Country codes; a base linked from its keys, cleaned in closed subsets
# ---------------------------------------------------------------------------


def test_country_codes_are_upper_cased():
    tables = _tables(
        {
            "contact_id": ["c1", "c2", "c3", "c4"],
            "created_at": ["2024-01-01"] * 4,
            "country": [" de", "Us", None, "uk"],
            "phone": ["030 901820", None, None, "020 7946 0958"],
        }
    )
    contacts = clean(tables, export_date=EXPORT).contacts
    assert contacts["country"].tolist()[:2] == ["DE", "US"] and pd.isna(contacts["country"].iloc[2])
    assert contacts["country"].iloc[3] == "UK"  # an alias stays as given; phones read it as GB
    assert contacts["has_phone"].tolist() == [1, 0, 0, 1]
    assert normalise_country(pd.Series(["fr ", ""])).tolist()[0] == "FR"


def _random_base(n: int, seed: int = 0) -> pd.DataFrame:
    """Contacts with many duplicates: shared emails (in any case), repeated ids, chains."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i:04d}" for i in rng.integers(0, int(n * 0.9), n)]  # ~10% repeated ids
    emails = [None if rng.random() < 0.2 else f"P{j}@Acme.com" if rng.random() < 0.5 else f"p{j}@acme.com"
              for j in rng.integers(0, int(n * 0.8), n)]
    created = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 50, n), unit="D")
    return pd.DataFrame({
        "contact_id": ids, "created_at": created.astype(str), "email": emails,
        "phone": rng.choice(["030 901820", "+1 650-253-0000", None, "12"], n),
        "industry": rng.choice(["software", "retail", None, None], n),
        "employees": np.where(rng.random(n) < 0.5, np.nan, rng.integers(1, 500, n)),
        "country": rng.choice(["de", "US", None], n),
        "do_not_email": rng.random(n) < 0.1,
    })


def test_canonical_rows_links_like_clean_and_closed_subsets_clean_the_same():
    raw = _random_base(2000)
    tables = validate_tables(raw, pd.DataFrame(), pd.DataFrame())
    whole = clean(tables, export_date=EXPORT)
    c = tables.contacts
    canonical_of = canonical_rows(c["contact_id"], c["created_at"].to_numpy(), normalise_email(c["email"]))
    assert canonical_of is not None
    is_canonical = canonical_of == np.arange(len(c))
    assert c.index[is_canonical].tolist() == whole.contacts.index.tolist()
    assert sorted(c.index[~is_canonical]) == sorted(whole.rejects["row"])
    pd.testing.assert_frame_equal(duplicate_id_map(c["contact_id"], canonical_of), whole.id_map)

    # any union of whole groups (here: groups by canonical row, split in three) cleans the same
    group = c.index.to_numpy()[canonical_of] % 3
    parts = []
    for g in range(3):
        sub, rejects, _ = clean_contacts(c[group == g])
        assert set(rejects["row"]) == set(c.index[(group == g) & ~is_canonical])
        parts.append(sub)
    got = pd.concat(parts).sort_index()
    pd.testing.assert_frame_equal(got.astype(object), whole.contacts.astype(object))
