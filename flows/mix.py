"""Flow: several domain datasets -> one dataset of mixture samples in training order."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.plots import markdown_image, mixture_probabilities_png
from gristmill.loading.mixture import MixtureConfig, MixtureStream
from gristmill.stages.mix import run_mix
from gristmill.stages.runner import StageResult
from gristmill.storage.fs import resolve, write_bytes_atomic


class MixParams(FrozenModel):
    mixture: MixtureConfig
    output: str = ".gristmill/mix"
    plot: str | None = Field(default=None,
                             description="Also save the probability plot here (PNG)")
    runtime: RuntimeConfig = RuntimeConfig()


@task(name="mix", retries=1, retry_delay_seconds=5)
def mix_task(params: MixParams) -> StageResult:
    result = run_mix(params.mixture, params.output, params.runtime,
                     flow_run_id=str(flow_run.get_id() or "") or None)
    stream = MixtureStream(params.mixture)
    names = [d.name for d in params.mixture.domains]
    png = mixture_probabilities_png(stream.plan, names)
    if params.plot:
        write_bytes_atomic(resolve(params.plot), png)
    first, last = stream.plan.probabilities(0), stream.plan.probabilities(
        params.mixture.total_steps - 1)
    rows = "\n".join(f"| {n} | {size:,.0f} | {a:.4f} | {b:.4f} |"
                     for n, size, a, b in zip(names, stream.plan.sizes, first, last, strict=True))
    create_markdown_artifact(
        f"# mix\n\nOutput: `{result.output}`, {result.stats.rows_out:,} samples over "
        f"{params.mixture.total_steps:,} steps\n\n| domain | size | p at first step | "
        f"p at last step |\n|---|---:|---:|---:|\n{rows}\n\n"
        + markdown_image(png, "sampling probability per domain over training steps") + "\n",
        key="mix-report", description="mixture probabilities over training")
    return result


@flow(name="mix", log_prints=True)
def mix_flow(params: MixParams) -> StageResult:
    return mix_task(params)
