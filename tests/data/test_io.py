"""Loading and validating the three input tables (features.io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import schema
from features.io import (
    DataError,
    TableChecks,
    Tables,
    concat_rejects,
    find_table,
    plan_slices,
    read_slice,
    read_table,
    read_tables,
    rejects_summary,
    safe_reason,
    table_columns,
    to_text,
    validate_tables,
)


def _contacts(**extra: list) -> pd.DataFrame:
    base = {
        "contact_id": ["c1", "c2", "c3"],
        "created_at": ["2024-01-01", "2024-01-02T10:00:00+02:00", "2024-01-03 08:30"],
    }
    return pd.DataFrame({**base, **extra})


def _events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": ["c1", "c2", "c3"],
            "ts": ["2024-01-05", "2024-01-06", "2024-01-07"],
            "event_type": ["page_view", "pricing_view", "demo_request"],
        }
    )


def _stages() -> pd.DataFrame:
    return pd.DataFrame(
        {"contact_id": ["c1", "c2"], "ts": ["2024-01-05", "2024-01-06"], "stage": ["lead", "mql"]}
    )


# ---------------------------------------------------------------------------
# validate_tables: coercion
# ---------------------------------------------------------------------------


def test_clean_input_passes_with_schema_dtypes_and_row_index():
    t = validate_tables(_contacts(), _events(), _stages())
    assert t.rejects.empty
    assert list(t.contacts.columns) == list(schema.CONTACTS.columns)  # optional ones added
    assert t.contacts["contact_id"].dtype == "str"
    assert t.contacts["created_at"].dtype == "datetime64[us]"
    assert t.contacts["employees"].dtype == "float64"
    assert t.contacts["do_not_email"].dtype == bool
    assert t.events["ts"].dtype == "datetime64[us]"
    assert t.contacts.index.name == "row"
    assert t.contacts.index.tolist() == [0, 1, 2]


def test_timestamps_become_naive_utc():
    t = validate_tables(_contacts(), _events(), _stages())
    assert t.contacts["created_at"].tolist() == [
        pd.Timestamp("2024-01-01 00:00"),
        pd.Timestamp("2024-01-02 08:00"),  # +02:00 converted to UTC
        pd.Timestamp("2024-01-03 08:30"),  # naive taken as UTC
    ]
    aware = _stages().assign(
        ts=pd.to_datetime(["2024-07-01 12:00", "2024-01-01 12:00"]).tz_localize("Europe/Berlin")
    )
    t = validate_tables(_contacts(), _events(), aware)
    assert t.stages["ts"].tolist() == [
        pd.Timestamp("2024-07-01 10:00"),
        pd.Timestamp("2024-01-01 11:00"),
    ]
    assert t.stages["ts"].dtype == "datetime64[us]"


def test_ids_become_text_without_float_artefacts():
    contacts = _contacts().assign(contact_id=[1.0, 2.0, 30.0])
    events = _events().assign(contact_id=[1, 2, 30])
    t = validate_tables(contacts, events, _stages().assign(contact_id=[" 1 ", "2"]))
    assert t.contacts["contact_id"].tolist() == ["1", "2", "30"]
    assert t.events["contact_id"].tolist() == ["1", "2", "30"]
    assert t.stages["contact_id"].tolist() == ["1", "2"]


def test_strings_are_stripped_and_blank_is_missing():
    t = validate_tables(_contacts(industry=["  software ", "", None]), _events(), _stages())
    assert t.contacts["industry"].tolist()[0] == "software"
    assert t.contacts["industry"].isna().tolist() == [False, True, True]


def test_numbers_and_bools_are_coerced_bad_values_counted_not_rejected():
    contacts = _contacts(
        employees=["120", "lots", " 5 "],
        do_not_email=["yes", "No", "maybe"],
    )
    contacts = pd.concat(
        [
            contacts,
            _contacts(employees=["1", "2", "3"], do_not_email=["1", "0", "TRUE"]).assign(
                contact_id=["c4", "c5", "c6"]
            ),
        ],
        ignore_index=True,
    )
    t = validate_tables(contacts, _events(), _stages())
    assert t.rejects.empty  # repaired, not dropped
    assert t.contacts["employees"].tolist()[:3] == [120.0, pytest.approx(np.nan, nan_ok=True), 5.0]
    assert t.contacts["do_not_email"].tolist() == [True, False, False, True, False, True]
    report = t.coercions.set_index("column")
    assert report.loc["employees", "problem"] == "unparseable_number"
    assert report.loc["employees", "rows"] == 1
    assert report.loc["do_not_email", "rows"] == 1


def test_missing_optional_columns_are_added_all_missing():
    t = validate_tables(_contacts(), _events(), _stages())
    assert t.contacts["email"].isna().all()
    assert t.contacts["do_not_email"].tolist() == [False, False, False]
    assert t.events["campaign_id"].isna().all()


def test_columns_outside_the_schema_pass_through():
    t = validate_tables(_contacts(crm_owner=["x", "y", "z"]), _events(), _stages())
    assert t.contacts["crm_owner"].tolist() == ["x", "y", "z"]
    assert t.contacts.columns[-1] == "crm_owner"


def test_to_text_handles_object_columns():
    out = to_text(pd.Series([" a ", "", None, 3.0, 7], dtype=object))
    assert out.dtype == "str"
    assert out.isna().tolist() == [False, True, True, False, False]
    assert out.dropna().tolist() == ["a", "3", "7"]


# ---------------------------------------------------------------------------
# validate_tables: row-level rejects
# ---------------------------------------------------------------------------


def test_each_row_reject_reason_with_original_row_numbers():
    contacts = pd.DataFrame(
        {
            "contact_id": ["c1", None, "c3", "c4", "c5"],
            "created_at": ["2024-01-01", "2024-01-02", "not a date", "2024-01-04", "2024-01-05"],
        }
    )
    events = pd.DataFrame(
        {
            "contact_id": ["c1", "  ", "c3"],
            "ts": ["2024-01-05", "2024-01-06", None],
            "event_type": ["page_view", "page_view", "page_view"],
        }
    )
    stages = pd.DataFrame(
        {
            "contact_id": ["c1", "c4", "c5"],
            "ts": ["2024-01-05"] * 3,
            "stage": ["MQL", "zombie", None],
        }
    )
    t = validate_tables(contacts, events, stages)
    expected = pd.DataFrame(
        {
            "table": ["contacts", "contacts", "events", "events", "stages", "stages"],
            "row": [1, 2, 1, 2, 1, 2],
            "contact_id": [None, "c3", None, "c3", "c4", "c5"],
            "reason": [
                "missing_contact_id",
                "invalid_timestamp",
                "missing_contact_id",
                "invalid_timestamp",
                "unknown_stage",
                "unknown_stage",
            ],
        }
    ).astype({"table": "str", "row": "int64", "contact_id": "str", "reason": "str"})
    pd.testing.assert_frame_equal(t.rejects, expected)
    assert list(t.rejects.columns) == ["table", "row", "contact_id", "reason"]
    # the survivors keep their original row numbers
    assert t.contacts.index.tolist() == [0, 3, 4]
    assert t.events.index.tolist() == [0]
    assert t.stages["stage"].tolist() == ["mql"]  # case folded, valid


def test_one_reason_per_row_first_wins():
    events = pd.DataFrame({"contact_id": [None], "ts": ["garbage"], "event_type": ["x"]})
    events = pd.concat([events, _events()], ignore_index=True)
    t = validate_tables(_contacts(), events, _stages())
    assert t.rejects["reason"].tolist() == ["missing_contact_id"]


def test_unknown_event_types_become_other_and_are_counted():
    events = pd.DataFrame(
        {
            "contact_id": ["c1"] * 6,
            "ts": ["2024-01-05"] * 5 + [None],
            "event_type": [
                "Page_View",
                "video_play",
                "video_play",
                "webinar_watched",
                None,
                "video_play",
            ],
        }
    )
    t = validate_tables(_contacts(), events, _stages())
    assert t.events["event_type"].tolist() == ["page_view", "other", "other", "other", "other"]
    # the last row is rejected for its timestamp, so it is not counted
    assert t.unknown_event_types == {"video_play": 2, "webinar_watched": 1, "(missing)": 1}
    row = t.coercions.set_index("column").loc["event_type"]
    assert (row["problem"], row["rows"]) == ("unknown_mapped_to_other", 4)
    assert t.rejects["reason"].tolist() == ["invalid_timestamp"]


def test_rejects_summary_counts_by_table_and_reason():
    rejects = pd.DataFrame(
        {
            "table": ["stages", "events", "events", "events", "contacts"],
            "row": [0, 1, 2, 3, 4],
            "contact_id": ["a", "b", "c", "d", "e"],
            "reason": [
                "unknown_stage",
                "invalid_timestamp",
                "missing_contact_id",
                "invalid_timestamp",
                "invalid_timestamp",
            ],
        }
    )
    got = rejects_summary(rejects)
    assert got.to_dict("records") == [
        {"table": "contacts", "reason": "invalid_timestamp", "rows": 1},
        {"table": "events", "reason": "invalid_timestamp", "rows": 2},
        {"table": "events", "reason": "missing_contact_id", "rows": 1},
        {"table": "stages", "reason": "unknown_stage", "rows": 1},
    ]
    assert rejects_summary(rejects.iloc[:0]).empty


def test_empty_tables_do_not_raise():
    t = validate_tables(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert isinstance(t, Tables)
    assert len(t.contacts) == len(t.events) == len(t.stages) == 0
    assert t.contacts["created_at"].dtype == "datetime64[us]"
    assert t.events["contact_id"].dtype == "str"
    empty_with_header = pd.DataFrame({"contact_id": [], "ts": [], "event_type": []})
    assert validate_tables(_contacts(), empty_with_header, _stages()).events.empty


# ---------------------------------------------------------------------------
# validate_tables: table-level errors
# ---------------------------------------------------------------------------


def test_missing_required_column_names_table_and_column():
    with pytest.raises(DataError, match=r"^events: required column 'ts' is missing$"):
        validate_tables(_contacts(), _events().drop(columns="ts"), _stages())


def test_mostly_text_number_column_is_a_table_error_without_personal_values():
    employees = ["jane.doe@acme.com", "ten", "many", "12"]  # text in 75% of rows
    contacts = pd.DataFrame(
        {"contact_id": list("abcd"), "created_at": ["2024-01-01"] * 4, "employees": employees}
    )
    with pytest.raises(DataError) as err:
        validate_tables(contacts, _events(), _stages())
    msg = str(err.value)
    assert msg == "contacts.employees: expected a number, got text in 75% of rows (e.g. row 0)"
    assert "jane" not in msg


def test_numeric_timestamp_column_is_a_table_error():
    contacts = _contacts().assign(created_at=[1704067200, 1704153600, 1704240000])
    with pytest.raises(
        DataError, match=r"^contacts\.created_at: expected a timestamp, got a number"
    ):
        validate_tables(contacts, _events(), _stages())


def test_mostly_unparseable_timestamp_strings_are_a_table_error():
    events = _events().assign(ts=["yesterday", "05/01/2024", "2024-01-01"])
    with pytest.raises(
        DataError,
        match=r"^events\.ts: expected a timestamp, got text .* 67% of rows \(e\.g\. row 0\)",
    ):
        validate_tables(_contacts(), events, _stages())


def test_required_column_empty_everywhere_is_a_table_error():
    with pytest.raises(DataError, match=r"^stages\.stage"):
        validate_tables(_contacts(), _events(), _stages().assign(stage=[None, " "]))


# ---------------------------------------------------------------------------
# read_tables: CSV and Parquet directories
# ---------------------------------------------------------------------------


def _write(dir_: Path, fmt: str, frames: dict[str, pd.DataFrame]) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if fmt == "csv":
            frame.to_csv(dir_ / f"{name}.csv", index=False)
        else:
            pq.write_table(
                pa.Table.from_pandas(frame, preserve_index=False), dir_ / f"{name}.parquet"
            )
    return dir_


def _raw_frames() -> dict[str, pd.DataFrame]:
    contacts = pd.DataFrame(
        {
            "contact_id": ["00017", "00018", "00019"],  # leading zeros must survive
            "created_at": ["2024-01-01T09:00:00Z", "2024-01-02 10:00:00", "bad"],
            "country": ["NA", "DE", None],  # Namibia, not missing
            "employees": ["10", None, "30"],
        }
    )
    events = pd.DataFrame(
        {
            "contact_id": ["00017", "00018", "00017"],
            "ts": ["2024-01-03", "2024-01-04", "2024-01-05"],
            "event_type": ["page_view", "chat", "podcast"],
        }
    )
    stages = pd.DataFrame({"contact_id": ["00017"], "ts": ["2024-01-03"], "stage": ["lead"]})
    return {"contacts": contacts, "events": events, "stages": stages, "truth": stages}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_read_tables_from_csv_and_parquet(tmp_path, fmt):
    t = read_tables(_write(tmp_path / fmt, fmt, _raw_frames()))
    assert t.contacts["contact_id"].tolist() == ["00017", "00018"]
    assert t.contacts["country"].tolist() == ["NA", "DE"]
    assert t.contacts["employees"].tolist()[0] == 10.0
    assert t.contacts["created_at"].tolist() == [
        pd.Timestamp("2024-01-01 09:00"),
        pd.Timestamp("2024-01-02 10:00"),
    ]
    assert t.rejects.to_dict("records") == [
        {"table": "contacts", "row": 2, "contact_id": "00019", "reason": "invalid_timestamp"}
    ]
    assert t.unknown_event_types == {"podcast": 1}
    assert t.events["ts"].dtype == "datetime64[us]"


def test_read_tables_parquet_native_types(tmp_path):
    _write(tmp_path, "parquet", _raw_frames())
    contacts = pa.table(
        {
            "contact_id": pa.array([17, 18], pa.int64()),
            "created_at": pa.array(
                [1704103200_000000, 1704153600_000000], pa.timestamp("us", tz="Europe/Berlin")
            ),
            "do_not_email": pa.array([True, None]),
        }
    )
    pq.write_table(contacts, tmp_path / "contacts.parquet")
    t = read_tables(tmp_path)
    assert t.contacts["contact_id"].tolist() == ["17", "18"]
    assert t.contacts["created_at"].tolist() == [
        pd.Timestamp("2024-01-01 10:00"),
        pd.Timestamp("2024-01-02 00:00"),
    ]
    assert t.contacts["do_not_email"].tolist() == [True, False]


def test_read_tables_columns_subset(tmp_path):
    frames = _raw_frames()
    frames["events"] = frames["events"].assign(channel="web", campaign_id="c-1")
    t = read_tables(_write(tmp_path, "parquet", frames), columns={"events": ["channel"]})
    assert list(t.events.columns) == ["contact_id", "ts", "event_type", "channel"]
    assert "country" in t.contacts  # tables not named are read whole
    with pytest.raises(DataError, match="events: requested column 'nope' is missing"):
        read_tables(tmp_path, columns={"events": ["nope"]})


def test_missing_table_names_the_file(tmp_path):
    frames = _raw_frames()
    del frames["stages"]
    with pytest.raises(
        DataError, match=r"^stages: table is missing: no stages\.parquet or stages\.csv"
    ):
        read_tables(_write(tmp_path, "csv", frames))


def test_corrupt_parquet_is_a_data_error(tmp_path):
    _write(tmp_path, "csv", _raw_frames())
    (tmp_path / "events.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(DataError, match=r"^events: cannot read events\.parquet"):
        read_tables(tmp_path)


def test_malformed_csv_names_line_not_content(tmp_path):
    _write(tmp_path, "csv", _raw_frames())
    (tmp_path / "contacts.csv").write_text(
        "contact_id,created_at,email\n1,2024-01-01,a@b.com\n2,2024-01-02,jane@doe.com,extra\n"
    )
    with pytest.raises(DataError) as err:
        read_tables(tmp_path)
    assert (
        str(err.value) == "contacts: cannot read contacts.csv: line 3 has 4 columns, the header 3"
    )


def test_empty_csv_file_is_a_data_error(tmp_path):
    _write(tmp_path, "csv", _raw_frames())
    (tmp_path / "stages.csv").write_text("")
    with pytest.raises(DataError, match="stages: cannot read stages.csv: the file is empty"):
        read_tables(tmp_path)


def test_csv_with_header_only_gives_empty_table(tmp_path):
    _write(tmp_path, "csv", _raw_frames())
    (tmp_path / "stages.csv").write_text("contact_id,ts,stage\n")
    t = read_tables(tmp_path)
    assert t.stages.empty and t.stages["ts"].dtype == "datetime64[us]"


def test_csv_wrong_column_type_is_a_data_error(tmp_path):
    frames = _raw_frames()
    frames["events"] = frames["events"].assign(ts=[1, 2, 3])  # epoch numbers, not timestamps
    with pytest.raises(
        DataError, match=r"^events\.ts: expected a timestamp, got a number in 100% of rows"
    ):
        read_tables(_write(tmp_path, "csv", frames))


# ---------------------------------------------------------------------------
# Tables in slices: read_slice + validate_tables(checks=...) == the whole table
# ---------------------------------------------------------------------------


def _validate_in_slices(path: Path, table: str, *, rows_per_slice: int, batch_rows: int):
    """What batch rescoring does: a table read slice by slice, batch by batch, validated."""
    spec = schema.TABLES[table]
    checks = TableChecks()
    columns = table_columns(path, spec)
    frames, rejects = [], []
    for sl in plan_slices(path, table, rows_per_slice=rows_per_slice):
        offset = sl.row_offset
        for raw in read_slice(sl, columns, batch_rows=batch_rows):
            args = {"contacts": pd.DataFrame(), "events": pd.DataFrame(), "stages": pd.DataFrame()}
            args[table] = raw
            t = validate_tables(args["contacts"], args["events"], args["stages"], checks=checks,
                                row_offset=offset)
            offset += len(raw)
            frames.append(getattr(t, table))
            rejects.append(t.rejects)
    return pd.concat(frames), concat_rejects(rejects), checks


def _contacts_table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    created = pd.Series(pd.date_range("2024-01-01", periods=n, freq="h").astype(str))
    created[rng.random(n) < 0.05] = "not a date"
    ids = pd.Series([f"c{i:04d}" for i in range(n)])
    ids[rng.random(n) < 0.03] = None
    return pd.DataFrame({"contact_id": ids, "created_at": created,
                         "employees": np.where(rng.random(n) < 0.1, "many", "12"),
                         "country": rng.choice(["de", "US", None], n)})


@pytest.mark.parametrize("layout", ["one_file", "directory", "csv"])
def test_a_table_read_and_validated_in_slices_equals_the_whole_table(tmp_path, layout):
    frame = _contacts_table(1000)
    if layout == "csv":
        path = tmp_path / "contacts.csv"
        frame.to_csv(path, index=False)
    elif layout == "one_file":
        path = tmp_path / "contacts.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=130)
    else:  # a directory of files, read in the loader's order (sorted paths)
        path = tmp_path / "contacts.parquet"
        path.mkdir()
        for i, start in enumerate(range(0, 1000, 300)):
            pq.write_table(pa.Table.from_pandas(frame.iloc[start:start + 300], preserve_index=False),
                           path / f"part-{i}.parquet", row_group_size=70)
    whole = validate_tables(read_table(tmp_path, schema.CONTACTS), pd.DataFrame(), pd.DataFrame())
    slices = plan_slices(path, "contacts", rows_per_slice=250)
    assert len(slices) == (1 if layout == "csv" else 7)  # row groups joined up to 250 rows
    assert [s.row_offset for s in slices] == sorted(s.row_offset for s in slices)
    got, rejects, checks = _validate_in_slices(path, "contacts", rows_per_slice=250, batch_rows=64)
    pd.testing.assert_frame_equal(got, whole.contacts)  # same rows, index (row numbers), dtypes
    pd.testing.assert_frame_equal(rejects, whole.rejects)
    checks.raise_errors()  # 10% bad employees: fine, as for the whole table


def test_table_level_checks_are_decided_over_the_whole_table(tmp_path):
    # "many" in 60% of the rows overall, but 100% of the first rows and 20% of the last ones
    employees = ["many"] * 400 + ["12"] * 250 + ["many"] * 200 + ["12"] * 150
    frame = _contacts_table(1000).assign(employees=employees)
    path = tmp_path / "contacts.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=100)
    raw = read_table(tmp_path, schema.CONTACTS)
    with pytest.raises(DataError) as whole:
        validate_tables(raw, pd.DataFrame(), pd.DataFrame())
    _, _, checks = _validate_in_slices(path, "contacts", rows_per_slice=100, batch_rows=50)
    with pytest.raises(DataError) as sliced:
        checks.raise_errors()
    assert str(sliced.value) == str(whole.value)
    assert str(whole.value).startswith("contacts.employees: expected a number, got text in 60%")

    # bad in the first slice only, 40% overall: no error, as for the whole table
    frame = frame.assign(employees=["many"] * 400 + ["12"] * 600)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=100)
    _, _, checks = _validate_in_slices(path, "contacts", rows_per_slice=100, batch_rows=50)
    checks.raise_errors()
    # tallies of slices validated elsewhere add up (JSON round trip)
    combined = TableChecks()
    for part in (checks.to_dict(), checks.to_dict()):
        combined.update(part)
    assert combined.tallies["contacts.employees.majority"]["bad"] == 800


def test_required_column_empty_in_every_slice_is_an_error_once(tmp_path):
    frame = pd.DataFrame({"contact_id": ["a", "b", "c", "d"], "ts": ["2024-01-01"] * 4,
                          "stage": [None, " ", None, ""]})
    path = tmp_path / "stages.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=2)
    _, _, checks = _validate_in_slices(path, "stages", rows_per_slice=2, batch_rows=2)
    with pytest.raises(DataError, match=r"^stages\.stage: required column is empty in all 4 rows$"):
        checks.raise_errors()


def test_slice_reading_errors_name_table_and_file(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"contact_id": ["a"], "ts": ["2024-01-01"]}), path)
    with pytest.raises(DataError, match=r"^events: required column 'event_type' is missing$"):
        table_columns(path, schema.EVENTS)
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"^events: cannot read events\.parquet"):
        plan_slices(path, "events", rows_per_slice=10)
    assert find_table(tmp_path, "events") == path
    with pytest.raises(DataError, match="stages: table is missing"):
        find_table(tmp_path, "stages")
    assert safe_reason(OSError("cannot open 'jane.doe@acme.com'")) == "cannot open …"
