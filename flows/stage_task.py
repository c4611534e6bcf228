"""One Prefect task that runs any map stage: retries, caching, and a report artifact.

The cache key is the runner's own (stage, config hash, input hashes, code version). When the
output on disk is not committed under that key (deleted, replaced, never written), the task
refreshes its cache instead of reading it, so a cache hit never points at missing data.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from gristmill.config import RuntimeConfig
from gristmill.flows.report import stage_report
from gristmill.stages.base import MapStage, StageConfig, StageInput
from gristmill.stages.runner import StageResult, committed_with_key, run_stage, stage_cache_key
from gristmill.storage.fs import resolve


def _prefect_key(stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                 output: str, runtime: RuntimeConfig) -> str:
    """The runner's key for this output: one cached result per (work, output folder)."""
    key = stage_cache_key(stage_cls, config, source, runtime.storage)
    return hashlib.sha256(f"{key}\n{resolve(output).uri()}".encode()).hexdigest()


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return _prefect_key(**parameters)


@task(name="run-stage", cache_key_fn=_cache_key, persist_result=True, retries=1,
      retry_delay_seconds=5, task_run_name="{stage_cls.name}")
def run_stage_task(stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                   output: str, runtime: RuntimeConfig) -> StageResult:
    result = run_stage(stage_cls, config, source, output, runtime,
                       flow_run_id=str(flow_run.get_id() or "") or None)
    create_markdown_artifact(stage_report(result), key=f"{stage_cls.name.replace('_', '-')}-report",
                             description=f"{stage_cls.name}: rows in / out / rejected")
    return result


def run_stage_cached(stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                     output: str, runtime: RuntimeConfig) -> StageResult:
    """Run the stage task, trusting Prefect's cache only while the output is still there."""
    key = stage_cache_key(stage_cls, config, source, runtime.storage)
    task = run_stage_task.with_options(refresh_cache=not committed_with_key(output, key))
    return task(stage_cls, config, source, output, runtime)
