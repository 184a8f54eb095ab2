"""CRM exports: names of people and companies are never features, and the MLflow input
example is made up column by column, so no real row leaves the table."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
