"""Flow: math questions from scratch, filtered, deduplicated, answered and selected
(ScaleQuest), with a funnel report.

Every step writes its own dataset under `output` (generated, language, solvable, difficulty,
dedup, answered, selected, plus the scored intermediates and the plans of the two global
steps: difficulty_scored, difficulty_plan, dedup_scored, dedup_plan), so any step can be
inspected or re-run alone; every drop sits in that step's rejected/ with its reason. The
plans run as Prefect tasks of their own (`run_step_task`), with a report each.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.report import funnel_report
from gristmill.flows.stage_task import run_stage_task, run_step_task
from gristmill.stages.answer_select import AnswerSelect, AnswerSelectConfig
from gristmill.stages.base import DatasetInput
from gristmill.stages.math_responses import MathResponses, MathResponsesConfig
from gristmill.stages.question_dedup import (
    QuestionDedupPlan,
    QuestionDedupPlanConfig,
    QuestionDedupScore,
    QuestionDedupScoreConfig,
    QuestionDedupSelect,
    QuestionDedupSelectConfig,
)
from gristmill.stages.question_difficulty import (
    DifficultyPlan,
    DifficultyPlanConfig,
    DifficultySample,
    DifficultySampleConfig,
    DifficultyScore,
    DifficultyScoreConfig,
)
from gristmill.stages.question_filters import (
    QuestionLanguage,
    QuestionLanguageConfig,
    Solvability,
    SolvabilityConfig,
)
from gristmill.stages.question_gen import QuestionGen, QuestionGenConfig, SeedRowsInput, SeedSpec
from gristmill.stages.runner import StageResult
from gristmill.storage.fs import resolve

FUNNEL = ("generated", "language", "solvable", "difficulty", "dedup", "answered", "selected")


class SynthesizeQuestionsParams(FrozenModel):
    output: str = Field(default=".gristmill/scalequest", description="Folder for every step")
    seeds: SeedSpec = SeedSpec()
    generate: QuestionGenConfig = QuestionGenConfig()
    language: QuestionLanguageConfig = QuestionLanguageConfig()
    solvability: SolvabilityConfig = SolvabilityConfig()
    difficulty: DifficultyScoreConfig = DifficultyScoreConfig()
    difficulty_target: DifficultyPlanConfig | None = Field(
        default=None, description="A target mix over difficulty bins; unset = keep every "
                                  "scored question")
    dedup: QuestionDedupScoreConfig = QuestionDedupScoreConfig()
    near_duplicate_threshold: float = Field(default=0.7, gt=0, le=1,
                                            description="MinHash Jaccard for near duplicates")
    decontaminate: QuestionDedupSelectConfig = QuestionDedupSelectConfig()
    responses: MathResponsesConfig = MathResponsesConfig()
    select: AnswerSelectConfig = AnswerSelectConfig()
    runtime: RuntimeConfig = RuntimeConfig()


def _path(params: SynthesizeQuestionsParams, step: str) -> str:
    return resolve(params.output).join(step).uri()


def _input(uri: str, params: SynthesizeQuestionsParams) -> DatasetInput:
    return DatasetInput(uri, verify=params.runtime.storage.verify_inputs)


@flow(name="synthesize_questions", log_prints=True)
def synthesize_questions_flow(params: SynthesizeQuestionsParams) -> dict[str, StageResult]:
    rt = params.runtime
    results: dict[str, StageResult] = {}
    results["generated"] = run_stage_task(QuestionGen, params.generate,
                                          SeedRowsInput(params.seeds),
                                          _path(params, "generated"), rt)
    chain = [("language", QuestionLanguage, params.language),
             ("solvable", Solvability, params.solvability)]
    previous = results["generated"].output
    for step, stage, config in chain:
        results[step] = run_stage_task(stage, config, _input(previous, params),
                                       _path(params, step), rt)
        previous = results[step].output
    results["difficulty"] = _difficulty(params, previous)
    results["dedup"] = _dedup(params, results["difficulty"].output)
    results["answered"] = run_stage_task(MathResponses, params.responses,
                                         _input(results["dedup"].output, params),
                                         _path(params, "answered"), rt)
    results["selected"] = run_stage_task(AnswerSelect, params.select,
                                         _input(results["answered"].output, params),
                                         _path(params, "selected"), rt)
    create_markdown_artifact(funnel_report(results, params.seeds.count),
                             key="synthesize-questions-funnel",
                             description="ScaleQuest: rows left after each step")
    return results


def _difficulty(params: SynthesizeQuestionsParams, questions: str) -> StageResult:
    """Score, plan the target mix over the whole scored dataset (if one is set), sample."""
    rt = params.runtime
    scored = run_stage_task(DifficultyScore, params.difficulty, _input(questions, params),
                            _path(params, "difficulty_scored"), rt)
    sample = DifficultySampleConfig()
    if params.difficulty_target is not None:
        plan = run_step_task(DifficultyPlan(params.difficulty_target), [scored.output],
                             _path(params, "difficulty_plan"), rt)
        sample = sample.with_(plan=plan.ref)
    difficulty = run_stage_task(DifficultySample, sample, _input(scored.output, params),
                                _path(params, "difficulty"), rt)
    return _merged(scored, difficulty)


def _dedup(params: SynthesizeQuestionsParams, questions: str) -> StageResult:
    """Score, plan the drop list over the whole scored dataset with the select step's own
    decontamination thresholds, select."""
    rt = params.runtime
    scored = run_stage_task(QuestionDedupScore, params.dedup, _input(questions, params),
                            _path(params, "dedup_scored"), rt)
    plan_config = QuestionDedupPlanConfig(
        near_duplicate_threshold=params.near_duplicate_threshold,
        **params.decontaminate.thresholds())
    plan = run_step_task(QuestionDedupPlan(plan_config), [scored.output],
                         _path(params, "dedup_plan"), rt)
    dedup = run_stage_task(QuestionDedupSelect, params.decontaminate.with_(drops=plan.ref),
                           _input(scored.output, params), _path(params, "dedup"), rt)
    return _merged(scored, dedup)


def _merged(score: StageResult, select: StageResult) -> StageResult:
    """A score pass and its select pass as one funnel step: in = what the scorer read,
    out = what the selector kept, rejects and reasons from both."""
    reasons = dict(score.stats.reject_reasons)
    for key, value in select.stats.reject_reasons.items():
        reasons[key] = reasons.get(key, 0) + value
    stats = select.stats.model_copy(update={
        "rows_in": score.stats.rows_in,
        "rows_rejected": score.stats.rows_rejected + select.stats.rows_rejected,
        "reject_reasons": reasons})
    return select.model_copy(update={"stats": stats})
