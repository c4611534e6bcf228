"""Flow: raw files or named sources -> a gristmill dataset."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.stage_task import run_stage_task
from gristmill.stages.ingest import Ingest, IngestConfig, RawFilesInput
from gristmill.stages.raw_formats import RawFormat
from gristmill.stages.runner import StageResult


class IngestParams(FrozenModel):
    sources: list[str] = Field(default_factory=lambda: ["brown"],
                               description="Named sources, files, folders or globs")
    format: RawFormat | None = Field(default=None, description="None = tell by file ending")
    text_field: str = "text"
    max_records: int | None = Field(default=None, ge=1,
                                    description="Only the first N records of each file")
    output: str = ".gristmill/ingest"
    config: IngestConfig = IngestConfig()
    runtime: RuntimeConfig = RuntimeConfig()


@flow(name="ingest", log_prints=True)
def ingest_flow(params: IngestParams) -> StageResult:
    source = RawFilesInput.from_args(params.sources, fmt=params.format,
                                     text_field=params.text_field,
                                     max_records=params.max_records)
    return run_stage_task(Ingest, params.config, source, params.output, params.runtime)
