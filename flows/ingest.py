"""Flow: raw files or named sources -> a gristmill dataset."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.stage_task import run_stage_task
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_formats import RawFormat
from gristmill.stages.raw_inputs import DEFAULT_BATCH_BYTES, DEFAULT_UNIT_BYTES, RawFilesInput
from gristmill.stages.runner import StageResult


class IngestParams(FrozenModel):
    sources: list[str] = Field(default_factory=lambda: ["brown"],
                               description="Named sources, files, folders, globs or URIs")
    format: RawFormat | None = Field(default=None, description="None = tell by file ending")
    text_field: str = "text"
    max_records: int | None = Field(default=None, ge=1,
                                    description="Only the first N records of each file")
    unit_bytes: int = Field(default=DEFAULT_UNIT_BYTES, ge=1,
                            description="Larger JSONL and Parquet files are read in parts "
                                        "of about this size, one unit of work each")
    batch_bytes: int = Field(default=DEFAULT_BATCH_BYTES, ge=1,
                             description="Raw records are read in batches of at most this "
                                         "many bytes (a worker's memory follows it)")
    output: str = ".gristmill/ingest"
    config: IngestConfig = IngestConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def raw_input(self) -> RawFilesInput:
        return RawFilesInput.from_args(self.sources, fmt=self.format,
                                       text_field=self.text_field,
                                       max_records=self.max_records,
                                       unit_bytes=self.unit_bytes,
                                       batch_bytes=self.batch_bytes)


@flow(name="ingest", log_prints=True)
def ingest_flow(params: IngestParams) -> StageResult:
    return run_stage_task(Ingest, params.config, params.raw_input(), params.output,
                          params.runtime)
