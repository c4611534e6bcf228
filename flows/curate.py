"""Flow: raw sources -> training-ready shards, every method in order, each step resumable.

ingest + text_filter + quality scoring (fused: one pass that writes only the scored rows and
each stage's rejects) -> quality pool for the budget -> prune + dedup -> one dataset per
domain -> temperature-scheduled mixture (a sample index), with two optional branches:
image-text sources through caption fusion, and a retrieval datastore over the curated text.
Every step is a cached Prefect task or sub-flow whose output is committed atomically, so a
failed or killed run started again picks up at the first unfinished step.
"""

from __future__ import annotations

import posixpath
from typing import Literal

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.build_datastore import BuildDatastoreParams, build_datastore_flow
from gristmill.flows.curate_report import FunnelRow, run_report
from gristmill.flows.fuse_captions import FuseCaptionsParams, fuse_captions_flow
from gristmill.flows.mix import MixParams, mix_flow
from gristmill.flows.prune import PruneParams, prune_flow
from gristmill.flows.quality_filter import (
    QualityFilterParams,
    cut_and_select,
    quality_filter_flow,
    score_config,
)
from gristmill.flows.stage_task import run_chain_task, run_stage_task, run_step_task
from gristmill.inference import GeneratorConfig
from gristmill.inference.packed_models import INSTRUCT_MODEL
from gristmill.loading.mixture import DomainSpec, MixtureConfig
from gristmill.scoring.temperature import CooldownSchedule, Schedule
from gristmill.stages.base import StageInputError
from gristmill.stages.capsfusion import CapsFusionConfig
from gristmill.stages.chain import Link
from gristmill.stages.global_step import StepResult
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.partition import Partition, PartitionConfig, read_parts
from gristmill.stages.quality_score import QualityScore
from gristmill.stages.raw_inputs import DEFAULT_BATCH_BYTES, DEFAULT_UNIT_BYTES, RawFilesInput
from gristmill.stages.runner import StageResult
from gristmill.stages.text_filter import TextFilter, TextFilterConfig
from gristmill.storage.fs import Location, resolve


class CaptionsStep(FrozenModel):
    """Image-text sources (alt-text + synthetic caption per image) through CapsFusion."""

    enabled: bool = False
    sources: list[str] = Field(default_factory=lambda: ["openclipart_captions"])
    max_records: int | None = Field(default=None, ge=1,
                                    description="Only the first N records of each file")
    ingest: IngestConfig = IngestConfig(promote_fields=["synthetic_caption", "image_path"])
    fusion: CapsFusionConfig = Field(
        default=CapsFusionConfig(
            few_shot=2, max_prompt_tokens=512,
            generator=GeneratorConfig(model=INSTRUCT_MODEL, num_beams=1, do_sample=False,
                                      max_new_tokens=48, batch_size=4)),
        description="Greedy, not the paper's 3 beams: on the embedded 0.5B model on a CPU, "
                    "beams echoed the alt-text's keyword list or a worked example where "
                    "greedy wrote a sentence, and took 2.6x as long")


class MixStep(FrozenModel):
    """How the curated rows are split into domains and mixed into the final output."""

    domain_column: str = Field(default="source", description="One domain per value")
    materialize: bool = Field(
        default=False, description="final/ holds every drawn row (plain shards) instead of "
                                   "the sample index that MixtureIndexStream reads")
    schedule: Schedule = Field(default_factory=CooldownSchedule,
                               description="Temperature over training (default: Cooldown)")
    total_steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    seed: int = 0


class CurateParams(FrozenModel):
    sources: list[str] = Field(default_factory=lambda: ["brown", "spam_assassin"],
                               description="Named sources, files, folders, globs or URIs")
    max_records: int | None = Field(default=None, ge=1,
                                    description="Only the first N records of each file")
    unit_bytes: int = Field(default=DEFAULT_UNIT_BYTES, ge=1,
                            description="Larger JSONL and Parquet files are read in parts "
                                        "of about this size, one unit of work each")
    batch_bytes: int = Field(default=DEFAULT_BATCH_BYTES, ge=1,
                             description="Raw records are read in batches of at most this "
                                         "many bytes (a worker's memory follows it)")
    work_dir: str = Field(default=".gristmill/curate",
                          description="Each step writes its own folder under this one")
    keep: list[Literal["ingest", "text_filter"]] = Field(
        default_factory=list,
        description="ingest, text_filter and quality scoring run fused in one pass into "
                    "text_filter/ (earlier stages' rejects in text_filter/rejected-<stage>/); "
                    "naming a stage here also writes its kept rows to "
                    "text_filter/kept-<stage>/")
    ingest: IngestConfig = IngestConfig()
    text_filter: TextFilterConfig = TextFilterConfig()
    captions: CaptionsStep = CaptionsStep()
    quality: QualityFilterParams | None = Field(
        default_factory=QualityFilterParams,
        description="Quality pool for the budget (its input and work_dir are set by curate); "
                    "null skips the step")
    prune: PruneParams | None = Field(
        default_factory=PruneParams,
        description="Dedup and prototype pruning (input and output set by curate); "
                    "null skips the step")
    mix: MixStep = MixStep()
    datastore: BuildDatastoreParams | None = Field(
        default=None,
        description="A retrieval datastore over the curated text, before mixing (inputs, "
                    "output and work_dir set by curate); null skips the step")
    runtime: RuntimeConfig = RuntimeConfig()

    def path(self, *parts: str) -> str:
        return posixpath.join(self.work_dir, *parts)


class Progress:
    """A Prefect progress artifact that moves as steps finish."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done = steps, 0
        self.artifact_id = create_progress_artifact(
            0.0, key="curate-progress", description="curate: share of steps finished")

    def step(self) -> None:
        self.done += 1
        update_progress_artifact(self.artifact_id, 100.0 * self.done / self.steps)


def _funnel(step: str, result: StageResult | StepResult) -> FunnelRow:
    stats = result.stats
    return FunnelRow(step=step, rows_in=stats.rows_in, rows_out=stats.rows_out,
                     rows_rejected=stats.rows_rejected, reasons=dict(stats.reject_reasons),
                     output=result.output, reused=result.reused)


def _fuses_scoring(params: CurateParams) -> bool:
    """Quality scoring joins the ingest + text_filter pass unless its classifier must first
    learn from that pass's own output."""
    quality = params.quality
    if quality is None or quality.reference is None:
        return quality is not None
    return resolve(quality.reference.uri).uri() != resolve(params.path("text_filter")).uri()


def _text_steps(params: CurateParams, progress: Progress, funnel: list[FunnelRow],
                plots: Location) -> str:
    """ingest + text_filter (+ quality scoring) in one pass -> quality pool -> prune; returns
    the curated dataset's URI."""
    runtime = params.runtime
    raw = RawFilesInput.from_args(params.sources, max_records=params.max_records,
                                  unit_bytes=params.unit_bytes,
                                  batch_bytes=params.batch_bytes)
    links = [Link(Ingest, params.ingest), Link(TextFilter, params.text_filter)]
    quality, classifier = None, None
    if params.quality is not None:
        quality = params.quality.with_(work_dir=params.path("quality"),
                                       plot=plots.join("quality_pools.png").uri(), runtime=runtime)
    if quality is not None and _fuses_scoring(params):
        scoring, classifier = score_config(quality)
        links.append(Link(QualityScore, scoring))
    results = run_chain_task(links, raw, params.path("text_filter"), runtime, params.keep)
    for step, result in zip(("ingest", "text_filter", "quality: score"), results, strict=False):
        funnel.append(_funnel(step, result))
    progress.step()
    current = results[-1].output
    if quality is not None:
        if len(results) == 3:
            selected = cut_and_select(quality.with_(input=current), results[-1], classifier)
        else:
            scored, selected = quality_filter_flow(quality.with_(input=current))
            funnel.append(_funnel("quality: score", scored))
        funnel.append(_funnel("quality: select pool", selected))
        current = selected.output
    progress.step()
    if params.prune is not None:
        prune = params.prune.with_(input=current, output=params.path("prune"),
                                   plots=plots.uri(), runtime=runtime)
        steps = prune_flow(prune)
        funnel.extend(_funnel(f"prune: {r.stage}", r) for r in steps)
        current = steps[-1].output
    progress.step()
    return current


@flow(name="curate", log_prints=True)
def curate_flow(params: CurateParams) -> list[StageResult | StepResult]:
    """Raw sources to training-ready mixture shards (and fused captions, and a datastore)."""
    plots = resolve(params.path("plots"))
    plots.fs.create_dir(plots.path, recursive=True)
    progress = Progress(steps=6 + params.captions.enabled + (params.datastore is not None))
    funnel: list[FunnelRow] = []
    results: list[StageResult | StepResult] = []
    if params.captions.enabled:
        captions = params.captions
        caption_rows = run_stage_task(
            Ingest, captions.ingest,
            RawFilesInput.from_args(captions.sources, max_records=captions.max_records),
            params.path("captions", "ingest"), params.runtime)
        funnel.append(_funnel("captions: ingest", caption_rows))
        fused = fuse_captions_flow(FuseCaptionsParams(
            input=caption_rows.output, output=params.path("captions", "fused"),
            config=captions.fusion, runtime=params.runtime))
        funnel.append(_funnel("captions: capsfusion", fused))
        results.append(fused)
        progress.step()

    curated = _text_steps(params, progress, funnel, plots)
    partition = run_step_task(Partition(PartitionConfig(column=params.mix.domain_column)),
                              [curated], params.path("domains"), params.runtime)
    domains = read_parts(partition.ref)
    progress.step()
    if not domains:
        raise StageInputError(f"curate: no rows survived to mix; see the rejected/ folders "
                              f"under {params.work_dir} for why")
    mixture = MixtureConfig(
        domains=[DomainSpec(name=name, uri=uri) for name, uri in domains.items()],
        schedule=params.mix.schedule, total_steps=params.mix.total_steps,
        batch_size=params.mix.batch_size, seed=params.mix.seed)
    mixed = mix_flow(MixParams(mixture=mixture, output=params.path("final"),
                               materialize=params.mix.materialize,
                               plot=plots.join("mixture.png").uri(), runtime=params.runtime))
    funnel.append(_funnel("mix (final)", mixed))
    results.append(mixed)
    progress.step()
    if params.datastore is not None:
        built = build_datastore_flow(params.datastore.with_(
            inputs=[curated], output=params.path("datastore"),
            work_dir=params.path("datastore_work"), runtime=params.runtime))
        funnel.extend(_funnel(f"datastore: {r.stage}", r) for r in built)
        progress.step()
    create_markdown_artifact(run_report(funnel, domains, mixed.output, plots),
                             key="curate-report", description="curate: funnel, plots, output")
    for row in funnel:
        print(f"{row.step}: {row.rows_in:,} in, {row.rows_out:,} out, "
              f"{row.rows_rejected:,} rejected -> {row.output}")
    reader = "plain shards" if params.mix.materialize else \
        "sample index: read with gristmill.loading.mixture_index.MixtureIndexStream"
    print(f"Final: {mixed.output} ({reader}; gristmill inspect {mixed.output})")
    if params.datastore is not None:
        print(f"Query the datastore: gristmill datastore query {params.path('datastore')} "
              "\"your question\"")
    print("See every run, report and plot in the Prefect UI: make ui "
          "(then http://127.0.0.1:4200)")
    progress.step()
    return results
