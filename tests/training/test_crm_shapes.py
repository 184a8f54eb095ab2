"""CRM exports of other shapes, trained and scored from their dataset config alone.

Small hand-made tables: ';' separators with decimal commas, a UTF-8 byte-order mark, quoted
headers with spaces and accents, "N/A" / "-" / "" placeholders, yes/no and Won/Lost targets
(with open deals), TRUE/FALSE booleans, dates giving a time split, Parquet with typed columns,
repeated ids, an empty column, numbers with thousands separators; and bad input that must
fail with a message naming the column and the reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.crm import (
    DatasetConfigError,
    check_config,
    dump_dataset_config,
    infer_config,
    parse_dataset_config,
    parse_numbers,
    parse_times,
    read_table,
    score_table,
    table_features,
    target_labels,
    train_table,
)

FAST = {"lgbm_params": {"learning_rate": 0.1}, "num_boost_round": 200, "early_stopping_rounds": 20,
        "gate": {"min_train_positives": 50}}


def leads(n: int = 800, seed: int = 0) -> pd.DataFrame:
    """A small export with its own conventions: text cells as a CSV reader gives them."""
    rng = np.random.default_rng(seed)
    visits = rng.poisson(5, n)
    spend = rng.gamma(2.0, 900.0, n)
    channel = rng.choice(["Partner", "Search", "Fair", "Cold call"], n, p=[.2, .3, .2, .3])
    opted = rng.random(n) < 0.5
    logit = (-1.0 + 0.35 * (visits - 5) + 0.0005 * (spend - 1800) + 0.8 * opted
             + pd.Series(channel).map({"Partner": 1.2, "Search": 0.3, "Fair": 0.0, "Cold call": -1.0}).to_numpy())
    won = rng.random(n) < 1 / (1 + np.exp(-logit))
    visits_text = visits.astype(str).astype(object)
    visits_text[rng.random(n) < 0.05] = "N/A"
    visits_text[rng.random(n) < 0.05] = "-"
    visits_text[rng.random(n) < 0.05] = ""
    created = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 360, n)), unit="D")
    return pd.DataFrame({
        "Lead ID": [f"K{i:04d}" for i in range(n)],
        "Créé le": created.strftime("%d/%m/%Y"),
        "Canal d'origine": channel,
        "Visites totales": visits_text,
        "Dépense (€)": [f"{v:,.2f}" for v in spend],  # 1,234.56: thousands separators as text
        "Opt-in": np.where(opted, "TRUE", "FALSE"),
        "Notes internes": "",  # an empty column
        "Statut": np.where(won, "Won", "Lost"),
    })


def to_semicolon_bytes(frame: pd.DataFrame) -> bytes:
    """The same table as a European spreadsheet saves it: BOM, ';', quoted headers, 1 234,56."""
    out = frame.copy()
    out["Dépense (€)"] = [v.replace(",", " ").replace(".", ",") for v in out["Dépense (€)"]]
    text = out.to_csv(sep=";", index=False, quoting=0)
    header, body = text.split("\n", 1)
    header = ";".join(f'"{h}"' for h in header.split(";"))
    return ("\ufeff" + header + "\n" + body).encode("utf-8")


CONFIG = {
    "name": "shapes",
    "id_column": "Lead ID",
    "target": {"column": "Statut"},
    "placeholders": ["N/A", "-"],
    "cross_fit_folds": 2,
    "training": FAST,
}


# ---------------------------------------------------------------------------
# Reading and cleaning
# ---------------------------------------------------------------------------


def test_semicolons_decimal_commas_bom_and_quoted_accented_headers(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(to_semicolon_bytes(leads(300)))
    frame = read_table(path)
    assert list(frame.columns) == list(leads(1).columns)  # BOM and quotes gone, accents kept
    inferred = infer_config(frame, separator=";")  # the target by its Won/Lost values
    assert inferred.decimal == ","
    assert inferred.target.positive == "Won"
    assert {"N/A", "-"} <= set(inferred.placeholders)
    assert inferred.id_column == "Lead ID"
    assert inferred.exclude["Notes internes"].startswith("empty")
    columns = check_config(frame, inferred)
    assert {"Visites totales", "Dépense (€)"} <= set(columns.numeric)
    feats = table_features(frame, inferred, columns.categorical, columns.numeric)
    expected = pd.to_numeric(leads(300)["Dépense (€)"].str.replace(",", ""))
    np.testing.assert_allclose(feats["Dépense (€)"], expected)


def test_numbers_with_thousands_separators_currency_and_percent():
    assert parse_numbers(pd.Series(["1,234", "1,234,567.5", "$1,200.50", "12%", "1 234", "12"])).tolist() == [
        1234.0, 1234567.5, 1200.5, 12.0, 1234.0, 12.0]
    # with a decimal comma, dots group thousands
    assert parse_numbers(pd.Series(["1.234", "1.234,5", "12,5", "€ 1.234,00"]), decimal=",").tolist() == [
        1234.0, 1234.5, 12.5, 1234.0]
    # not numbers: a decimal comma under decimal ".", text
    assert parse_numbers(pd.Series(["12,5", "abc", "1,23"])).isna().all()


def test_dot_thousands_groups_in_a_semicolon_file_mean_a_decimal_comma():
    frame = pd.DataFrame({"Revenue; EUR": ["1.035", "12.400", "980"] * 20, "Converted": ["yes", "no", "no"] * 20})
    inferred = infer_config(frame, separator=";")
    assert inferred.decimal == ","
    assert table_features(frame, inferred, [], ["Revenue; EUR"])["Revenue; EUR"].tolist()[:3] == [1035, 12400, 980]
    assert infer_config(frame, separator="\t").decimal == "."  # elsewhere 1.035 stays 1.035


def test_thousands_separators_are_not_taken_for_a_decimal_comma():
    frame = leads(300)
    inferred = infer_config(frame, target="Statut")
    assert inferred.decimal == "."
    feats = table_features(frame, inferred, [], ["Dépense (€)"])
    assert feats["Dépense (€)"].min() > 1  # 1,234.56 is 1234.56, not 1.234
    assert "Dépense (€)" in check_config(frame, inferred).numeric


def test_placeholders_and_blanks_are_missing_in_numbers_and_categories():
    frame = pd.DataFrame({"n": ["1", "N/A", "-", "", None, " 7 "], "c": ["a", "n/a", " - ", "", "b", "A"],
                          "y": ["yes", "no"] * 3})
    cfg = parse_dataset_config({"target": {"column": "y"}, "placeholders": ["N/A", "-"]})
    feats = table_features(frame, cfg, ["c"], ["n"], with_target=True)
    assert feats["n"].tolist()[0] == 1 and feats["n"].isna().tolist() == [False, True, True, True, True, False]
    assert feats["c"].tolist() == ["a", None, None, None, "b", "A"]
    assert feats["converted"].tolist() == [1, 0] * 3


def test_booleans_are_one_category_whatever_their_spelling():
    cfg = parse_dataset_config({"target": {"column": "y"}})
    frame = pd.DataFrame({"b": ["TRUE", "false", "True", " FALSE "], "y": [1, 0, 1, 0]})
    typed = pd.DataFrame({"b": [True, False, True, False], "y": [1, 0, 1, 0]})
    as_text = table_features(frame, cfg, ["b"], [])["b"].tolist()
    assert as_text == table_features(typed, cfg, ["b"], [])["b"].tolist() == ["True", "False"] * 2


@pytest.mark.parametrize(("values", "labels"), [
    (["Yes", "no", "YES", "No"], [1, 0, 1, 0]),
    (["Won", "Lost", "won", "Lost"], [1, 0, 1, 0]),
    (["Converted", "Not Converted", "Converted", "Not Converted"], [1, 0, 1, 0]),
    (["TRUE", "FALSE", "TRUE", "FALSE"], [1, 0, 1, 0]),
    ([1.0, 0.0, np.nan, 0.0], [1, 0, None, 0]),
])
def test_binary_targets_need_no_positive_value(values, labels):
    cfg = parse_dataset_config({"target": {"column": "y"}})
    y = target_labels(pd.Series(values, name="y"), cfg)
    assert [None if np.isnan(v) else int(v) for v in y] == labels


def test_a_target_written_as_decimals_is_inferred_like_integers():
    frame = leads(300).assign(Statut=lambda f: np.where(f["Statut"] == "Won", "1.0", "0.0"))
    inferred = infer_config(frame, target="Statut")
    assert inferred.target.positive == 1
    labels = target_labels(frame["Statut"], inferred)
    assert labels.tolist() == (frame["Statut"] == "1.0").astype(float).tolist()


def test_open_deals_are_unlabelled_with_a_negative_value_and_need_a_positive_without():
    s = pd.Series(["Won", "Lost", "Open", "Won", "In progress"], name="y")
    with pytest.raises(DatasetConfigError, match="column 'y' has 4 distinct values"):
        target_labels(s, parse_dataset_config({"target": {"column": "y"}}))
    y = target_labels(s, parse_dataset_config({"target": {"column": "y", "positive": "Won", "negative": "lost"}}))
    assert y.tolist()[:2] == [1, 0] and y.isna().tolist() == [False, False, True, False, True]
    with pytest.raises(DatasetConfigError, match="target.*both positive and negative"):
        parse_dataset_config({"target": {"column": "y", "positive": "Won", "negative": ["won"]}})


def test_contradictory_number_marks_fail_naming_the_key():
    with pytest.raises(DatasetConfigError, match="separator ';' is also the decimal or thousands mark"):
        parse_dataset_config({"target": {"column": "y"}, "separator": ";", "decimal": ";"})
    with pytest.raises(DatasetConfigError, match="decimal and thousands are the same mark ','"):
        parse_dataset_config({"target": {"column": "y"}, "decimal": ",", "thousands": ","})


def test_dates_are_read_in_one_order_per_column():
    assert parse_times(pd.Series(["13/01/2024", "02/03/2024"])).dt.month.tolist() == [1, 3]  # day first
    assert parse_times(pd.Series(["01/13/2024", "02/03/2024"])).dt.month.tolist() == [1, 2]  # month first
    assert parse_times(pd.Series(["02/03/2024"]), dayfirst=True).dt.month.tolist() == [3]
    assert parse_times(pd.Series(["2024-03-02T10:00:00+01:00"])).dt.hour.tolist() == [9]  # UTC
    with pytest.raises(ValueError, match="'Created'.*both day/month and month/day"):
        parse_times(pd.Series(["13/01/2024", "01/13/2024"]), column="Created")


# ---------------------------------------------------------------------------
# Training and scoring from the config alone
# ---------------------------------------------------------------------------


def test_semicolon_export_trains_and_scores_from_its_config(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(to_semicolon_bytes(leads()))
    cfg = parse_dataset_config({**CONFIG, "separator": "semicolon", "decimal": ",",
                                "categorical": ["Opt-in"], "exclude": ["Créé le"]})
    frame = read_table(path, cfg)
    trained = train_table(frame, cfg)
    assert set(trained.columns.numeric) == {"Visites totales", "Dépense (€)"}
    assert trained.columns.excluded["Notes internes"].startswith("empty")
    assert trained.comparison.loc["model", "roc_auc"] > 0.7
    scored = score_table(trained.model, frame.head(20))
    assert scored["contact_id"].tolist() == frame["Lead ID"].head(20).tolist()
    assert scored["probability"].between(0, 1).all()


def test_date_column_gives_a_time_split_with_day_first_dates():
    frame = leads()
    inferred = infer_config(frame.rename(columns={"Créé le": "Created"}))
    assert inferred.time_column == "Created" and inferred.dayfirst is True
    cfg = parse_dataset_config({**CONFIG, "time_column": "Créé le"})
    trained = train_table(frame, cfg)
    split = trained.result.split
    times = parse_times(frame["Créé le"], dayfirst=True)
    assert times[split.train].max() < times[split.test].min()
    assert "Créé le" not in trained.columns.features
    assert trained.columns.excluded["Créé le"].startswith("time column")


def test_parquet_with_typed_columns_trains_and_scores_like_csv(tmp_path):
    raw = leads()
    typed = raw.copy()
    typed["Visites totales"] = pd.to_numeric(typed["Visites totales"], errors="coerce").astype("Int64")
    typed["Dépense (€)"] = pd.to_numeric(typed["Dépense (€)"].str.replace(",", ""))
    typed["Opt-in"] = pd.array(typed["Opt-in"] == "TRUE", dtype="boolean")
    typed["Canal d'origine"] = typed["Canal d'origine"].astype("category")
    typed["Créé le"] = pd.to_datetime(typed["Créé le"], format="%d/%m/%Y")
    typed["Notes internes"] = pd.Series([None] * len(typed), dtype="string")
    typed["Statut"] = typed["Statut"] == "Won"
    typed.to_parquet(tmp_path / "export.parquet")
    frame = read_table(tmp_path / "export.parquet")
    cfg = parse_dataset_config({**CONFIG, "exclude": ["Créé le"]})
    trained = train_table(frame, cfg)
    assert set(trained.columns.numeric) == {"Visites totales", "Dépense (€)", "Opt-in"}  # bool: 0/1
    assert set(trained.columns.categorical) == {"Canal d'origine"}
    # the CSV's text rows score like the typed rows
    from_parquet = score_table(trained.model, frame.head(50), reasons=False)
    from_csv = score_table(trained.model, raw.head(50), reasons=False)
    np.testing.assert_allclose(from_parquet["probability"], from_csv["probability"])


def test_tuning_a_table_searches_by_inner_cross_validation_of_the_training_rows(monkeypatch):
    import training.train as train_module

    scored: list[int] = []
    fit = train_module.fit_booster

    def counting(X_train, y_train, X_val, y_val, **kw):
        scored.append(len(y_val))
        return fit(X_train, y_train, X_val, y_val, **kw)

    monkeypatch.setattr(train_module, "fit_booster", counting)
    trained = train_table(leads(), parse_dataset_config(CONFIG), tune_trials=2)
    assert set(trained.model.metadata["tuned"]) >= {"learning_rate", "num_leaves"}
    fit_rows = int(trained.result.split.train.sum())
    assert len(scored) == 2 * 3 + 2  # 2 trials x 3 inner folds, then the 2 cross-fitted folds
    assert sum(scored[:3]) == fit_rows  # each trial's inner folds cover the training rows once


def test_repeated_ids_keep_one_row_and_are_listed_as_rejects():
    frame = leads()
    frame = pd.concat([frame, frame.iloc[[3, 10]]], ignore_index=True)  # rows 800, 801 repeat 3, 10
    frame.loc[801, "Statut"] = "Won" if frame.loc[10, "Statut"] == "Lost" else "Lost"  # conflicting
    trained = train_table(frame, parse_dataset_config(CONFIG))
    assert len(trained.frame) == 800 and trained.dropped_rows == 2
    assert trained.rejects["row"].tolist() == [800, 801]
    assert trained.rejects["reason"].str.contains("duplicate id.*'Lead ID' as row (?:3|10)").all()
    last = train_table(frame, parse_dataset_config({**CONFIG, "duplicate_ids": "last"}))
    assert last.rejects["row"].tolist() == [3, 10]
    with pytest.raises(DatasetConfigError, match="id_column 'Lead ID': 2 row.*row 800 repeats row 3"):
        train_table(frame, parse_dataset_config({**CONFIG, "duplicate_ids": "error"}))


def test_rows_without_an_outcome_are_rejects_not_silent_drops():
    frame = leads()
    frame.loc[[5, 6], "Statut"] = ["", "Open"]
    cfg = parse_dataset_config({**CONFIG, "target": {"column": "Statut", "positive": "Won", "negative": "Lost"}})
    trained = train_table(frame, cfg)
    assert trained.rejects.set_index("row")["reason"].to_dict() == {
        5: "target missing", 6: "target value neither positive nor negative (not an outcome yet)"}


def test_an_empty_column_is_left_out_even_when_the_config_lists_it():
    frame = leads(300)
    cfg = parse_dataset_config({**CONFIG, "numeric": ["Notes internes"]})
    columns = check_config(frame, cfg)
    assert columns.excluded["Notes internes"].startswith("empty")


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the column and the reason
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "config", "message"), [
    (None, {"target": {"column": "Status"}}, r"target.column: unknown column 'Status'.*did you mean 'Statut'"),
    (None, {"numeric": ["Canal d'origine"]}, r"numeric: column \"Canal d'origine\" is not numeric"),
    (None, {"time_column": "Canal d'origine"}, r"time_column \"Canal d'origine\": only 0% .* date"),
    ({"Créé le": ["13/01/2024", "01/13/2024"] * 150}, {"time_column": "Créé le"},
     r"time_column: column 'Créé le': dates in both day/month and month/day order"),
    ({"Statut": ["Won", "Lost", "Open"] * 100}, {"target": {"column": "Statut"}},
     r"target.positive is required: column 'Statut' has 3 distinct values"),
    ({"Statut": ["Lost"] * 300}, {"target": {"column": "Statut"}}, r"target.column 'Statut': one class only"),
])
def test_bad_input_fails_naming_the_column_and_reason(change, config, message):
    frame = leads(300)
    for col, values in (change or {}).items():
        frame[col] = values
    with pytest.raises(DatasetConfigError, match=message):
        check_config(frame, parse_dataset_config({**CONFIG, **config}))


def test_excel_style_ids_and_dates_written_out_in_words_are_recognised():
    frame = leads(400)
    frame["Lead ID"] = [f"'{i:07d}" for i in range(400)]  # numbers kept as text by a spreadsheet
    frame["Créé le"] = pd.to_datetime(frame["Créé le"], dayfirst=True).dt.strftime("%b %d, %Y")
    inferred = infer_config(frame)
    assert inferred.id_column == "Lead ID"
    assert inferred.time_column == "Créé le"  # "Jan 05, 2024": a date, not a category
    assert parse_times(frame["Créé le"]).notna().all()


def test_an_inferred_config_keeps_the_encoding_the_file_was_read_in(tmp_path):
    from training.crm import infer_file_config, load_dataset_config

    path = tmp_path / "export.csv"
    frame = leads(300).assign(**{"Canal d'origine": lambda f: f["Canal d'origine"].replace("Fair", "Messe Zürich")})
    path.write_bytes(frame.to_csv(sep=";", index=False).encode("cp1252"))
    inferred = infer_file_config(path, read_table(path))
    assert (inferred.encoding, inferred.separator) == ("cp1252", ";")
    (tmp_path / "export.yaml").write_text(dump_dataset_config(inferred))
    again = read_table(path, load_dataset_config(tmp_path / "export.yaml"))  # as `--config` reads it
    assert "Messe Zürich" in set(again["Canal d'origine"])


def test_a_header_naming_a_column_twice_is_reported(tmp_path, caplog):
    path = tmp_path / "export.csv"
    path.write_text("id,Source,Visits,Source,won\n1,web,3,fair,1\n2,ads,1,web,0\n")
    with caplog.at_level("WARNING", logger="training.crm"):
        frame = read_table(path)
    assert list(frame.columns) == ["id", "Source", "Visits", "Source.1", "won"]
    assert "names column 'Source' 2 times; the copies are read as ['Source', 'Source.1']" in caplog.text


def test_numbers_with_currency_codes_and_accounting_negatives():
    s = pd.Series(["EUR 1.234,50", "(1.234)", "12 CHF", "45,5 %", "-€3,5", "ABC12", "4,2k", "3M"])
    got = parse_numbers(s, decimal=",").tolist()
    assert got[:5] == [1234.5, -1234.0, 12.0, 45.5, -3.5]
    assert np.isnan(got[5:]).all()  # a code is not a currency; 4,2k and 3M (a plan term?) are text
    signed = pd.Series(["(EUR 1.234,50)", "-EUR 1.234,50", "(1.234,50 EUR)", "EUR (1.234,50)", "-€3,5"])
    assert parse_numbers(signed, decimal=",").tolist() == [-1234.5] * 4 + [-3.5]
    assert parse_numbers(pd.Series([10**400, 5], dtype=object)).tolist()[1] == 5.0  # no OverflowError
    plain = pd.Series(["1", "2.5", " 3 ", "1e3", "inf", "true", "1,234", "x", None] * 3)
    assert parse_numbers(plain).tolist()[:9] == pytest.approx(
        [1, 2.5, 3, 1000, np.nan, 1, 1234, np.nan, np.nan], nan_ok=True)
    frame = pd.DataFrame({"Value": ["EUR 8.814,94", "EUR 12,50"] * 50, "Win": ["23,7 %", "5 %"] * 50,
                          "won": [1, 0] * 50})
    assert infer_config(frame, target="won", separator="\t").decimal == ","


def test_gzip_exports_mixed_utc_offsets_and_unix_times(tmp_path):
    from training.crm import infer_file_config

    frame = leads(300)
    frame["Created (ms)"] = (pd.to_datetime(frame["Créé le"], dayfirst=True).astype("int64") // 10**6).astype(str)
    frame["Expected close"] = np.where(np.arange(300) % 2, "2024-04-29T01:00:00+0200", "2024-01-29T01:00:00+0100")
    path = tmp_path / "export.csv.gz"
    frame.drop(columns="Créé le").to_csv(path, sep=";", index=False, compression="gzip")
    read = read_table(path)
    assert list(read.columns) == [c for c in frame.columns if c != "Créé le"]
    inferred = infer_file_config(path, read)
    assert (inferred.name, inferred.separator, inferred.time_column) == ("export", ";", "Created (ms)")
    assert inferred.exclude["Expected close"].startswith("date/time")  # two offsets: no crash
    times = parse_times(read["Created (ms)"])
    assert times.notna().all() and times.min() >= pd.Timestamp("2024-01-01")
    # ten-digit ids under a name that says id, or a few values repeated, are not Unix times
    ids = frame.assign(**{"Candidate ID": [str(1_600_000_000 + 7 * i) for i in range(300)],
                          "Created by user ID": ["1650000000", "1660000000", "1670000000"] * 100})
    cols = check_config(ids, parse_dataset_config({**CONFIG, "id_column": None}))
    assert cols.excluded["Candidate ID"].startswith("identifier")
    assert not cols.excluded.get("Created by user ID", "").startswith("date")


def test_a_target_with_open_deals_and_no_negative_value_is_warned_about(caplog):
    frame = leads(300)
    frame["Statut"] = np.where(np.arange(300) % 3 == 0, "Open", frame["Statut"])
    cfg = parse_dataset_config({**CONFIG, "target": {"column": "Statut", "positive": "Won"}})
    with caplog.at_level("WARNING", logger="training.crm"):
        train_table(frame, cfg)
    assert "'Statut': 2 values count as not converted (lost, open)" in caplog.text
    assert "Statut" in infer_config(frame, target="Statut", positive="Won").notes
    unknown = frame.assign(Statut=np.where(np.arange(300) % 3 == 0, "?", frame["Statut"]))
    note = infer_config(unknown, target="Statut", positive="Won").notes["Statut"]
    assert "if ? mean unknown, add them to placeholders" in note


def test_a_crm_prefixing_every_column_with_deal_is_not_all_post_contact():
    frame = leads(300).rename(columns=lambda c: f"Deal - {c}")  # as Pipedrive exports deals
    frame["Deal - Stage"] = frame["Deal - Statut"]
    inferred = infer_config(frame, target="Deal - Statut")
    assert set(inferred.post_contact) == {"Deal - Stage"}


def test_a_changed_separator_and_a_wrong_one_are_said(tmp_path, caplog):
    path = tmp_path / "export.csv"
    leads(50).to_csv(path, index=False)  # the model's config says ';'
    cfg = parse_dataset_config({**CONFIG, "separator": ";"})
    with caplog.at_level("WARNING", logger="training.crm"):
        assert list(read_table(path, cfg).columns) == list(leads(1).columns)
    assert "one column when read with the dataset config's separator ';'; read with ','" in caplog.text
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"bad.csv: not readable as CSV with separator ','"):
        read_table(tmp_path / "bad.csv")
    # a file of one column is not re-read because a value holds a comma
    (tmp_path / "one.csv").write_text("Company\nAcme, Inc.\nBeta\nGamma, Ltd\n")
    assert read_table(tmp_path / "one.csv", cfg)["Company"].tolist() == ["Acme, Inc.", "Beta", "Gamma, Ltd"]


def test_unreadable_files_fail_clearly(tmp_path):
    (tmp_path / "leads.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="unsupported table file leads.xlsx"):
        read_table(tmp_path / "leads.xlsx")
    (tmp_path / "latin.csv").write_bytes("id;Ville\n1;Zürich\n".encode("latin-1"))
    (tmp_path / "utf16.csv").write_bytes("id;Ville\n1;Zürich\n".encode("utf-16"))
    named = parse_dataset_config({"target": {"column": "x"}, "encoding": "utf-8"})
    with pytest.raises(ValueError, match="cannot decode as ascii; set encoding"):  # named: no fallback
        read_table(tmp_path / "latin.csv", named.model_copy(update={"encoding": "ascii"}))
    assert read_table(tmp_path / "utf16.csv", named.model_copy(update={"encoding": "utf-16"}))["Ville"].tolist() == ["Zürich"]
    assert read_table(tmp_path / "latin.csv")["Ville"].tolist() == ["Zürich"]  # cp1252 fallback
    # a model trained on a UTF-8 export still reads next month's Windows-1252 one
    assert read_table(tmp_path / "latin.csv", named)["Ville"].tolist() == ["Zürich"]
    with pytest.raises(FileNotFoundError, match="table not found"):
        read_table(tmp_path / "absent.csv")


def test_cli_trains_a_parquet_export_from_its_config_and_logs_the_rejects(tmp_path, monkeypatch):
    import io

    import mlflow
    import yaml
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from serving.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    frame = leads()
    frame = pd.concat([frame, frame.iloc[[7]]], ignore_index=True)  # row 800 repeats row 7
    frame["Visites totales"] = pd.to_numeric(frame["Visites totales"], errors="coerce")
    frame.to_parquet(tmp_path / "export.parquet")
    config = tmp_path / "shapes.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "time_column": "Créé le", "training": {
        **FAST, "gate": {**FAST["gate"], "max_ece": 0.2}}}, allow_unicode=True))
    runner = CliRunner()
    try:
        out = runner.invoke(app, ["train", "--table", str(tmp_path / "export.parquet"), "--config", str(config),
                                  "--workdir", str(tmp_path / "work")])
        assert out.exit_code == 0, out.output
        assert "rows left out 1: duplicate id" in " ".join(out.output.split())
        run = MlflowClient().search_runs(MlflowClient().search_experiments()[0].experiment_id)[0]
        rejects = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/dataset/rejects.csv")
        assert pd.read_csv(io.StringIO(rejects)).to_dict("records") == [
            {"row": 800, "reason": "duplicate id (same 'Lead ID' as row 7, the first one kept)"}]  # no cell values

        config.write_text(yaml.safe_dump({**CONFIG, "time_column": "Canal d'origine"}, allow_unicode=True))
        bad = runner.invoke(app, ["train", "--table", str(tmp_path / "export.parquet"), "--config", str(config),
                                  "--workdir", str(tmp_path / "work")])
        assert bad.exit_code == 2 and "time_column \"Canal d'origine\": only 0%" in " ".join(bad.output.split())
    finally:
        mlflow.set_tracking_uri(None)


def test_scoring_a_table_without_a_champion_says_which_versions_exist(tmp_path, monkeypatch):
    """A real MLflow store: nothing registered, then a version the gate left as challenger."""
    import mlflow
    from mlflow import MlflowClient

    from training.registry import load_scorer
    from training.tracking import configure_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        configure_tracking(tmp_path)
        assert "no model registered as 'lead-scoring' yet" in load_scorer().info()["reason"]
        (tmp_path / "model").mkdir()
        client = MlflowClient()
        client.create_registered_model("lead-scoring")
        client.create_model_version("lead-scoring", source=str(tmp_path / "model"))  # no alias
        scorer = load_scorer()
        assert scorer.scorer == "rules"
        with pytest.raises(ValueError, match=r"no model to score the table with: no version of "
                                             r"'lead-scoring' is champion \(registered: version 1\): "
                                             r"`leadscore promote N`.*no dataset config with rules"):
            score_table(scorer, leads(5))
    finally:
        mlflow.set_tracking_uri(None)
