"""Flow: a dataset -> the rows that pass the text quality and language rules."""

from __future__ import annotations

from prefect import flow

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.stage_task import run_stage_task
from gristmill.stages.base import DatasetInput
from gristmill.stages.runner import StageResult
from gristmill.stages.text_filter import TextFilter, TextFilterConfig


class TextFilterParams(FrozenModel):
    input: str = ".gristmill/ingest"
    output: str = ".gristmill/text_filter"
    config: TextFilterConfig = TextFilterConfig()
    runtime: RuntimeConfig = RuntimeConfig()


@flow(name="text_filter", log_prints=True)
def text_filter_flow(params: TextFilterParams) -> StageResult:
    source = DatasetInput(params.input, verify=params.runtime.storage.verify_inputs)
    return run_stage_task(TextFilter, params.config, source, params.output, params.runtime)
