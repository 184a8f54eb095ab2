"""The ``leadscore`` command: the training commands plus score, serve, report and demo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from training.cli import app, console, fail

__all__ = ["app"]


@app.command()
def score(
    out: Annotated[Path, typer.Option("--out", help="Output Parquet file.")],
    data: Annotated[Path | None, typer.Option("--data", help="Directory with contacts, events, stages.")] = None,
    table: Annotated[Path | None, typer.Option("--table", help="A one-row-per-lead CRM export.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of date (default: the data's end).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model URI (default: models:/lead-scoring@champion).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local or spark.")] = "local",
    master: Annotated[str | None, typer.Option("--master", help="Spark master (default local[*]).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    previous: Annotated[Path | None, typer.Option("--previous", help="Last night's scores: report movers.")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1000, help="Contacts per chunk (memory per worker).")] = 50_000,
    reasons: Annotated[str, typer.Option("--reasons", help="Reasons for: all, top (bands A and B) or none. "
                                         "Reasons (LightGBM pred_contrib) cost ~100x a prediction per row.")] = "top",
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the embedded MLflow store lives.")] = Path("."),
) -> None:
    """Rescore the whole base (or a CRM table) with the champion; rules when there is none."""
    from serving.batch import BatchOptions, run_batch
    from training.tracking import configure_tracking

    if (data is None) == (table is None):
        fail("give exactly one of --data DIR or --table FILE")
    if engine not in ("local", "spark"):
        fail(f"--engine: expected local or spark, got {engine!r}")
    if reasons not in ("all", "top", "none"):
        fail(f"--reasons: expected all, top or none, got {reasons!r}")
    configure_tracking(workdir)
    opts = BatchOptions(data=data, table=table, out=out, as_of=as_of, model_uri=model, engine=engine,
                        master=master, resume=resume, overwrite=overwrite, previous=previous,
                        chunk_size=chunk_size, reasons=reasons)
    try:
        summary = run_batch(opts, console=console)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        fail("\n".join([str(e), *getattr(e, "__notes__", ())]))
    summary.print(console)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.")] = 3000,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the embedded MLflow store lives.")] = Path("."),
) -> None:
    """Start the HTTP scoring service (BentoML) on HOST:PORT."""
    from serving.service import check_bind_allowed, run_server

    try:
        check_bind_allowed(host, os.environ.get("LEADSCORE_API_KEYS", ""))
    except PermissionError as e:
        fail(str(e))
    run_server(host=host, port=port, workdir=workdir)


@app.command()
def report(
    data: Annotated[Path, typer.Option("--data", help="Directory with contacts, events, stages.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for report.html and CSVs.")],
    scores: Annotated[Path | None, typer.Option("--scores", help="Scores Parquet from `leadscore score`.")] = None,
    previous: Annotated[Path | None, typer.Option("--previous", help="Previous scores, for new A leads.")] = None,
    target: Annotated[int, typer.Option("--target-opportunities", help="Sales goal, to work back leads needed.")] = 100,
    until: Annotated[str | None, typer.Option("--until", help="Export date of the data.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the embedded MLflow store lives.")] = Path("."),
) -> None:
    """Funnel KPIs, score quality, service level and drift as a self-contained HTML report."""
    from rich.markup import escape

    from serving.report import report_command, report_scorer

    scorer = report_scorer(None, workdir)
    if scorer.scorer != "model":
        console.print(f"[bold yellow]warning:[/] no champion model ({escape(str(scorer.info().get('reason')))}): "
                      "the backtest is scored by the rule scorer, labelled 'rules' in the report "
                      "(--workdir: the directory of the MLflow store)", highlight=False)
    try:
        path = report_command(data=data, out=out, scores=scores, previous=previous,
                              target_opportunities=target, until=until, scorer=scorer)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"report written to {path}")


@app.command()
def demo(
    contacts: Annotated[int, typer.Option("--contacts", min=1000, help="Demo contacts to generate.")] = 20_000,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where everything is written.")] = Path("demo-run"),
    seed: Annotated[int, typer.Option("--seed")] = 7,
) -> None:
    """The main job end to end: demo data -> train -> register -> batch rescoring -> report -> summary."""
    from training.cli import demo_data, train

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    console.rule("1/4 demo data")
    demo_data(contacts=contacts, out=Path("data"), seed=seed)
    console.rule("2/4 train, register, gate")
    train(data=Path("data"), workdir=Path("."))
    console.rule("3/4 batch rescoring")
    score(out=Path("scores.parquet"), data=Path("data"), overwrite=True, workdir=Path("."))
    console.rule("4/4 report")
    report(data=Path("data"), out=Path("report"), scores=Path("scores.parquet"), workdir=Path("."))
    console.print(f"[bold green]done[/]: {Path.cwd()} (mlflow ui --backend-store-uri sqlite:///mlflow.db)")
