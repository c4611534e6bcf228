"""Flow: a dataset -> the quality pool the data-filtering scaling law picks for a budget.

Score once (optionally with a classifier trained on reference sets first), cut quality
buckets and decide on the driver, select with a stage whose config carries the decision;
the report shows the predicted error of every candidate pool against compute.
"""

from __future__ import annotations

import io
import posixpath

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
from gristmill.inference import EmbedderConfig
from gristmill.scoring import scaling_laws as law
from gristmill.stages.base import DatasetInput
from gristmill.stages.quality_filter import (
    BudgetUnit,
    ClassifierReport,
    LawChoice,
    PoolDecision,
    QualityCuts,
    QualityScore,
    QualityScoreConfig,
    QualitySelect,
    ReferenceSets,
    cut_buckets,
    decide,
    selection,
    train_reference_classifier,
)
from gristmill.stages.quality_scorers import HeuristicScorerConfig, ScorerConfig
from gristmill.stages.runner import StageResult
from gristmill.storage.fs import resolve, write_bytes_atomic


class FilterQualityParams(FrozenModel):
    input: str = Field(default=".gristmill/ingest", title="Input dataset",
                       description="A dataset with the columns the scorer reads")
    work_dir: str = Field(default=".gristmill/quality", title="Work folder",
                          description="scored/, selected/ and the classifier go here")
    budget: float = Field(default=128_000_000, gt=0, title="Training budget",
                          description="Samples (or tokens) the training run will see")
    budget_unit: BudgetUnit = Field(default="samples", title="Budget unit")
    token_column: str | None = Field(
        default=None, title="Token column",
        description="Per-row token counts, needed when the budget is in tokens")
    law: LawChoice = Field(default_factory=LawChoice, title="Scaling law",
                           description="Preset, explicit parameters, or a fit to pilot runs")
    bucket_fractions: list[float] = Field(
        default_factory=lambda: [0.1, 0.1, 0.1, 0.1], title="Bucket fractions",
        description="Share of rows per quality bucket, best first (paper: 4 x 10%)")
    scorer: ScorerConfig = Field(default_factory=HeuristicScorerConfig, title="Scorer",
                                 description="Ignored when reference sets are given")
    reference: ReferenceSets | None = Field(
        default=None, title="Reference sets",
        description="Train an embedding classifier on these and score with it")
    embedder: EmbedderConfig = Field(default=EmbedderConfig(max_seq_length=256),
                                     title="Embedder for the reference classifier")
    score_column: str = "quality_score"
    plot: str | None = Field(default=None, description="Also save the plot here (PNG)")
    runtime: RuntimeConfig = RuntimeConfig()


def pools_png(decision: PoolDecision, fractions: list[float], points: int = 200) -> bytes:
    """Predicted error against samples seen for every candidate pool, the choice marked."""
    floor = law.SAMPLE_SCALE / decision.law.a
    low = max(decision.budget / 100, floor * 1.01)
    budgets = np.geomspace(low, max(decision.budget * 100, low * 10), points)
    errors = law.error_table(decision.law, budgets, decision.bucket_sizes, decision.variant)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for k, curve in enumerate(errors, start=1):
        share = 100 * sum(fractions[:k])
        axis.plot(budgets, curve, linewidth=1.6, label=f"top {share:g}% ({k} bucket"
                  f"{'s' if k > 1 else ''})")
    chosen = decision.keep_buckets
    axis.axvline(decision.budget, color="grey", linestyle="--", linewidth=1)
    axis.plot([decision.budget], [decision.predicted_error[chosen - 1]], marker="*",
              markersize=14, color="black", label=f"chosen: {chosen} bucket(s)")
    axis.set_xscale("log")
    axis.set_xlabel(f"{decision.unit} seen")
    axis.set_ylabel("predicted error")
    axis.set_title(f"Data-filtering scaling law ({decision.variant}); {decision.law_source}",
                   fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def decision_report(decision: PoolDecision, cuts: QualityCuts, selected: StageResult,
                    classifier: ClassifierReport | None, png: bytes) -> str:
    lines = [
        "# filter_quality", "",
        f"Budget {decision.budget:,.0f} {decision.unit} seen -> keep the top "
        f"**{decision.keep_buckets}** of {len(cuts.thresholds)} buckets "
        f"({100 * sum(cuts.fractions[:decision.keep_buckets]):g}% of {cuts.rows:,} rows). "
        f"Law: {decision.law_source}, {decision.variant} variant.", "",
        "| bucket | score cut (>=) | rows | epochs of pool at budget | predicted error "
        "if pool ends here |", "|---:|---:|---:|---:|---:|",
    ]
    for k, (cut, rows) in enumerate(zip(cuts.thresholds, cuts.bucket_rows, strict=True)):
        pool = sum(decision.bucket_sizes[:k + 1])
        mark = " (chosen)" if k + 1 == decision.keep_buckets else ""
        lines.append(f"| {k}{mark} | {cut:.6g} | {rows:,} | {decision.budget / pool:,.2f} | "
                     f"{decision.predicted_error[k]:.4f} |")
    stats = selected.stats
    lines += ["", f"Selected {stats.rows_out:,} of {stats.rows_in:,} rows; "
              f"{stats.rows_rejected:,} rejected as below the selected pool."]
    if classifier is not None:
        auc = "n/a" if classifier.holdout_auc is None else f"{classifier.holdout_auc:.4f}"
        lines += ["", f"Reference classifier: trained on {classifier.train_positive:,} "
                  f"positive / {classifier.train_negative:,} negative texts; held-out ROC AUC "
                  f"{auc} ({classifier.holdout_positive:,} / {classifier.holdout_negative:,})."]
    lines += ["", markdown_image(png, "predicted error vs compute per candidate pool")]
    return "\n".join(lines) + "\n"


@task(name="train-quality-classifier", retries=1, retry_delay_seconds=5)
def train_classifier_task(params: FilterQualityParams) -> tuple[ScorerConfig, ClassifierReport]:
    if params.reference is None:
        raise ValueError("training the quality classifier needs reference sets")
    return train_reference_classifier(params.reference, params.embedder,
                                      posixpath.join(params.work_dir, "classifier.npz"))


@task(name="decide-quality-pool")
def decide_task(params: FilterQualityParams, scored: str) -> tuple[QualityCuts, PoolDecision]:
    cuts = cut_buckets(scored, params.score_column, params.bucket_fractions,
                       params.token_column if params.budget_unit == "tokens" else None)
    return cuts, decide(params.law, cuts, params.budget, params.budget_unit)


@flow(name="filter_quality", log_prints=True)
def filter_quality_flow(params: FilterQualityParams) -> list[StageResult]:
    verify = params.runtime.storage.verify_inputs
    classifier = None
    scorer = params.scorer
    if params.reference is not None:
        scorer, classifier = train_classifier_task(params)
        print(f"reference classifier: held-out ROC AUC {classifier.holdout_auc}")
    scored = run_stage_cached(
        QualityScore, QualityScoreConfig(scorer=scorer, score_column=params.score_column),
        DatasetInput(params.input, verify=verify), posixpath.join(params.work_dir, "scored"),
        params.runtime)
    cuts, decision = decide_task(params, scored.output)
    print(f"budget {decision.budget:,.0f} {decision.unit}: keep {decision.keep_buckets} of "
          f"{len(cuts.thresholds)} buckets ({decision.law_source})")
    selected = run_stage_cached(
        QualitySelect, selection(cuts, decision, params.score_column),
        DatasetInput(scored.output, verify=verify), posixpath.join(params.work_dir, "selected"),
        params.runtime)
    png = pools_png(decision, cuts.fractions)
    if params.plot:
        write_bytes_atomic(resolve(params.plot), png)
    create_markdown_artifact(decision_report(decision, cuts, selected, classifier, png),
                             key="filter-quality-report",
                             description="quality pool chosen by the scaling law")
    return [scored, selected]
