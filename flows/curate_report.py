"""The curate run report: the funnel step by step, every plot, and the final dataset."""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from gristmill.flows.plots import markdown_image
from gristmill.storage.fs import Location, read_bytes
from gristmill.storage.reader import Dataset


class FunnelRow(BaseModel):
    """One step's counts, as the funnel table shows them."""

    step: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    reasons: dict[str, int]
    output: str | None = Field(description="None: fused into the next step, not written")
    reused: bool = False


def _where(output: str | None) -> str:
    return "(fused, not written)" if output is None else f"`{output}`"


def _reasons(reasons: dict[str, int], shown: int = 4) -> str:
    top = sorted(reasons.items(), key=lambda item: -item[1])[:shown]
    text = ", ".join(f"{reason} {count:,}" for reason, count in top)
    return text + (", …" if len(reasons) > shown else "") if text else "-"


def funnel_table(funnel: list[FunnelRow]) -> list[str]:
    lines = ["| step | rows in | rows out | rejected | top reasons | output |",
             "|---|---:|---:|---:|---|---|"]
    lines += [f"| {r.step}{' (reused)' if r.reused else ''} | {r.rows_in:,} | {r.rows_out:,} "
              f"| {r.rows_rejected:,} | {_reasons(r.reasons)} | {_where(r.output)} |"
              for r in funnel]
    return lines


def final_summary(uri: str) -> list[str]:
    dataset = Dataset.open(uri)
    manifest = dataset.manifest
    columns = ", ".join(f"`{c['name']}`" for c in manifest.columns)
    return [f"`{dataset.uri}`: {manifest.total_rows:,} rows in {len(manifest.shards)} shards, "
            f"{manifest.total_bytes / 1e6:,.1f} MB; columns {columns}"]


def run_report(funnel: list[FunnelRow], domains: dict[str, str], final: str,
               plots: Location) -> str:
    lines = ["# curate", "", "## Funnel", "", *funnel_table(funnel), "",
             "## Domains mixed", "", "| domain | rows |", "|---|---:|"]
    lines += [f"| {name} | {Dataset.open(uri).num_rows:,} |" for name, uri in domains.items()]
    lines += ["", "## Final output", "", *final_summary(final), ""]
    listed = plots.fs.get_file_info(pafs.FileSelector(plots.path, allow_not_found=True))
    for png in sorted(i.base_name for i in listed if i.base_name.endswith(".png")):
        stem = posixpath.splitext(png)[0]
        lines += [f"## {stem.replace('_', ' ')}", "",
                  markdown_image(read_bytes(plots.join(png)), stem), ""]
    return "\n".join(lines)
