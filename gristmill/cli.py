"""The `gristmill` command: fetch data, ingest, run flows, inspect datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gristmill.config import ConfigError, load_config
from gristmill.quality_filter_plan import quality_filter_plan
from gristmill.retrieval.cli import app as datastore_app
from gristmill.sources.errors import SourceError
from gristmill.stages.base import StageInputError
from gristmill.stages.global_step import StepResult
from gristmill.stages.ingest import Ingest
from gristmill.stages.raw_formats import RawFormat, UnknownFormatError
from gristmill.stages.raw_inputs import IngestInputError
from gristmill.stages.runner import StageFailedError, StageResult, run_stage
from gristmill.storage.errors import DatasetError
from gristmill.storage.reader import Dataset

app = typer.Typer(help="gristmill: raw data in, training-ready Arrow shards out.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
EXPECTED_ERRORS = (ConfigError, DatasetError, SourceError, StageInputError, StageFailedError,
                   IngestInputError, UnknownFormatError)

DEFAULT_SCHEDULES = Path("configs/schedules.yaml")
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override a config value: key.path=value (repeatable)")]


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(1)


def _print_result(result: StageResult | StepResult) -> None:
    stats = result.stats
    verb = "reused" if result.reused else "wrote"
    name = result.stage if isinstance(result, StageResult) else result.step
    console.print(f"[bold]{name}[/]: {verb} {result.output}  "
                  f"in {stats.rows_in:,}  out {stats.rows_out:,}  "
                  f"rejected {stats.rows_rejected:,}  ({result.wall_seconds:.1f}s)")
    for reason, count in stats.reject_reasons.items():
        console.print(f"    rejected {count:>8,}  {reason}")


@app.command()
def fetch(names: Annotated[list[str] | None, typer.Argument(
        help="Sources to fetch (all when omitted)")] = None) -> None:
    """Download the demo corpora into the cache (idempotent)."""
    from gristmill.sources.fetch import fetch as fetch_sources

    try:
        for name, path in fetch_sources(names or None).items():
            console.print(f"{name}: {path}")
    except SourceError as err:
        _fail(err)


@app.command()
def sources() -> None:
    """List the named sources that `ingest` understands."""
    from gristmill.sources.catalog import is_fetched, list_sources

    table = Table("source", "format", "fetched", "description")
    for spec in list_sources():
        table.add_row(spec.name, spec.format, "yes" if is_fetched(spec.dataset) else "no",
                      spec.description)
    console.print(table)


@app.command()
def ingest(
    inputs: Annotated[list[str], typer.Argument(help="Named sources, files, folders or globs")],
    output: Annotated[str, typer.Option("--output", "-o", help="Dataset folder or URI")],
    fmt: Annotated[RawFormat | None, typer.Option("--format", "-f")] = None,
    text_field: Annotated[str, typer.Option(help="JSON key holding the text")] = "text",
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Turn raw files into a dataset with stable ids; bad records go to rejected/.

    Settings come as in `run ingest`: `--set config.promote_fields=[genre]`,
    `--set runtime.storage.checksum=sha256`. This runs without Prefect.
    """
    from gristmill.flows.ingest import IngestParams

    try:
        params = load_config(IngestParams, config, overrides).with_(
            sources=inputs, output=output, format=fmt, text_field=text_field)
        _print_result(run_stage(Ingest, params.config, params.raw_input(), params.output,
                                params.runtime))
    except EXPECTED_ERRORS as err:
        _fail(err)


@app.command()
def run(
    flow_name: Annotated[str, typer.Argument(metavar="FLOW", help="curate, ingest, text_filter")],
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Run a Prefect flow with parameters from a YAML file and overrides."""
    from gristmill.flows.registry import FLOWS

    if flow_name not in FLOWS:
        _fail(ValueError(f"unknown flow {flow_name!r}; known: {', '.join(sorted(FLOWS))}"))
    entry = FLOWS[flow_name]
    try:
        params = load_config(entry.params, config, overrides)
        results = entry.flow(params)
    except EXPECTED_ERRORS as err:
        _fail(err)
    if isinstance(results, dict):  # a flow of several steps returns them by name
        results = list(results.values())
    for result in results if isinstance(results, list) else [results]:
        _print_result(result)


@app.command()
def serve(
    schedules: Annotated[Path | None, typer.Option(
        help="YAML of deployments' default configs and schedules "
             "[default: configs/schedules.yaml when present]")] = None,
    host: Annotated[str, typer.Option(help="Local server address (loopback by default)")] =
        "127.0.0.1",
    port: Annotated[int, typer.Option(help="Local server port")] = 4200,
    home: Annotated[str, typer.Option(help="Local server data folder")] = ".gristmill/prefect",
) -> None:
    """Serve every flow as a Prefect deployment (UI, API, schedules) until Ctrl-C.

    Uses the Prefect server PREFECT_API_URL names; without it starts a local one."""
    from gristmill.flows.deploy import load_serve_spec, serve_flows
    from gristmill.flows.server import PrefectServerError

    try:
        if schedules is None and DEFAULT_SCHEDULES.exists():
            schedules = DEFAULT_SCHEDULES
        serve_flows(load_serve_spec(schedules), home=home, host=host, port=port)
    except (ConfigError, PrefectServerError) as err:
        _fail(err)


@app.command()
def inspect(
    dataset: Annotated[str, typer.Argument(help="Dataset folder or URI")],
    rows: Annotated[int, typer.Option(help="Sample rows to show")] = 3,
    verify: Annotated[bool, typer.Option(help="Check every shard's checksum")] = False,
) -> None:
    """Show a dataset's manifest, schema, counts, sample rows and lineage chain."""
    try:
        opened = Dataset.open(dataset, verify=verify)
        _show(opened, rows)
    except EXPECTED_ERRORS as err:
        _fail(err)


def _show(dataset: Dataset, rows: int) -> None:
    manifest = dataset.manifest
    console.print(f"[bold]{dataset.uri}[/]  {manifest.total_rows:,} rows in "
                  f"{len(manifest.shards)} shards, {manifest.total_bytes / 1e6:,.1f} MB")
    schema = Table("column", "type", title="schema")
    for column in manifest.columns:
        schema.add_row(column["name"], column["type"])
    console.print(schema)
    if manifest.stats is not None:
        console.print("stats: " + manifest.stats.model_dump_json(exclude_defaults=True))
    if dataset.rejected is not None:
        console.print(f"rejected: {dataset.rejected.num_rows:,} rows in {dataset.rejected.uri}")
    if rows and dataset.num_rows:
        sample = next(dataset.iter_batches()).slice(0, rows).to_pylist()
        for row in sample:
            console.print({k: _short(v) for k, v in row.items()})
    lineage = Table("dataset", "stage", "config hash", "code", "finished", title="lineage")
    for uri, step in dataset.lineage_chain():
        if step is None:
            lineage.add_row(uri, "-", "-", "-", "-")
        else:
            lineage.add_row(uri, step.stage, step.config_hash[:12], step.code_version,
                            str(step.finished or "-"))
    console.print(lineage)


def _short(value: object, limit: int = 120) -> object:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if isinstance(value, dict | list):
        return _short(json.dumps(value), limit)
    return value


app.command(name="quality-filter-plan")(quality_filter_plan)
app.add_typer(datastore_app, name="datastore")

if __name__ == "__main__":
    app()
