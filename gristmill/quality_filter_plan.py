"""`gristmill quality-filter-plan`: which quality pool the data-filtering scaling law picks.

No data is read: the law's parameters (a preset, or a fit to a CSV of pilot runs with
columns bucket, samples_seen, error) and the bucket size are enough to plan a filter
before scoring anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from gristmill.scoring import scaling_laws as law

DEFAULT_BUDGETS = ["32M", "64M", "128M", "640M"]
_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)

console = Console()


def parse_amount(text: str) -> float:
    """'128M' -> 1.28e8; also '2.5B', '640000', '1e9'."""
    match = _NUMBER.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an amount like 64M, 2.5B or 1e9")
    return float(match.group(1)) * _SUFFIXES[match.group(2).upper()]


def read_pilots(path: Path, tolerance: float) -> law.PilotTable:
    """A CSV with columns bucket, samples_seen, error (one pilot run per row)."""
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(path)
    except (OSError, ValueError) as err:
        raise law.ScalingLawError(f"cannot read pilot runs from {path}: {err}") from err
    missing = {"bucket", "samples_seen", "error"} - set(table.column_names)
    if missing:
        raise law.ScalingLawError(f"{path} lacks columns {sorted(missing)}; it needs bucket, "
                                  "samples_seen, error")
    return law.PilotTable.of(table.column("bucket").to_numpy(),
                             table.column("samples_seen").to_numpy(),
                             table.column("error").to_numpy(), tolerance=tolerance)


def quality_filter_plan(
    budget: Annotated[list[str] | None, typer.Option(
        "--budget", "-b", help="Samples seen in training, e.g. 64M (repeatable) "
                               "[default: 32M 64M 128M 640M]")] = None,
    preset: Annotated[str, typer.Option(help="Published parameters")] = "datacomp_medium",
    bucket_samples: Annotated[str, typer.Option(
        help="Samples per quality bucket")] = str(law.DATACOMP_MEDIUM_BUCKET_SAMPLES),
    bucket_fraction: Annotated[float, typer.Option(
        help="Share of the pool per bucket (for the labels)")] = 0.1,
    pilots: Annotated[Path | None, typer.Option(
        help="CSV of pilot runs (bucket, samples_seen, error) to fit instead of the preset")]
        = None,
    fit_d: Annotated[bool, typer.Option(help="Fit d too (default: fixed)")] = False,
    d: Annotated[float, typer.Option(help="Fixed irreducible error d")] = 0.1,
    tolerance: Annotated[float, typer.Option(
        help="Allowed rise of a bucket's pilot error with samples (noise)")] = 0.0,
    variant: Annotated[str, typer.Option(help="repetition (paper) or effective")] =
        "repetition",
) -> None:
    """Print the quality pool the data-filtering scaling law picks for each budget."""
    try:
        size = parse_amount(bucket_samples)
        budgets = np.array([parse_amount(b) for b in (budget or DEFAULT_BUDGETS)])
        if variant not in ("repetition", "effective"):
            raise law.ScalingLawError(f"variant must be repetition or effective, not {variant!r}")
        if pilots is not None:
            fit = law.fit_law(read_pilots(pilots, tolerance), size, d=None if fit_d else d)
            params, source = fit.params, f"fit to {pilots} (rmse {fit.rmse:.4g})"
        else:
            params, source = law.preset(preset), f"preset {preset}"
        errors = law.error_table(params, budgets, size, variant)  # type: ignore[arg-type]
        chosen = law.best_pool(params, budgets, size, variant)  # type: ignore[arg-type]
    except law.ScalingLawError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from err
    console.print(f"{source}: a={params.a:.4g} d={params.d:.4g} "
                  f"b={[round(v, 4) for v in params.b]} tau={[round(v, 3) for v in params.tau]}"
                  f"; {size:,.0f} samples per bucket; {variant} law")
    table = Table("seen", "epochs", "keep", *(f"top {100 * bucket_fraction * k:g}%"
                                               for k in range(1, params.buckets + 1)),
                  title="predicted error per pool (epochs: of the best bucket)")
    for column, n in enumerate(budgets):
        k = int(chosen[column])
        table.add_row(short_amount(n), f"{n / size:,.1f}",
                      f"top {100 * bucket_fraction * k:g}%",
                      *(f"[bold]{e:.4f}[/]" if i + 1 == k else f"{e:.4f}"
                        for i, e in enumerate(errors[:, column])))
    console.print(table)


def short_amount(value: float) -> str:
    """1.28e8 -> '128M'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"
