"""Prefect tasks: one runs any map stage, one a fused chain of them, one any global step;
retries and report artifacts each.

There is one cache layer, the runner's: a task whose output is committed under the same key
(stage or step, config, input contents, code, storage settings) returns at once with
`reused` set, and a deleted or replaced output is simply computed again. Prefect's own
result cache is not used, so it can never point at data that is gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from gristmill.config import RuntimeConfig
from gristmill.flows.report import stage_report, step_report
from gristmill.stages.base import MapStage, StageConfig, StageInput
from gristmill.stages.chain import Link
from gristmill.stages.global_step import GlobalStep, StepResult, run_global_step
from gristmill.stages.runner import StageResult, run_chain, run_stage


@task(name="run-stage", retries=1, retry_delay_seconds=5, task_run_name="{stage_cls.name}")
def run_stage_task(stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                   output: str, runtime: RuntimeConfig) -> StageResult:
    result = run_stage(stage_cls, config, source, output, runtime,
                       flow_run_id=str(flow_run.get_id() or "") or None)
    create_markdown_artifact(stage_report(result), key=f"{stage_cls.name.replace('_', '-')}-report",
                             description=f"{stage_cls.name}: rows in / out / rejected")
    return result


@task(name="run-chain", retries=1, retry_delay_seconds=5)
def _chain_task(links: list[Link], source: StageInput, output: str, runtime: RuntimeConfig,
                keep: list[str]) -> list[StageResult]:
    results = run_chain(links, source, output, runtime, keep=keep,
                        flow_run_id=str(flow_run.get_id() or "") or None)
    for result in results:
        create_markdown_artifact(stage_report(result),
                                 key=f"{result.stage.replace('_', '-')}-report",
                                 description=f"{result.stage}: rows in / out / rejected")
    return results


def run_chain_task(links: list[Link], source: StageInput, output: str, runtime: RuntimeConfig,
                   keep: Sequence[str] = ()) -> list[StageResult]:
    """Map stages fused into one pass per unit (stages/chain.py): one task named after the
    chain (`ingest+text_filter`), a report per stage."""
    name = "+".join(link.stage_cls.name for link in links)
    return _chain_task.with_options(task_run_name=name)(links, source, output, runtime,
                                                        list(keep))


@task(name="global-step", retries=1, retry_delay_seconds=5, task_run_name="{step.name}")
def run_step_task(step: GlobalStep, inputs: list[str], output: str,
                  runtime: RuntimeConfig) -> StepResult:
    result = run_global_step(step, inputs, output, runtime,
                             flow_run_id=str(flow_run.get_id() or "") or None)
    create_markdown_artifact(step_report(result), key=f"{step.name.replace('_', '-')}-report",
                             description=f"{step.name}: what the global step decided")
    return result
