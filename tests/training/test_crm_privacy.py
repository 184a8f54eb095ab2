"""CRM exports: names of people and companies are never features, and the MLflow input
example is made up column by column, so no real row leaves the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.crm import parse_dataset_config, resolve_columns, table_input_example


def export(n: int = 2_000, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "Lead Id": [f"L{i:05d}" for i in range(n)],
        "Contact Person": [f"Person {rng.integers(0, 1_500)}" for _ in range(n)],
        "Company": [f"Firm {rng.integers(0, 1_200)} GmbH" for _ in range(n)],
        "Company Size": rng.integers(1, 5_000, n).astype(float),  # a feature despite its name
        "Source": rng.choice(["web", "event", "partner"], n),
        "Visits": rng.poisson(3, n).astype(float),
        "Converted": rng.integers(0, 2, n),
    })


CONFIG = parse_dataset_config({"id_column": "Lead Id", "target": {"column": "Converted"}})


def test_people_and_company_names_are_personal_data_not_features():
    cols = resolve_columns(export(), CONFIG)
    assert "personal data" in cols.excluded["Contact Person"]
    assert "personal data" in cols.excluded["Company"]
    assert {"Company Size", "Source", "Visits"} <= set(cols.features)


def test_personal_fields_are_left_out_by_name_in_several_languages_however_few_their_values():
    rng = np.random.default_rng(1)
    n = 1_000
    frame = pd.DataFrame({
        "Vorname": rng.choice(["Anna", "Jürgen", "Lea"], n),  # three values: still a first name
        "Nachname": rng.choice([f"Name{i}" for i in range(10)], n),
        "Last Name": rng.choice([f"Name{i}" for i in range(10)], n),
        "E-Mail": [f"p{i}@example.org" for i in range(n)],
        "Telefon": rng.integers(10**9, 10**10, n).astype(str),  # numbers, but a phone column
        "Prénom": rng.choice(["Léa", "Marc", "Inès"], n),
        "ZIP": rng.integers(10_000, 99_999, n).astype(str),
        "Kontakt": [f"+49 30 {rng.integers(1_000_000, 9_999_999)}" for _ in range(n)],  # by its values
        "Mobile Phone (work)": rng.integers(10**9, 10**10, n).astype(str),  # by name and 10 digits
        "Email open rate": [f"{v}%" for v in rng.integers(0, 100, n)],  # a figure: a feature
        "Email opens": rng.poisson(3, n).astype(str),
        "Converted": rng.integers(0, 2, n),
    })
    cols = resolve_columns(frame, CONFIG)
    personal = {c for c, why in cols.excluded.items() if why.startswith("personal data")}
    assert personal == {"Vorname", "Nachname", "Last Name", "E-Mail", "Telefon", "Prénom", "ZIP",
                        "Kontakt", "Mobile Phone (work)"}
    assert "phone numbers" in cols.excluded["Kontakt"]
    assert {"Email open rate", "Email opens"} <= set(cols.numeric)
    # the config has the last word: a column listed as a feature is one
    kept = resolve_columns(frame, parse_dataset_config({**CONFIG.model_dump(), "categorical": ["Prénom"]}))
    assert "Prénom" in kept.categorical


def test_flags_figures_and_padded_ids_with_personal_sounding_names_stay_features():
    rng = np.random.default_rng(2)
    n = 1_000
    frame = pd.DataFrame({
        "Customer No": [f"00{v}" for v in rng.choice(np.arange(30_000_000, 99_999_999), n, replace=False)],
        "Mobile": rng.choice(["Yes", "No"], n),  # visited on a phone: a flag
        "Phone": rng.integers(0, 2, n).astype(str),
        "Email open rate": [f"{v:.7f}" for v in rng.random(n)],  # fractions with many digits
        "Email revenue": [f"{v:.2f}" for v in rng.gamma(2, 6_000, n)],
        "Converted": rng.integers(0, 2, n),
    })
    cfg = parse_dataset_config({"target": {"column": "Converted"}})
    cols = resolve_columns(frame, cfg)
    assert not [c for c, why in cols.excluded.items() if why.startswith("personal")], cols.excluded
    assert cols.excluded["Customer No"].startswith("identifier")  # an id, not a phone number
    assert {"Mobile", "Phone", "Email open rate", "Email revenue"} <= set(cols.features)


@pytest.mark.parametrize("values", [
    ["+44 20 7946 0958", "+1 (555) 676-0401", "0049 30 9042612"],
])
def test_international_phone_numbers_are_found_by_their_values(values):
    frame = pd.DataFrame({"Notes": values * 50, "Converted": [0, 1, 1] * 50})
    assert "phone numbers" in resolve_columns(frame, CONFIG).excluded["Notes"]


def test_the_input_example_holds_no_real_row():
    frame = export()
    cols = resolve_columns(frame, CONFIG)
    example = table_input_example(frame, CONFIG, cols)
    assert example["Lead Id"].tolist() == ["example-1", "example-2", "example-3"]
    assert set(example.columns) == {"Lead Id", *cols.features}
    assert not {"Contact Person", "Company"} & set(example.columns)
    # categorical: the most frequent values; numeric: the quartiles, not any lead's figures
    assert example["Source"].iloc[0] == frame["Source"].value_counts().index[0]
    assert example["Visits"].tolist() == np.quantile(frame["Visits"], [0.25, 0.5, 0.75]).tolist()
    real = frame[list(cols.features)].astype(str).agg("|".join, axis=1)
    made_up = example[list(cols.features)].astype(str).agg("|".join, axis=1)
    assert not made_up.isin(real).any()
