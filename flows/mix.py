"""Flow: several domain datasets -> a stored mixture: a sample index (read back with
MixtureIndexStream), or with `materialize` the samples themselves in training order."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.plots import markdown_image, mixture_probabilities_png
from gristmill.flows.stage_task import run_step_task
from gristmill.loading.mixture import MixtureConfig, MixturePlan, MixtureStream
from gristmill.stages.global_step import StepResult
from gristmill.stages.mix import Mix, MixShards, domain_uris
from gristmill.storage.fs import resolve, write_bytes_atomic


class MixParams(FrozenModel):
    mixture: MixtureConfig
    output: str = ".gristmill/mix"
    materialize: bool = Field(
        default=False, description="Write every drawn row (plain shards, one copy per draw) "
                                   "instead of the sample index")
    plot: str | None = Field(default=None,
                             description="Also save the probability plot here (PNG)")
    runtime: RuntimeConfig = RuntimeConfig()


def mixture_report(mixture: MixtureConfig, plan: MixturePlan, result: StepResult,
                   png: bytes) -> str:
    """Each domain's size, its probability at the first and last step, and the samples the
    step drew from it (its summary), above the probability plot."""
    first, last = plan.probabilities(0), plan.probabilities(mixture.total_steps - 1)
    drawn = result.summary["samples_per_domain"]
    rows = "\n".join(f"| {d.name} | {size:,.0f} | {a:.4f} | {b:.4f} | {drawn[d.name]:,} |"
                     for d, size, a, b in zip(mixture.domains, plan.sizes, first, last,
                                              strict=True))
    return (f"# mix\n\nOutput: `{result.output}`, {result.stats.rows_out:,} samples over "
            f"{mixture.total_steps:,} steps\n\n| domain | size | p at first step | "
            f"p at last step | samples |\n|---|---:|---:|---:|---:|\n{rows}\n\n"
            + markdown_image(png, "sampling probability per domain over training steps") + "\n")


@flow(name="mix", log_prints=True)
def mix_flow(params: MixParams) -> StepResult:
    step = (MixShards if params.materialize else Mix)(params.mixture)
    result = run_step_task(step, domain_uris(params.mixture), params.output, params.runtime)
    plan = MixtureStream(params.mixture).plan
    png = mixture_probabilities_png(plan, [d.name for d in params.mixture.domains])
    if params.plot:
        write_bytes_atomic(resolve(params.plot), png)
    create_markdown_artifact(mixture_report(params.mixture, plan, result, png),
                             key="mixture-report",
                             description="mixture probabilities over training")
    return result
