"""Flow: text rows -> deduplicated, prototype-pruned rows (Sorscher et al.; SemDeDup).

embed (Ray actors, GPU when configured) -> k-means centroids (barrier) -> score (map) ->
decisions (barrier) -> select (map). Barriers commit small datasets whose content hashes the
next stage's config carries, so every decision is in the lineage and in the cache keys.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.plots import markdown_image
from gristmill.flows.stage_task import run_stage_cached
from gristmill.stages.base import DatasetInput
from gristmill.stages.embed import Embed
from gristmill.stages.prune import (
    DatasetRef,
    DecisionSummary,
    PruneConfig,
    PruneScore,
    PruneScoreConfig,
    PruneSelect,
    PruneSelectConfig,
    build_centroids,
    build_decisions,
)
from gristmill.stages.runner import StageResult
from gristmill.storage.fs import resolve, write_bytes_atomic


class PruneParams(FrozenModel):
    input: str = Field(default=".gristmill/ingest", description="A dataset with id and text")
    output: str = Field(default=".gristmill/prune",
                        description="Folder for embedded/, centroids/, scored/, decisions/ "
                                    "(+ decisions.summary.json), selected/")
    config: PruneConfig = PruneConfig()
    plots: str | None = Field(default=None, description="Also save the PNG plots here")
    runtime: RuntimeConfig = RuntimeConfig()


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def score_histogram_png(summary: DecisionSummary) -> bytes:
    """Prototype scores of the deduplicated pool, kept and pruned stacked."""
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    edges = np.asarray(summary.score_edges)
    if len(edges) > 1:
        widths, left = np.diff(edges), edges[:-1]
        axis.bar(left, summary.kept_counts, widths, align="edge", label="kept",
                 color="tab:blue")
        axis.bar(left, summary.pruned_counts, widths, align="edge", label="pruned",
                 bottom=summary.kept_counts, color="tab:gray")
        axis.legend()
    end = "hard" if summary.keep_hard else "easy"
    axis.set_title(f"Prototype score (cosine distance to centroid); keeping {end} examples")
    axis.set_xlabel("distance to nearest centroid")
    axis.set_ylabel("rows")
    return _png(figure)


def cluster_sizes_png(summary: DecisionSummary) -> bytes:
    """Rows per cluster, largest first: the block the semantic pass must compare."""
    sizes = np.sort(np.asarray(summary.cluster_sizes))[::-1]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.bar(np.arange(len(sizes)), sizes, width=1.0, color="tab:green")
    axis.set_title(f"Cluster sizes (k = {len(sizes)})")
    axis.set_xlabel("cluster, by size")
    axis.set_ylabel("rows")
    return _png(figure)


def prune_report(summary: DecisionSummary, selected: StageResult) -> str:
    stats = selected.stats
    rows = [f"| {reason} | {count:,} |" for reason, count in sorted(summary.reasons.items())]
    choice = ("prototype pruning off" if summary.keep_hard is None else
              f"kept the {'hardest' if summary.keep_hard else 'easiest'} "
              f"{summary.keep_fraction:.0%} of the deduplicated pool")
    return "\n".join([
        "# prune", "",
        f"Output: `{selected.output}` · rows in {stats.rows_in:,} · kept {stats.rows_out:,} · "
        f"rejected {stats.rows_rejected:,} · {choice}", "",
        f"k-means: {len(summary.cluster_sizes)} clusters, largest "
        f"{max(summary.cluster_sizes, default=0):,} rows", "",
        "| reason | rows |", "|---|---:|", *rows, "",
    ])


@task(name="prune-centroids", retries=1, retry_delay_seconds=5)
def centroids_task(embedded: str, config: PruneConfig, output: str,
                   runtime: RuntimeConfig) -> DatasetRef:
    return build_centroids(embedded, config, output, runtime.storage)


@task(name="prune-decisions", retries=1, retry_delay_seconds=5)
def decisions_task(scored: str, config: PruneConfig, output: str,
                   runtime: RuntimeConfig) -> tuple[DatasetRef, DecisionSummary]:
    return build_decisions(scored, config, output, runtime.storage)


@flow(name="prune", log_prints=True)
def prune_flow(params: PruneParams) -> list[StageResult]:
    """embed -> score -> select; all three results, since embedding rejects rows too (empty
    texts) and a funnel that skipped it would lose them."""
    cfg, runtime, out = params.config, params.runtime, params.output.rstrip("/")
    verify = runtime.storage.verify_inputs
    embedded = run_stage_cached(Embed, cfg.embed, DatasetInput(params.input, verify=verify),
                                f"{out}/embedded", runtime)
    centroids = centroids_task(embedded.output, cfg, f"{out}/centroids", runtime)
    score_config = PruneScoreConfig(
        id_column=cfg.id_column, text_column=cfg.text_column,
        vector_column=cfg.embed.vector_column, centroids=centroids, num_perm=cfg.num_perm,
        ngram=cfg.ngram, minhash_seed=cfg.minhash_seed)
    scored = run_stage_cached(PruneScore, score_config,
                              DatasetInput(embedded.output, verify=verify), f"{out}/scored",
                              runtime)
    decisions, summary = decisions_task(scored.output, cfg, f"{out}/decisions", runtime)
    select_config = PruneSelectConfig(id_column=cfg.id_column, decisions=decisions,
                                      drop_columns=cfg.drop_columns)
    selected = run_stage_cached(PruneSelect, select_config,
                                DatasetInput(scored.output, verify=verify), f"{out}/selected",
                                runtime)
    histogram, sizes = score_histogram_png(summary), cluster_sizes_png(summary)
    if params.plots:
        folder = Path(params.plots)
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(resolve(str(folder / "prune_scores.png")), histogram)
        write_bytes_atomic(resolve(str(folder / "prune_cluster_sizes.png")), sizes)
    create_markdown_artifact(
        prune_report(summary, selected) + "\n"
        + markdown_image(histogram, "prototype score histogram") + "\n\n"
        + markdown_image(sizes, "cluster sizes") + "\n",
        key="prune-report", description="prune: duplicates removed and prototype cut")
    return [embedded, scored, selected]
