"""The HTML report: CSVs written, plots embedded as valid PNGs, absent inputs said, no PII."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.schema import FUNNEL_RANK, LEAD_SOURCES
from serving.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PATH = ("lead", "mql", "sql", "opportunity", "customer")


def _base(n: int = 300, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A small random base with stage histories, scores (with outcome) and features."""
    rng = np.random.default_rng(seed)
    ids = [f"C{i:05d}" for i in range(n)]
    created = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 180, n), unit="D")
    contacts = pd.DataFrame(
        {
            "contact_id": ids,
            "created_at": created,
            "lead_source": rng.choice(LEAD_SOURCES[:5], n),
            "email": [f"first.last{i}@secret-corp.example" for i in range(n)],
            "phone": [f"+44 20 7946 {i:04d}" for i in range(n)],
            "company_name": [f"Zyxwv Holdings {i}" for i in range(n)],
        }
    )
    quality = rng.random(n)
    rows = []
    for cid, t0, q in zip(ids, created, quality, strict=True):
        t = t0
        if rng.random() < 0.9:
            rows.append((cid, t, "lead"))
        depth = int(np.searchsorted([0.35, 0.6, 0.78, 0.9], q))  # 0..4 more stages
        for stage in PATH[1 : depth + 1]:
            t = t + pd.Timedelta(days=int(rng.integers(1, 40)))
            rows.append((cid, t, stage))
        if depth < 3 and rng.random() < 0.15:
            rows.append((cid, t + pd.Timedelta(days=30), "cold"))
        elif depth >= 2 and rng.random() < 0.1:
            rows.append((cid, t + pd.Timedelta(days=20), PATH[depth - 1]))
    stages = pd.DataFrame(rows, columns=["contact_id", "ts", "stage"])

    reached = stages.assign(r=stages["stage"].map(FUNNEL_RANK)).groupby("contact_id")["r"].max()
    converted = (reached.reindex(ids).fillna(1) >= 4).astype(int).to_numpy()
    prob = np.clip(0.05 + 0.6 * quality**3 + rng.normal(0, 0.05, n), 0.001, 0.999)
    band = np.select([prob > 0.5, prob > 0.25, prob > 0.1], ["A", "B", "C"], "D")
    scores = pd.DataFrame(
        {
            "contact_id": ids,
            "probability": prob,
            "score": np.round(prob * 100).astype(int),
            "band": band,
            "scorer": "model",
            "converted": converted,
            "rules_probability": np.round(np.clip(quality + rng.normal(0, 0.3, n), 0, 1), 1),
        }
    )
    previous = scores[["contact_id", "band"]].sample(frac=0.8, random_state=1)
    previous["band"] = rng.choice(["A", "B", "C", "D"], len(previous))
    reference = pd.DataFrame(
        {
            "contact_id": ids,
            "engagement_decayed": rng.gamma(2.0, 1.0, n),
            "employees": rng.lognormal(4, 1, n),
            "industry": rng.choice(["saas", "retail", "finance"], n),
            "email": contacts["email"],
        }
    )
    current = reference.copy()
    current["engagement_decayed"] = current["engagement_decayed"] * 2.5
    return {
        "contacts": contacts,
        "stages": stages,
        "scores": scores,
        "previous": previous,
        "reference_features": reference,
        "current_features": current,
    }


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    b = _base()
    out = tmp_path_factory.mktemp("report")
    return build_report(
        b["contacts"],
        b["stages"],
        scores=b["scores"],
        previous=b["previous"],
        reference_features=b["reference_features"],
        current_features=b["current_features"],
        target_opportunities=50,
        out_dir=out,
    )


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG_RE.findall(html)]


def test_report_embeds_all_plots_as_valid_pngs(full_report):
    html = full_report.read_text(encoding="utf-8")
    pngs = _pngs(html)
    # funnel, leads per month, velocity, deciles, gain/lift, calibration, model vs rules,
    # bands, PSI
    assert len(pngs) == 9
    assert html.count("<img ") == 9
    for png in pngs:
        assert png.startswith(PNG_MAGIC)
        assert len(png) > 10_000  # a real chart, not an empty canvas
        width = int.from_bytes(png[16:20], "big")
        height = int.from_bytes(png[20:24], "big")
        assert width >= 400 and height >= 250


def test_report_is_self_contained(full_report):
    html = full_report.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "@import" not in html and "url(" not in html
    assert html.lstrip().startswith("<!DOCTYPE html>")


def test_report_writes_csvs(full_report):
    out = full_report.parent
    expected = {
        "stage_counts.csv",
        "leads_by_source_month.csv",
        "stage_conversion.csv",
        "stage_conversion_by_source.csv",
        "stage_velocity.csv",
        "cold_and_regressions.csv",
        "leads_needed.csv",
        "band_shares.csv",
        "service_level.csv",
        "score_deciles.csv",
        "score_bands.csv",
        "score_metrics.csv",
        "score_reliability.csv",
        "rules_deciles.csv",
        "psi.csv",
    }
    assert expected <= {p.name for p in out.glob("*.csv")}
    counts = pd.read_csv(out / "stage_counts.csv")
    assert counts["contacts"].sum() == 300
    psi = pd.read_csv(out / "psi.csv")
    assert psi.iloc[0]["feature"] == "engagement_decayed"
    assert psi.iloc[0]["status"] == "alert"
    assert "email" not in set(psi["feature"])
    metrics = pd.read_csv(out / "score_metrics.csv")
    assert list(metrics["scorer"]) == ["model", "rules"]


def test_report_headline_numbers(full_report):
    html = full_report.read_text(encoding="utf-8")
    for label in ("contacts", "band A share", "new A leads", "positive rate", "AUC (model)"):
        assert f'<div class="k">{label}</div>' in html
    assert '<div class="v">300</div>' in html


def test_report_has_no_personal_data(full_report):
    out = full_report.parent
    texts = [full_report.read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in out.glob("*.csv")]
    for text in texts:
        assert "secret-corp" not in text
        assert "7946" not in text
        assert "Zyxwv" not in text
        assert "C00001" not in text  # no contact-level rows either


def test_report_says_what_is_absent(tmp_path):
    b = _base(n=80, seed=4)
    scores = b["scores"].drop(columns=["converted", "rules_probability"])
    path = build_report(b["contacts"], b["stages"], scores=scores, out_dir=tmp_path / "r")
    html = path.read_text(encoding="utf-8")
    assert "no observed outcome" in html
    assert "No previous scoring was given" in html
    assert "drift (PSI) is not computed" in html
    # funnel, leads per month, velocity, bands
    assert len(_pngs(html)) == 4
    assert not (tmp_path / "r" / "psi.csv").exists()

    bare = build_report(b["contacts"], b["stages"], out_dir=tmp_path / "bare")
    assert "No scores were given" in bare.read_text(encoding="utf-8")


def test_report_without_rules_and_with_zero_rate(tmp_path):
    contacts = pd.DataFrame(
        {"contact_id": ["a", "b"], "created_at": pd.to_datetime(["2024-01-01", "2024-02-01"])}
    )
    stages = pd.DataFrame(
        {"contact_id": ["a"], "ts": pd.to_datetime(["2024-01-01"]), "stage": ["lead"]}
    )
    scores = pd.DataFrame(
        {
            "contact_id": ["a", "b"],
            "probability": [0.7, 0.2],
            "band": ["A", "C"],
            "converted": [1, 0],
        }
    )
    html = build_report(contacts, stages, scores=scores, out_dir=tmp_path).read_text("utf-8")
    assert "not compared with the rules" in html
    # nobody went past lead: the funnel cannot be worked back, and the report says why
    assert "sql→opportunity is unknown (no contact reached sql)" in html
    assert "no lead_source column" in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not installed (apt-get install -y chromium); "
    "the rendering check needs a real browser",
)
def test_report_renders_in_chromium(full_report, tmp_path):
    shot = tmp_path / "report.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1280,4000",
        full_report.resolve().as_uri(),
    ]
    try:
        subprocess.run(
            cmd, check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": profile}
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC)
    from PIL import Image  # pillow comes with matplotlib

    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    # the charts were decoded and drawn: many pixels of the model's / funnel's blue
    # (#1f6fb4), a colour that only the embedded plots use
    blue = (np.abs(rgb - np.array([0x1F, 0x6F, 0xB4])).max(axis=2) <= 8).sum()
    assert blue > 5_000
    # and the page is not mostly blank
    assert (rgb.min(axis=2) < 200).mean() > 0.05


# ---------------------------------------------------------------------------
# Which scorer answered: labels, the --workdir store, the rule-scorer fallback
# ---------------------------------------------------------------------------


def test_rule_scores_are_labelled_rules(tmp_path):
    b = _base(n=200, seed=2)
    scores = b["scores"].assign(scorer="rules")
    path = build_report(b["contacts"], b["stages"], scores=scores, out_dir=tmp_path)
    html = path.read_text(encoding="utf-8")
    metrics = pd.read_csv(tmp_path / "score_metrics.csv")
    assert list(metrics["scorer"]) == ["rules"]  # not "model", and not compared with itself
    assert '<div class="k">AUC (rules)</div>' in html and "AUC (model)" not in html
    assert "The rule scorer answered, not a model" in html
    assert not (tmp_path / "rules_deciles.csv").exists()


def _report_cli(args: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from serving.cli import app

    result = CliRunner().invoke(app, ["report", *args])
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def _model_scores(contacts: pd.DataFrame, path: Path) -> Path:
    """Scores as a model run writes them (only what the report reads)."""
    ids = contacts["contact_id"].astype(str).head(100)
    pd.DataFrame({"contact_id": ids, "probability": 0.5, "score": 50, "band": "A",
                  "scorer": "model"}).to_parquet(path)
    return path


def test_report_without_a_store_says_rules_and_creates_none(tmp_path, monkeypatch, clean_env):
    from features.synthetic import generate, write_tables

    tables = generate(1200, seed=5)
    write_tables(tables, tmp_path / "data")
    scores = _model_scores(tables["contacts"], tmp_path / "scores.parquet")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, output = _report_cli(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                                "--scores", str(scores)])
    text = " ".join(output.split())
    assert code == 0, output
    assert "warning: no champion model (no MLflow store (mlflow.db) in" in text
    assert "rule scorer" in text
    metrics = pd.read_csv(tmp_path / "r" / "score_metrics.csv")
    assert list(metrics["scorer"]) == ["rules"]
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "scored by the rule scorer" in html and "AUC (rules)" in html
    assert not list(elsewhere.iterdir())  # no empty mlflow.db (nor mlartifacts) created here


def test_report_reads_the_champion_of_workdir(tmp_path, monkeypatch, store, trained):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scores = _model_scores(trained.base.contacts, tmp_path / "scores.parquet")
    code, output = _report_cli(["--data", str(trained.data_dir), "--out", str(tmp_path / "r"),
                                "--scores", str(scores), "--workdir", str(store)])
    assert code == 0, output
    assert "warning" not in output
    metrics = pd.read_csv(tmp_path / "r" / "score_metrics.csv")
    assert list(metrics["scorer"]) == ["model", "rules"]
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "scored by the model lead-scoring v1" in html
    assert not list(elsewhere.iterdir())
