"""Flow: text rows -> deduplicated, prototype-pruned rows (Sorscher et al.; SemDeDup).

embed (Ray actors, GPU when configured) -> k-means centroids (global step) -> score (map)
-> decisions (global step) -> select (map). Global steps commit small datasets that the next
stage's config pins by content, so every decision is in the lineage and in the cache keys.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.plots import cluster_sizes_png, markdown_image, score_histogram_png
from gristmill.flows.report import prune_report
from gristmill.flows.stage_task import run_stage_task, run_step_task
from gristmill.stages.base import DatasetInput
from gristmill.stages.embed import Embed
from gristmill.stages.prune import PruneConfig
from gristmill.stages.prune_centroids import CentroidsConfig, PruneCentroids
from gristmill.stages.prune_decisions import DecisionsConfig, DecisionSummary, PruneDecisions
from gristmill.stages.prune_score import PruneScore, PruneScoreConfig
from gristmill.stages.prune_select import PruneSelect, PruneSelectConfig
from gristmill.stages.runner import StageResult
from gristmill.storage.fs import resolve, write_bytes_atomic


class PruneParams(FrozenModel):
    input: str = Field(default=".gristmill/ingest", description="A dataset with id and text")
    output: str = Field(default=".gristmill/prune",
                        description="Folder for embedded/, centroids/, scored/, decisions/, "
                                    "selected/")
    config: PruneConfig = PruneConfig()
    plots: str | None = Field(default=None, description="Also save the PNG plots here")
    runtime: RuntimeConfig = RuntimeConfig()


@flow(name="prune", log_prints=True)
def prune_flow(params: PruneParams) -> list[StageResult]:
    """embed -> score -> select; all three results, since embedding rejects rows too (empty
    texts) and a funnel that skipped it would lose them."""
    cfg, runtime, out = params.config, params.runtime, params.output.rstrip("/")
    verify = runtime.storage.verify_inputs
    embedded = run_stage_task(Embed, cfg.embed, DatasetInput(params.input, verify=verify),
                                f"{out}/embedded", runtime)
    centroids = run_step_task(PruneCentroids(CentroidsConfig.of(cfg)), [embedded.output],
                              f"{out}/centroids", runtime)
    score_config = PruneScoreConfig(
        id_column=cfg.id_column, text_column=cfg.text_column,
        vector_column=cfg.embed.vector_column, centroids=centroids.ref, num_perm=cfg.num_perm,
        ngram=cfg.ngram, minhash_seed=cfg.minhash_seed)
    scored = run_stage_task(PruneScore, score_config,
                              DatasetInput(embedded.output, verify=verify), f"{out}/scored",
                              runtime)
    decisions = run_step_task(PruneDecisions(DecisionsConfig.of(cfg)), [scored.output],
                              f"{out}/decisions", runtime)
    summary = DecisionSummary.model_validate(decisions.summary)
    select_config = PruneSelectConfig(id_column=cfg.id_column, decisions=decisions.ref,
                                      drop_columns=cfg.drop_columns)
    selected = run_stage_task(PruneSelect, select_config,
                                DatasetInput(scored.output, verify=verify), f"{out}/selected",
                                runtime)
    histogram, sizes = score_histogram_png(summary), cluster_sizes_png(summary)
    if params.plots:
        folder = resolve(params.plots)
        write_bytes_atomic(folder.join("prune_scores.png"), histogram)
        write_bytes_atomic(folder.join("prune_cluster_sizes.png"), sizes)
    create_markdown_artifact(
        prune_report(summary, selected) + "\n"
        + markdown_image(histogram, "prototype score histogram") + "\n\n"
        + markdown_image(sizes, "cluster sizes") + "\n",
        key="prune-report", description="prune: duplicates removed and prototype cut")
    return [embedded, scored, selected]
