"""Flow: the end-to-end curation run, stage after stage, each output feeding the next."""

from __future__ import annotations

import posixpath

from prefect import flow
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.stage_task import run_stage_cached
from gristmill.stages.base import DatasetInput
from gristmill.stages.ingest import Ingest, IngestConfig, RawFilesInput
from gristmill.stages.runner import StageResult
from gristmill.stages.text_filter import TextFilter, TextFilterConfig


class CurateParams(FrozenModel):
    sources: list[str] = Field(default_factory=lambda: ["brown", "spam_assassin"],
                               description="Named sources, files, folders or globs")
    work_dir: str = Field(default=".gristmill/curate",
                          description="Each stage writes <work_dir>/<stage>")
    ingest: IngestConfig = IngestConfig()
    text_filter: TextFilterConfig = TextFilterConfig()
    runtime: RuntimeConfig = RuntimeConfig()


@flow(name="curate", log_prints=True)
def curate_flow(params: CurateParams) -> list[StageResult]:
    ingested = run_stage_cached(
        Ingest, params.ingest, RawFilesInput.from_args(params.sources),
        posixpath.join(params.work_dir, "ingest"), params.runtime)
    filtered = run_stage_cached(
        TextFilter, params.text_filter,
        DatasetInput(ingested.output, verify=params.runtime.storage.verify_inputs),
        posixpath.join(params.work_dir, "text_filter"), params.runtime)
    for result in (ingested, filtered):
        print(f"{result.stage}: {result.stats.rows_in:,} in, {result.stats.rows_out:,} out, "
              f"{result.stats.rows_rejected:,} rejected -> {result.output}")
    return [ingested, filtered]
