"""`leadscore score`, local engine: parity with whole-base scoring, SIGKILL + --resume,
bad inputs, overwrite protection, --previous movers, reasons modes.

A small real model is trained on ~3,000 synthetic contacts and registered as champion in a
temporary SQLite MLflow store (module fixture, ~10-20 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.build import build_features
from features.io import DataError
from features.loading import load_base
from features.partition import bucket_of
from serving.batch import BatchOptions, Workspace, compare_previous, run_batch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo data (data/) and an MLflow store with a registered champion in one directory."""
    from features.build import build_training_set, monthly_as_of_dates
    from features.config import FeatureConfig
    from features.synthetic import generate, write_tables
    from training.cli import _input_example
    from training.config import TrainConfig
    from training.tracking import configure_tracking, log_training, promote
    from training.train import train

    root = tmp_path_factory.mktemp("batch")
    write_tables(generate(3000, seed=11), root / "data")
    previous_uri = mlflow.get_tracking_uri()
    configure_tracking(root)
    base = load_base(root / "data")
    fcfg = FeatureConfig()
    dates = monthly_as_of_dates(base.contacts["created_at"].min(), base.until,
                                horizon_days=fcfg.horizon_days)
    ts = build_training_set(base.contacts, base.events, base.stages, dates, config=fcfg)
    cfg = TrainConfig(num_boost_round=60, early_stopping_rounds=20,
                      gate={"min_train_positives": 20})
    result = train(ts, config=cfg, feature_config=fcfg)
    summary = log_training(result, training_set=ts, source=str(root / "data"),
                           input_example=_input_example(base.contacts.head(3), base.events, base.until))
    promote(summary["version"])
    yield root
    mlflow.set_tracking_uri(previous_uri)


def _opts(demo: Path, out: Path, **kw) -> BatchOptions:
    base = {"data": demo / "data", "table": None, "out": out, "chunk_size": 700}
    return BatchOptions(**{**base, **kw})


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _no_leftovers(out: Path) -> None:
    """Nothing but finished files next to the output: no temporary file, no work directory."""
    names = sorted(p.name for p in out.parent.iterdir())
    assert not [n for n in names if n.endswith((".tmp", ".work"))], names


# ---------------------------------------------------------------------------
# Parity: chunked batch == whole base scored at once, service path included
# ---------------------------------------------------------------------------


def test_batch_equals_whole_base_scoring(demo: Path, tmp_path: Path) -> None:
    from training.registry import load_scorer

    out = tmp_path / "scores.parquet"
    summary = run_batch(_opts(demo, out), workers=2)
    got = _frame(out)
    assert summary.chunks == 5 and summary.scorer["scorer"] == "model"
    assert got["contact_id"].is_unique and len(got) == summary.eligible

    model = load_scorer()
    as_of = pd.Timestamp(got["as_of"].iloc[0])
    base = load_base(demo / "data", until=as_of)
    feats = build_features(base.contacts, base.events, base.stages, as_of, config=model.feature_config)
    ref = model.score(feats, scored_at=as_of, reasons=True)
    assert sorted(got["contact_id"]) == sorted(ref["contact_id"])
    j = got.merge(ref, on="contact_id", suffixes=("", "_ref"))
    # exactly equal with the booster; within 1e-15 when the compiled (lleaves) path is installed
    np.testing.assert_allclose(j["probability"], j["probability_ref"], rtol=0, atol=1e-12)
    assert (j["score"] == j["score_ref"]).all() and (j["band"] == j["band_ref"]).all()
    top = j["band"].isin(["A", "B"])
    assert top.any() and (~top).any()
    assert all(json.loads(a) == b for a, b in zip(j.loc[top, "reasons"], j.loc[top, "reasons_ref"]))
    assert j.loc[~top, "reasons"].isna().all()  # --reasons top: A and B only
    assert set(got["scorer"]) == {"model"} and got["scored_at"].nunique() == 1

    # the rows set aside are exactly the loader's and hygiene's rejects, counted in the summary
    rej = _frame(summary.rejects_path).sort_values(["table", "row"]).reset_index(drop=True)
    exp = base.rejects.sort_values(["table", "row"]).reset_index(drop=True)
    assert rej.astype(str).equals(exp.astype(str))
    assert summary.rejected == len(exp) > 0
    assert (rej["reason"] == "unknown_contact").any()  # the demo data has events of ghosts
    # not eligible + eligible = all clean contacts
    assert summary.eligible + sum(summary.not_eligible.values()) == summary.contacts
    _no_leftovers(out)


def test_batch_matches_single_lead_path(demo: Path, tmp_path: Path) -> None:
    """A sample of contacts scored through features_for_leads (the HTTP path) scores the same."""
    from features.build import features_for_leads
    from training.registry import load_scorer

    out = tmp_path / "s.parquet"
    run_batch(_opts(demo, out, reasons="all"), workers=1)
    got = _frame(out).set_index("contact_id")
    model = load_scorer()
    as_of = pd.Timestamp(got["as_of"].iloc[0])
    base = load_base(demo / "data", until=as_of)
    sample = got.index.to_series().sample(25, random_state=3).tolist()
    c = base.contacts[base.contacts["contact_id"].isin(sample)]
    e = base.events[base.events["contact_id"].isin(sample)]
    s = base.stages[base.stages["contact_id"].isin(sample)]
    recs = lambda f: f.astype(object).where(f.notna(), None).to_dict("records")
    feats = features_for_leads(recs(c), recs(e), recs(s), as_of=as_of, config=model.feature_config)
    ref = model.score(feats, scored_at=as_of).set_index("contact_id")
    np.testing.assert_allclose(got.loc[ref.index, "probability"], ref["probability"], rtol=0, atol=1e-12)
    assert (got.loc[ref.index, "band"] == ref["band"]).all()


def test_base_read_in_many_slices_scores_the_same(demo: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Small row groups, slices and batches: duplicates sit in other slices than their canonical
    contact, and step 1 reads only the key columns of the contacts; same output."""
    import features.partition as P

    ref_out = tmp_path / "ref" / "scores.parquet"
    ref = run_batch(_opts(demo, ref_out), workers=1)
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("contacts", 250), ("events", 7000), ("stages", 900)):
        pq.write_table(pq.read_table(demo / "data" / f"{name}.parquet"), data / f"{name}.parquet",
                       row_group_size=rows)
    monkeypatch.setattr(P, "_SLICE_ROWS", {"contacts": 400, "events": 20_000, "stages": 3_000})
    monkeypatch.setattr(P, "_SLICE_BATCH_ROWS", {"contacts": 128, "events": 5_000, "stages": 1_000})
    monkeypatch.setattr(P, "_KEY_BATCH_ROWS", 300)
    reads: list[tuple[str, tuple[str, ...]]] = []
    read_slice = P.read_slice

    def recording(sl, columns, **kw):
        reads.append((sl.table, tuple(columns)))
        return read_slice(sl, columns, **kw)

    monkeypatch.setattr(P, "read_slice", recording)
    out = tmp_path / "sliced" / "scores.parquet"
    summary = run_batch(_opts(demo, out, data=data), workers=1)  # one process: the patches apply
    contact_reads = [cols for table, cols in reads if table == "contacts"]
    assert contact_reads[0] == ("contact_id", "created_at", "email")  # step 1: keys only
    assert len(set(contact_reads)) == 2 and len(contact_reads) >= 2 * 12  # 12 slices, twice
    assert summary.rejects.set_index("reason").loc["duplicate_contact", "rows"] > 0
    a, b = _frame(ref_out), _frame(out)
    cols = [c for c in a.columns if c != "scored_at"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    ra = _frame(ref.rejects_path).sort_values(["table", "row"]).reset_index(drop=True)
    rb = _frame(summary.rejects_path).sort_values(["table", "row"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ra, rb)
    assert (summary.bands, summary.not_eligible, summary.unknown_event_types) == \
        (ref.bands, ref.not_eligible, ref.unknown_event_types)


# ---------------------------------------------------------------------------
# Nothing lost, nothing doubled
# ---------------------------------------------------------------------------

_RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from training.tracking import configure_tracking
    from serving.batch import BatchOptions, run_batch
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    configure_tracking(root)
    run_batch(BatchOptions(data=root / "data", table=None, out=out, chunk_size=150,
                           resume=len(sys.argv) > 3), workers=int(sys.argv[3]) if len(sys.argv) > 3 else 1)
""")


def _start(demo: Path, out: Path, workers: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-c", _RUNNER, str(demo), str(out), str(workers)],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("kill_during", ["prepare", "chunks"])
def test_sigkill_then_resume_gives_the_uninterrupted_output(demo: Path, tmp_path: Path,
                                                             kill_during: str) -> None:
    ref_out = tmp_path / "ref" / "scores.parquet"
    run_batch(_opts(demo, ref_out, chunk_size=150), workers=1)
    reference = _frame(ref_out)

    out = tmp_path / "run" / "scores.parquet"
    out.parent.mkdir()
    ws = Workspace(out.absolute())
    proc = _start(demo, out, workers=1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        parts = len(ws.done_chunks()) if ws.chunks.exists() else 0
        if kill_during == "prepare" and ws.exists() and not (ws.prep / "done.json").exists() \
                and ws.events.exists():
            break
        if kill_during == "chunks" and parts >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: workers too
    proc.wait()
    assert not out.exists()  # nothing in place
    done_before = ws.done_chunks() if ws.chunks.exists() else set()
    n_chunks = len(reference) and json.loads((ws.root / "manifest.json").read_text())["chunk_size"]
    assert n_chunks == 150
    if kill_during == "chunks":
        assert 2 <= len(done_before) < 20

    with pytest.raises(FileExistsError, match="--resume"):
        run_batch(_opts(demo, out, chunk_size=150), workers=1)  # the work is not discarded silently
    summary = run_batch(_opts(demo, out, chunk_size=150, resume=True), workers=2)
    assert summary.chunks_resumed == len(done_before)
    got = _frame(out)
    assert got["contact_id"].is_unique
    cols = [c for c in got.columns if c != "scored_at"]
    pd.testing.assert_frame_equal(got[cols], reference[cols])  # same rows, order and scores
    manifest_at = got["scored_at"].unique()
    assert len(manifest_at) == 1  # chunks before and after the kill share the run's scored_at
    rej, rej_ref = _frame(summary.rejects_path), _frame(ref_out.with_name("scores.rejects.parquet"))
    pd.testing.assert_frame_equal(rej, rej_ref)
    _no_leftovers(out)


def test_resume_refuses_changed_options(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    ws = Workspace(out.absolute())
    ws.root.mkdir(parents=True)
    ws.write_manifest({"version": 1, "engine": "local", "inputs": [], "as_of_option": None,
                       "chunk_size": 700, "reasons": "top", "model_option": None,
                       "model_ref": "rules:x", "started": "yesterday", "pid": -1})
    with pytest.raises(ValueError, match="input files changed"):
        run_batch(_opts(demo, out, resume=True), workers=1)
    assert ws.exists()  # an earlier run's work is never deleted by a failed resume
    run_batch(_opts(demo, out, overwrite=True), workers=1)  # --overwrite starts again
    assert out.exists() and not ws.root.exists()


def test_existing_output_is_not_overwritten(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"yesterday")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_batch(_opts(demo, out), workers=1)
    assert out.read_bytes() == b"yesterday"
    run_batch(_opts(demo, out, overwrite=True), workers=1)
    assert pq.read_metadata(out).num_rows > 0


# ---------------------------------------------------------------------------
# Bad inputs: a clear message, no traceback, nothing in place
# ---------------------------------------------------------------------------


def _copy_data(demo: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(demo / "data", dst)
    return dst


def _cli(args: list[str]) -> tuple[int, str]:
    from serving.cli import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output + (str(result.exception) if result.exception else "")


@pytest.mark.parametrize("case,message", [
    ("missing_column", "events: required column 'ts' is missing"),
    ("corrupt_parquet", "events: cannot read events.parquet"),
    ("empty_base", "the base is empty"),
    ("corrupt_contacts", "contacts: cannot read contacts.parquet"),
])
def test_bad_inputs_end_with_a_clear_message(demo: Path, tmp_path: Path, case: str, message: str) -> None:
    data = _copy_data(demo, tmp_path / "data")
    if case == "missing_column":
        pq.write_table(pq.read_table(data / "events.parquet").drop_columns(["ts"]), data / "events.parquet")
    elif case == "corrupt_parquet":
        raw = (data / "events.parquet").read_bytes()
        (data / "events.parquet").write_bytes(raw[: len(raw) // 2] + b"garbage" * 100)
    elif case == "empty_base":
        t = pq.read_table(data / "contacts.parquet")
        pq.write_table(t.slice(0, 0), data / "contacts.parquet")
    else:
        (data / "contacts.parquet").write_bytes(b"PAR1 not really parquet")
    out = tmp_path / "out" / "scores.parquet"
    code, output = _cli(["score", "--data", str(data), "--out", str(out), "--workdir", str(demo)])
    assert code == 2, output
    assert message in " ".join(output.split()), output
    assert "Traceback" not in output
    assert not out.exists()
    if out.parent.exists():
        _no_leftovers(out)
    with pytest.raises(DataError):  # the library raises the ValueError the CLI prints
        run_batch(_opts(demo, out, data=data), workers=1)


def test_cli_rejects_bad_options(demo: Path, tmp_path: Path) -> None:
    code, output = _cli(["score", "--data", str(demo / "data"), "--out", str(tmp_path / "x.parquet"),
                         "--as-of", "not-a-date", "--workdir", str(demo)])
    assert code == 2 and "--as-of" in output and "Traceback" not in output
    crm = tmp_path / "crm.csv"
    pd.DataFrame({"id": ["a", "b"], "visits": [1, 2]}).to_csv(crm, index=False)
    code, output = _cli(["score", "--table", str(crm), "--out", str(tmp_path / "x.parquet"),
                         "--workdir", str(demo)])
    # the champion was trained on event data: it cannot read a CRM table, and says so
    assert code == 2 and "not trained on a CRM table" in " ".join(output.split()), output
    assert not (tmp_path / "x.parquet").exists()


def test_rule_scorer_answers_without_a_model(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    summary = run_batch(_opts(demo, out, model_uri="models:/no-such-model/1", reasons="none"), workers=1)
    got = _frame(out)
    assert summary.scorer["scorer"] == "rules" and set(got["scorer"]) == {"rules"}
    assert got["reasons"].isna().all()
    assert got["probability"].between(0, 1).all()


def test_previous_that_is_not_parquet_fails_before_any_work(demo: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.batch as B

    def no_scoring(*args, **kwargs):
        raise AssertionError("the chunks were scored before --previous was checked")

    monkeypatch.setattr(B, "execute", no_scoring)
    prev = tmp_path / "prev.csv"
    pd.DataFrame({"contact_id": ["C1"], "band": ["A"]}).to_csv(prev, index=False)
    out = tmp_path / "out" / "p1.parquet"
    code, output = _cli(["score", "--data", str(demo / "data"), "--out", str(out),
                         "--previous", str(prev), "--workdir", str(demo)])
    text = " ".join(output.split())
    assert code == 2 and "--previous: cannot read prev.csv as Parquet" in text, output
    assert "Traceback" not in output
    assert not out.exists()
    if out.parent.exists():
        _no_leftovers(out)  # failed before the manifest: no work directory left behind
    no_band = tmp_path / "no_band.parquet"
    pd.DataFrame({"contact_id": ["C1"]}).to_parquet(no_band)
    with pytest.raises(DataError, match="required column 'band' is missing"):
        run_batch(_opts(demo, out, previous=no_band), workers=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_batch(_opts(demo, out, previous=tmp_path / "nope.parquet"), workers=1)
    assert not Workspace(out.absolute()).root.exists()


def test_late_error_keeps_the_work_for_resume(demo: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An error at assembly, after every chunk is scored, keeps the work: --resume finishes."""
    import serving.batch as B

    ref = tmp_path / "ref.parquet"
    run_batch(_opts(demo, ref, chunk_size=1000), workers=1)
    read_previous = B.read_previous

    def unreadable(path):
        raise DataError("--previous: cannot read prev.parquet: a truncated row group")

    monkeypatch.setattr(B, "read_previous", unreadable)
    monkeypatch.setenv("LEADSCORE_WORKERS", "1")
    out = tmp_path / "p1.parquet"
    code, output = _cli(["score", "--data", str(demo / "data"), "--out", str(out), "--chunk-size",
                         "1000", "--previous", str(ref), "--workdir", str(demo)])
    text = " ".join(output.split())
    assert code == 2 and "a truncated row group" in text and "--resume" in text, output
    ws = Workspace(out.absolute())
    assert not out.exists() and ws.exists() and ws.prepared() is not None
    n_chunks = ws.prepared()["n_buckets"]
    assert len(ws.done_chunks()) == n_chunks > 1

    monkeypatch.setattr(B, "read_previous", read_previous)
    summary = run_batch(_opts(demo, out, previous=ref, resume=True, chunk_size=1000), workers=1)
    assert summary.chunks_resumed == n_chunks  # nothing scored twice
    a, b = _frame(ref), _frame(out)
    cols = [c for c in a.columns if c != "scored_at"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert summary.previous["unchanged"] == len(a) and summary.previous["into_a"] == 0
    _no_leftovers(out)


def test_csv_row_with_too_many_fields_is_reported_without_its_values(
        demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _copy_data(demo, tmp_path / "data")
    contacts = pd.read_parquet(data / "contacts.parquet")
    (data / "contacts.parquet").unlink()
    contacts.to_csv(data / "contacts.csv", index=False)
    lines = (data / "contacts.csv").read_text().splitlines()
    bad_line = 53
    row = lines[bad_line - 1]
    values = [v for v in row.split(",") if len(v) >= 5]
    lines[bad_line - 1] = row + ",priya.kowalski@sigmaworks.example,Sigmaworks LLC"
    (data / "contacts.csv").write_text("\n".join(lines) + "\n")
    header = len(lines[0].split(","))
    monkeypatch.setenv("LEADSCORE_WORKERS", "1")
    out = tmp_path / "out" / "scores.parquet"
    code, output = _cli(["score", "--data", str(data), "--out", str(out), "--workdir", str(demo)])
    text = " ".join(output.split())
    assert code == 2, output
    assert (f"contacts: cannot read contacts.csv: line {bad_line} has {header + 2} columns, "
            f"the header {header}") in text, output
    leaked = [v for v in [*values, "priya.kowalski", "Sigmaworks"] if v in output]
    assert not leaked, output
    assert not out.exists()


# ---------------------------------------------------------------------------
# What changed since last night
# ---------------------------------------------------------------------------


def test_previous_scores_give_movers(demo: Path, tmp_path: Path) -> None:
    from serving.kpis import service_level

    first = tmp_path / "monday.parquet"
    run_batch(_opts(demo, first), workers=1)
    prev = _frame(first)
    into_a = prev.loc[prev["band"] == "A", "contact_id"].head(3).tolist()
    new_a = prev.loc[prev["band"] == "A", "contact_id"].iloc[3:5].tolist()
    fell = prev.loc[prev["band"] == "D", "contact_id"].head(2).tolist()
    new = prev.loc[prev["band"] == "C", "contact_id"].head(4).tolist()
    prev.loc[prev["contact_id"].isin(into_a), "band"] = "C"
    prev.loc[prev["contact_id"].isin(fell), "band"] = "A"
    prev = prev[~prev["contact_id"].isin(new + new_a)]
    prev = pd.concat([prev, prev.head(1).assign(contact_id="GONE-1")], ignore_index=True)
    previous = tmp_path / "previous.parquet"
    prev.to_parquet(previous)

    out = tmp_path / "tuesday.parquet"
    summary = run_batch(_opts(demo, out, previous=previous), workers=1)
    p = summary.previous
    assert (p["into_a"], p["new_a"], p["up"], p["down"], p["new"], p["gone"]) == (5, 2, 3, 2, 6, 1)
    assert p["bands_before"]["A"] == (prev["band"] == "A").sum()
    assert p["bands_after"] == summary.bands
    # the report counts the same new A leads
    assert p["into_a"] == service_level(_frame(out), prev)["new_a"].iloc[0]
    movers = _frame(summary.movers_path)
    assert movers["direction"].tolist() == ["up"] * 3 + ["new"] * 2 + ["new"] * 4 + ["down"] * 2
    assert set(movers["contact_id"][:3]) == set(into_a) and set(movers["contact_id"][3:5]) == set(new_a)
    assert movers["into_a"].tolist() == [True] * 5 + [False] * 6
    assert (movers["band_after"][:5] == "A").all()
    new_rows = movers.loc[movers["direction"] == "new"]
    assert set(new_rows["contact_id"]) == set(new + new_a)
    assert new_rows[["band_before", "score_before", "probability_before"]].isna().all().all()
    assert set(movers.loc[movers["direction"] == "down", "contact_id"]) == set(fell)
    assert (movers.loc[movers["direction"] == "down", "band_before"] == "A").all()
    schema = pq.read_schema(summary.movers_path)
    assert str(schema.field("score_before").type) == "int64"
    assert str(schema.field("band_before").type) == "string"

    # rerun without --previous: the movers beside the output were last night's; they go
    summary = run_batch(_opts(demo, out, overwrite=True), workers=1)
    assert summary.movers_path is None and summary.previous is None
    assert not out.with_name("tuesday.movers.parquet").exists()
    _no_leftovers(out)


def test_compare_previous_without_scores_columns() -> None:
    cur = pd.DataFrame({"contact_id": ["a", "b"], "band": ["A", "D"]})
    prev = pd.DataFrame({"contact_id": ["a", "b"], "band": ["B", "C"]})
    movers, counts = compare_previous(cur, prev)
    assert movers["contact_id"].tolist() == ["a", "b"]
    assert counts["into_a"] == 1 and counts["down"] == 1
    with pytest.raises(ValueError, match="band"):
        compare_previous(cur, prev.drop(columns="band"))


def test_new_contacts_are_movers_and_new_a_matches_the_report() -> None:
    from serving.kpis import service_level

    cur = pd.DataFrame({"contact_id": list("abcdefg"), "band": list("AAACDAB"),
                        "score": [90, 95, 91, 40, 10, 93, 60]})
    # a: B->A up; b: stays A; c: new in A; d: A->C down; e: new in D; f: was scored without a
    # band (not scored then): new in A; g: new in B; z: gone
    prev = pd.DataFrame({"contact_id": list("abdfz"), "band": ["B", "A", "A", None, "C"],
                         "score": [70, 95, 90, None, 50]})
    movers, counts = compare_previous(cur, prev)
    assert movers["contact_id"].tolist() == ["a", "f", "c", "g", "e", "d"]
    assert movers["direction"].tolist() == ["up", "new", "new", "new", "new", "down"]
    assert movers["into_a"].tolist() == [True, True, True, False, False, False]
    assert (counts["into_a"], counts["new_a"], counts["new"], counts["up"], counts["down"],
            counts["unchanged"], counts["gone"]) == (3, 2, 4, 1, 1, 1, 1)
    assert counts["into_a"] == service_level(cur, prev)["new_a"].iloc[0]


# ---------------------------------------------------------------------------
# Small pure pieces
# ---------------------------------------------------------------------------


def test_buckets_are_stable_across_processes() -> None:
    ids = [f"C{i:06d}" for i in range(1000)]
    here = bucket_of(ids, 7)
    code = ("from features.partition import bucket_of; import sys; "
            "print(','.join(map(str, bucket_of([f'C{i:06d}' for i in range(1000)], 7))))")
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert there == ",".join(map(str, here))
    counts = np.bincount(here, minlength=7)
    assert counts.min() > 100  # spread evenly enough


def test_reasons_all_and_none(demo: Path, tmp_path: Path) -> None:
    a = tmp_path / "all.parquet"
    run_batch(_opts(demo, a, reasons="all", chunk_size=5000), workers=1)
    got = _frame(a)
    assert got["reasons"].notna().all()
    first = json.loads(got["reasons"].iloc[0])
    assert first and set(first[0]) == {"feature", "value", "effect"}


def test_compiled_model_equals_booster_or_falls_back(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import compiled
    from training.registry import load_scorer

    model = load_scorer()
    base = load_base(demo / "data")
    feats = build_features(base.contacts, base.events, base.stages, base.until, config=model.feature_config)
    X = model.matrix(feats)
    monkeypatch.setenv("LEADSCORE_COMPILED", "0")
    assert compiled.compiled_predict(model) is None  # switched off (or not installed): the booster
    monkeypatch.delenv("LEADSCORE_COMPILED")
    if not compiled.available():
        pytest.skip("lleaves is not installed (optional extra)")
    monkeypatch.setenv("LEADSCORE_CACHE", str(demo / "cache"))
    predict = compiled.compiled_predict(model)
    assert predict is not None
    np.testing.assert_allclose(predict(X), model.booster.predict(X), rtol=0, atol=compiled.TOLERANCE)


def test_crm_table_is_scored_with_a_table_model(tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.crm import DatasetConfig, score_table, train_table

    rng = np.random.default_rng(0)
    n = 3000
    visits = rng.poisson(3, n)
    source = rng.choice(["web", "event", "list"], n)
    p = 1 / (1 + np.exp(-(-3 + 0.4 * visits + (source == "event"))))
    frame = pd.DataFrame({"lead_id": [f"L{i}" for i in range(n)], "visits": visits.astype(str),
                          "source": source, "converted": (rng.random(n) < p).astype(int).astype(str)})
    path = tmp_path / "crm.csv"
    frame.to_csv(path, index=False)
    config = DatasetConfig(id_column="lead_id", target={"column": "converted"}, cross_fit_folds=0)
    model = train_table(frame, config, train_config=TrainConfig(
        num_boost_round=30, early_stopping_rounds=10, gate={"min_train_positives": 20})).model
    out = tmp_path / "scores.parquet"
    summary = run_batch(BatchOptions(data=None, table=path, out=out, chunk_size=1000), scorer=model)
    got = _frame(out)
    assert len(got) == n == summary.eligible and summary.chunks == 3
    from training.crm import read_table

    ref = score_table(model, read_table(path), reasons=True)
    np.testing.assert_array_equal(got["probability"], ref["probability"])
    assert got["contact_id"].tolist() == ref["contact_id"].astype(str).tolist()
    top = got["band"].isin(["A", "B"])
    assert got.loc[top, "reasons"].notna().all() and got.loc[~top, "reasons"].isna().all()
    assert got["as_of"].isna().all()

    # rows without an id go to the rejects; a number near the float limit is shown whole
    odd = frame.head(6).assign(lead_id=["", "   ", "L-a", "L-b", "L-c", "L-d"],
                               visits=["1e308", "3", "1.7976931348623157e308", "2", "1e400", "4"])
    odd.to_csv(path, index=False)
    out2 = tmp_path / "odd.parquet"
    summary = run_batch(BatchOptions(data=None, table=path, out=out2, reasons="all"), scorer=model)
    got = _frame(out2)
    assert got["contact_id"].tolist() == ["L-a", "L-b", "L-c", "L-d"]
    rejects = pd.read_parquet(tmp_path / "odd.rejects.parquet")
    assert rejects["reason"].tolist() == ["missing_id", "missing_id"] and rejects["row"].tolist() == [0, 1]
    assert summary.rejects.set_index("reason")["rows"].to_dict() == {"missing_id": 2}
    shown = [r["value"] for rs in got["reasons"].map(json.loads) for r in rs if r["feature"] == "visits"]
    assert 1.7976931348623157e308 in shown
