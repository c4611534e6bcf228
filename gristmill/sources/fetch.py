"""Fetch sources into the cache: `python -m gristmill.sources.fetch [names...]`.

A dataset whose marker exists is skipped without touching the network or any subprocess, so
running this again (e.g. from `make setup`) is free.
"""

import argparse
import sys
import tarfile
import zipfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gristmill.sources.cache import (
    dataset_dir,
    dataset_lock,
    downloads_dir,
    marker_counts,
    publish,
    staging_dir,
)
from gristmill.sources.catalog import (
    build_version,
    datasets_for,
    get_spec,
    is_fetched,
    list_sources,
)
from gristmill.sources.errors import SourceError, SourceFetchError
from gristmill.sources.registry import BUILDERS

_CONVERSION_ERRORS = (OSError, ValueError, LookupError, tarfile.TarError, zipfile.BadZipFile)


def _build(dataset: str) -> None:
    with dataset_lock(dataset):
        if is_fetched(dataset):
            return
        with staging_dir(dataset_dir(dataset).parent, dataset) as staging:
            try:
                counts = BUILDERS[dataset](staging)
            except SourceError:
                raise
            except _CONVERSION_ERRORS as exc:
                raise SourceFetchError(
                    f"source '{dataset}': building it from the downloads failed "
                    f"({type(exc).__name__}: {exc}); if a download is damaged, delete it under "
                    f"{downloads_dir()}, then retry `python -m gristmill.sources.fetch {dataset}`"
                ) from exc
            publish(staging, dataset, counts, build_version(dataset))


def _summary(dataset: str) -> str:
    counts = marker_counts(dataset)
    return ", ".join(f"{key}={value:,}" for key, value in counts.items())


def fetch(names: list[str] | None = None, progress: bool = True) -> dict[str, Path]:
    """Make the named sources (all when None) available; return each one's data folder."""
    specs = list_sources() if names is None else [get_spec(name) for name in names]
    datasets = datasets_for([spec.name for spec in specs])
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as display:
        task = display.add_task("sources", total=len(datasets))
        for dataset in datasets:
            cached = is_fetched(dataset)
            display.update(task, description=f"{'cached' if cached else 'fetching'} {dataset}")
            if not cached:
                _build(dataset)
            if progress:
                state = "cached " if cached else "fetched"
                display.console.print(
                    f"[green]{state}[/] {dataset}: {_summary(dataset)}", soft_wrap=True
                )
            display.advance(task)
    return {spec.name: spec.data_dir for spec in specs}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a one-line error and returns 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m gristmill.sources.fetch", description="Fetch gristmill's data sources."
    )
    parser.add_argument("names", nargs="*", help="sources to fetch (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    try:
        fetch(args.names or None, progress=not args.quiet)
    except SourceError as exc:
        Console(stderr=True).print(
            f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
