"""Flow: a dataset -> the quality pool the data-filtering scaling law picks for a budget.

Score once (optionally with a classifier trained on reference sets first), cut quality
buckets and decide in the `quality_cut` global step, select with a stage whose config pins
the cut by content; the report shows the predicted error of every candidate pool against
compute.
"""

from __future__ import annotations

import posixpath

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.plots import pools_png
from gristmill.flows.report import decision_report
from gristmill.flows.stage_task import run_stage_task, run_step_task
from gristmill.inference import EmbedderConfig
from gristmill.stages.base import DatasetInput
from gristmill.stages.quality_cut import LawChoice, PoolDecision, QualityCut, QualityCutConfig
from gristmill.stages.quality_reference import (
    ClassifierReport,
    ReferenceSets,
    train_reference_classifier,
)
from gristmill.stages.quality_score import BudgetUnit, QualityScore, QualityScoreConfig
from gristmill.stages.quality_scorers import HeuristicScorerConfig, ScorerConfig
from gristmill.stages.quality_select import QualitySelect, QualitySelectConfig
from gristmill.stages.runner import StageResult
from gristmill.storage.fs import resolve, write_bytes_atomic


class QualityFilterParams(FrozenModel):
    input: str = Field(default=".gristmill/ingest", title="Input dataset",
                       description="A dataset with the columns the scorer reads")
    work_dir: str = Field(default=".gristmill/quality", title="Work folder",
                          description="scored/, cuts/, selected/ and the classifier go here")
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


@task(name="train-quality-classifier", retries=1, retry_delay_seconds=5)
def train_classifier_task(params: QualityFilterParams) -> tuple[ScorerConfig, ClassifierReport]:
    if params.reference is None:
        raise ValueError("training the quality classifier needs reference sets")
    return train_reference_classifier(params.reference, params.embedder,
                                      posixpath.join(params.work_dir, "classifier.npz"))


def cut_config(params: QualityFilterParams) -> QualityCutConfig:
    """The cut step's config: token counts are read only for a budget in tokens."""
    return QualityCutConfig(
        score_column=params.score_column, fractions=params.bucket_fractions,
        token_column=params.token_column if params.budget_unit == "tokens" else None,
        law=params.law, budget=params.budget, unit=params.budget_unit)


def score_config(params: QualityFilterParams) -> tuple[QualityScoreConfig,
                                                     ClassifierReport | None]:
    """The scoring stage's config, after training the reference classifier if one is asked
    for (so a caller can also fuse scoring into a chain of its own)."""
    scorer, classifier = params.scorer, None
    if params.reference is not None:
        scorer, classifier = train_classifier_task(params)
        print(f"reference classifier: held-out ROC AUC {classifier.holdout_auc}")
    return QualityScoreConfig(scorer=scorer, score_column=params.score_column), classifier


def cut_and_select(params: QualityFilterParams, scored: StageResult,
                   classifier: ClassifierReport | None) -> StageResult:
    """Cut the scored rows into buckets, let the law pick the pool, select it, report."""
    cut = run_step_task(QualityCut(cut_config(params)), [scored.output],
                        posixpath.join(params.work_dir, "cuts"), params.runtime)
    decision = PoolDecision.model_validate(cut.summary)
    print(f"budget {decision.budget:,.0f} {decision.unit}: keep {decision.keep_buckets} of "
          f"{len(decision.bucket_sizes)} buckets ({decision.law_source})")
    selected = run_stage_task(
        QualitySelect, QualitySelectConfig(score_column=params.score_column, cuts=cut.ref),
        DatasetInput(scored.output, verify=params.runtime.storage.verify_inputs),
        posixpath.join(params.work_dir, "selected"), params.runtime)
    png = pools_png(decision, params.bucket_fractions)
    if params.plot:
        write_bytes_atomic(resolve(params.plot), png)
    create_markdown_artifact(decision_report(decision, cut, params.bucket_fractions, selected,
                                             classifier, png),
                             key="quality-filter-report",
                             description="quality pool chosen by the scaling law")
    return selected


@flow(name="quality_filter", log_prints=True)
def quality_filter_flow(params: QualityFilterParams) -> list[StageResult]:
    config, classifier = score_config(params)
    scored = run_stage_task(
        QualityScore, config,
        DatasetInput(params.input, verify=params.runtime.storage.verify_inputs),
        posixpath.join(params.work_dir, "scored"), params.runtime)
    return [scored, cut_and_select(params, scored, classifier)]
