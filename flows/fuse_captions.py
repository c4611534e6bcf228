"""Flow: image-text pairs -> fused captions (CapsFusion), with a side-by-side report."""

from __future__ import annotations

import statistics

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.report import cell
from gristmill.flows.stage_task import run_stage_task
from gristmill.stages.base import DatasetInput
from gristmill.stages.capsfusion import CapsFusion, CapsFusionConfig
from gristmill.stages.runner import StageResult
from gristmill.storage.reader import Dataset

SAMPLES = 10


class FuseCaptionsParams(FrozenModel):
    input: str = Field(default=".gristmill/captions/ingest",
                       description="A dataset with the raw and synthetic caption columns")
    output: str = ".gristmill/captions/fused"
    config: CapsFusionConfig = CapsFusionConfig()
    runtime: RuntimeConfig = RuntimeConfig()


def fusion_report(result: StageResult, config: CapsFusionConfig) -> str:
    """Counts by reason, mean entity retention, and fusions beside their inputs."""
    kept = Dataset.open(result.output).to_table()
    retention = [v for v in kept.column("entity_retention").to_pylist() if v is not None]
    mean = f"{statistics.fmean(retention):.3f}" if retention else "n/a"
    stats = result.stats
    lines = [
        "# fuse_captions", "",
        f"rows in {stats.rows_in:,} · fused {stats.rows_out:,} · rejected "
        f"{stats.rows_rejected:,} · mean entity retention {mean} "
        f"({len(retention)} rows with names or numbers)", "",
        "| reject reason | rows |", "|---|---:|",
        *(f"| {reason} | {count:,} |" for reason, count in stats.reject_reasons.items()), "",
        "| raw alt-text | synthetic caption | fused caption | entity retention |",
        "|---|---|---|---:|",
    ]
    for row in kept.slice(0, SAMPLES).to_pylist():
        score = row["entity_retention"]
        lines.append(f"| {cell(row[config.raw_column])} | {cell(row[config.synthetic_column])}"
                     f" | {cell(row[config.output_column])} | "
                     f"{'-' if score is None else f'{score:.2f}'} |")
    return "\n".join(lines) + "\n"


@flow(name="fuse_captions", log_prints=True)
def fuse_captions_flow(params: FuseCaptionsParams) -> StageResult:
    source = DatasetInput(params.input, verify=params.runtime.storage.verify_inputs)
    result = run_stage_task(CapsFusion, params.config, source, params.output, params.runtime)
    create_markdown_artifact(fusion_report(result, params.config), key="fuse-captions-report",
                             description="CapsFusion: fused captions beside their inputs")
    return result
