"""CLI commands of the data and training side: demo-data, features, train, evaluate, promote, rollback.

Configuration is read once, here, at the entry point; the functions they call take plain
arguments and write nothing themselves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=False)
app = typer.Typer(help="leadscore: lead scoring and propensity models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML with `features:` and `training:` sections.")]
DataOpt = Annotated[Path, typer.Option("--data", help="Directory with contacts, events, stages (Parquet or CSV).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Export date of the data (default: last stage change).")]


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit (no traceback for bad input)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def print_frame(frame: pd.DataFrame, title: str, *, floats: str = "{:.4f}") -> None:
    """A DataFrame as a rich table."""
    table = Table(title=title, show_lines=False)
    frame = frame.reset_index() if frame.index.name else frame
    for c in frame.columns:
        table.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(frame[c]) else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[floats.format(v) if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def print_auc_intervals(comparison: pd.DataFrame) -> None:
    """Each scorer's 95 % interval of ROC AUC (:func:`training.metrics.compare`), on one line
    under the comparison's table (which has no room left for it)."""
    if "roc_auc_low" not in comparison:
        return
    spans = [f"{name} {row.roc_auc_low:.3f}-{row.roc_auc_high:.3f}"
             for name, row in comparison.iterrows() if pd.notna(row.roc_auc_low)]
    if spans:
        console.print(f"ROC AUC, 95% interval (DeLong): {', '.join(spans)}")


@app.command("demo-data")
def demo_data(
    contacts: Annotated[int, typer.Option("--contacts", min=1, help="Number of contacts.")] = 20_000,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo-data"),
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 7,
) -> None:
    """Synthetic B2B contact base with known true conversion probabilities (`truth` table)."""
    from features.synthetic import generate, write_tables

    with console.status(f"generating {contacts:,} contacts"):
        tables = generate(contacts, seed=seed)
        paths = write_tables(tables, out)
    for name, path in paths.items():
        console.print(f"{name:9s} {len(tables[name]):>12,} rows  {path}")


@app.command()
def features(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Output Parquet file.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of date (default: the data's end).")] = None,
    config: ConfigOpt = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1000, help="Contacts per chunk (memory per worker).")] = 50_000,
) -> None:
    """Write the point-in-time feature table at one as-of date, for inspection."""
    from features import schema
    from features.config import FeatureConfig
    from features.feature_table import write_feature_table

    try:  # bucket by bucket: the base is never held whole (DataError is a ValueError)
        table = write_feature_table(data, out, as_of=as_of, config=FeatureConfig.from_yaml(config),
                                    chunk_size=chunk_size, console=console)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"{table.rows:,} eligible contacts x {len(schema.FEATURES)} features at "
                  f"{table.as_of.date()} -> {out}")
    print_frame(table.rejects, "rejected rows")


def _configs(path: Path | None):
    """The ``features:`` and ``training:`` sections of ``--config`` (defaults without one)."""
    from features.config import ConfigError, FeatureConfig
    from training.config import TrainConfig

    try:
        return FeatureConfig.from_yaml(path), TrainConfig.from_yaml(path)
    except ConfigError as e:
        fail(str(e))


def _training_set(data: Path, until: str | None, feature_config, workdir: Path):
    """The point-in-time training set of ``data``, built bucket by bucket (any base size)."""
    from features.io import DataError
    from features.training_set import partitioned_training_set

    try:
        ts = partitioned_training_set(data, until=until, config=feature_config, workdir=workdir,
                                      console=console)
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    frame = ts.frame
    console.print(f"training set: {len(frame):,} rows of {ts.contacts:,} contacts, "
                  f"{len(ts.as_of_dates)} as-of dates, {frame['converted'].mean():.2%} converted")
    if len(ts.rejects):
        print_frame(ts.rejects, "rejected rows")
    return ts


def _truth(data: Path, ts, train_config) -> pd.DataFrame | None:
    """The generator's oracle for the test window, when the data has a truth table."""
    from features.loading import read_truth

    test_dates = train_config.split.test_dates
    if len(ts.as_of_dates) < test_dates:
        return None  # too few dates: the split says so, with the numbers
    return read_truth(data, since=ts.as_of_dates[-test_dates])


def _input_example(contacts: pd.DataFrame, events: pd.DataFrame, until: pd.Timestamp) -> pd.DataFrame:
    """A few raw leads (contact fields + events JSON) for the MLflow signature, made up from
    real ones so that no row carries a real lead's attributes or history: ids ``example-1…``;
    no email, phone, company name or domain; each contact column on its own (row ``i`` takes
    the ``i``-th of the column's sorted distinct values among the leads given, cycling);
    the events of all those leads pooled, sorted by type and time and dealt in turn to the
    rows; times to the day."""
    from features import schema

    private = ("email", "phone", "company_name", "company_domain")
    keep = [c for c in contacts.columns if c in schema.CONTACTS.columns and c not in private]
    real = contacts[keep].reset_index(drop=True)
    n = len(real)
    out = {}
    for c in keep:
        col = real[c]
        if c == "created_at":
            col = pd.to_datetime(col).dt.floor("D").astype(str).where(col.notna())
        values = _sorted_distinct(col)
        # a column with no value at all has nothing to give away: kept as it is
        out[c] = [values[i % len(values)] for i in range(n)] if values else col.to_numpy(dtype=object)
    out = pd.DataFrame(out, dtype=object)
    ev = events[events["contact_id"].isin(real["contact_id"])].drop(columns="contact_id")
    ev = ev.assign(ts=pd.to_datetime(ev["ts"]).dt.floor("D").astype(str))
    ev = ev.sort_values(["event_type", "ts"], kind="stable")
    pooled = ev.astype(object).where(ev.notna(), None).to_dict("records")
    out["events"] = [json.dumps(pooled[i::n], default=str) for i in range(n)]
    out["contact_id"] = [f"example-{i + 1}" for i in range(n)]
    out["as_of"] = str(until)
    return out


def _sorted_distinct(values: pd.Series) -> list:
    """The distinct non-missing values of ``values``, sorted (by text when of mixed kinds)."""
    distinct = values.dropna().drop_duplicates().to_numpy(dtype=object).tolist()
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=repr)


@app.command()
def train(
    data: Annotated[Path | None, typer.Option("--data", help="Directory with contacts, events, stages.")] = None,
    table: Annotated[Path | None, typer.Option("--table", help="A one-row-per-lead CRM export (CSV/Parquet).")] = None,
    dataset_config: Annotated[Path | None, typer.Option("--dataset-config", help="Dataset YAML for --table (or give it as --config).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with `features:` and `training:` sections; with --table: the dataset config (target, id, exclusions; may hold `training:`).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="With --table and no dataset config: the outcome column.")] = None,
    until: UntilOpt = None,
    tune: Annotated[int, typer.Option("--tune", min=0, help="Optuna trials inside the training window (0: off).")] = 0,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the embedded MLflow store lives.")] = Path("."),
) -> None:
    """Build the training set, train rules + LightGBM, log to MLflow, register, apply the gate."""
    from training.tracking import configure_tracking, log_training
    from training.train import NotEnoughData
    from training.train import train as run_training

    if (data is None) == (table is None):
        fail("give exactly one of --data DIR or --table FILE")
    if table is not None:
        from training.crm import train_table_command

        train_table_command(table, dataset_config, config, tune, workdir, target=target)
        return
    fcfg, tcfg = _configs(config)
    uri = configure_tracking(workdir)
    ts = _training_set(data, until, fcfg, workdir)
    try:
        with console.status("training"):
            result = run_training(ts.frame, config=tcfg, feature_config=fcfg,
                                  truth=_truth(data, ts, tcfg), tune_trials=tune)
    except NotEnoughData as e:
        console.print(f"[yellow]no model trained: {e}. The rule scorer stays in charge.[/]")
        return
    except ValueError as e:  # e.g. too short a history for the time split
        fail(str(e))
    with console.status("logging to MLflow"):
        summary = log_training(result, training_set=ts.frame, source=str(data.resolve()),
                               input_example=_input_example(*ts.example, ts.until), gate_config=tcfg.gate)
    for col, why in result.excluded.items():
        console.print(f"[yellow]excluded[/] {col}: {why}")
    print_frame(result.comparison[["roc_auc", "pr_auc", "log_loss", "brier", "ece",
                                   "top_decile_lift", "recall_top10", "recall_top20"]],
                f"test window {result.split.description['test']}")
    print_auc_intervals(result.comparison)
    verdict = "[green]champion[/]" if summary["promoted"] else "[yellow]challenger[/]"
    console.print(f"registered lead-scoring version {summary['version']} as {verdict}: {summary['reason']}")
    console.print(f"run {summary['run_id']} in {uri}")


@app.command("infer-config")
def infer_config(
    table: Annotated[Path, typer.Option("--table", help="A one-row-per-lead CRM export (CSV/Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the dataset config YAML.")],
    target: Annotated[str | None, typer.Option("--target", help="The outcome column (default: guessed).")] = None,
    positive: Annotated[str | None, typer.Option("--positive", help="Target value meaning converted.")] = None,
) -> None:
    """Infer a dataset config for a CRM export (kinds, ids, placeholders, probable leaks), for review."""
    from training.crm import DatasetConfigError, infer_config_command

    try:
        infer_config_command(table, out, target=target, positive=positive)
    except (DatasetConfigError, ValueError, FileNotFoundError) as e:
        fail(str(e))


@app.command()
def evaluate(
    data: DataOpt,
    config: ConfigOpt = None,
    until: UntilOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Model URI to compare too (default: the champion).")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the embedded MLflow store lives.")] = Path("."),
) -> None:
    """Model vs rules vs logistic baseline (vs oracle, vs champion) on the latest window."""
    from training.metrics import compare
    from training.registry import load_scorer
    from training.tracking import configure_tracking
    from training.train import train as run_training

    fcfg, tcfg = _configs(config)
    configure_tracking(workdir)
    ts = _training_set(data, until, fcfg, workdir)
    try:
        result = run_training(ts.frame, config=tcfg, feature_config=fcfg, truth=_truth(data, ts, tcfg))
    except ValueError as e:  # NotEnoughData too
        fail(f"cannot evaluate: {e}")
    preds = result.test_predictions
    scorers = {c: preds[c].to_numpy() for c in ("model", "rules", "logistic", "oracle") if c in preds}
    champion = load_scorer(model)
    if champion.scorer == "model":
        from training.tracking import NotComparable, champion_probabilities

        try:  # the rows behind the figures above (the truth table may miss some of the window)
            scorers[f"champion v{champion.model_version}"] = champion_probabilities(
                champion, result.model, result.test_inputs(ts.frame))
        except NotComparable as e:
            console.print(f"[yellow]champion v{champion.model_version} not compared:[/] {e}")
    table = compare(scorers, preds["converted"].to_numpy()).set_index("scorer")
    print_frame(table[["roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift",
                       "recall_top10", "recall_top20"]], f"test window {result.split.description['test']}")
    print_auc_intervals(table)
    print_frame(result.deciles[["decile", "count", "positives", "conversion_rate", "lift",
                                "cumulative_recall"]], "model: conversion by score decile (1 = top)")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registered version of lead-scoring.")],
    workdir: Annotated[Path, typer.Option("--workdir")] = Path("."),
) -> None:
    """Move the `champion` alias to VERSION."""
    from mlflow.exceptions import MlflowException

    from training.tracking import configure_tracking
    from training.tracking import promote as do_promote

    configure_tracking(workdir)
    try:
        console.print(do_promote(version))
    except MlflowException as e:
        fail(f"cannot promote version {version}: {e.message}")


@app.command()
def rollback(workdir: Annotated[Path, typer.Option("--workdir")] = Path(".")) -> None:
    """Move the `champion` alias back to the version it replaced."""
    from training.tracking import configure_tracking
    from training.tracking import rollback as do_rollback

    configure_tracking(workdir)
    try:
        console.print(do_rollback())
    except LookupError as e:
        fail(str(e))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
