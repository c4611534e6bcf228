"""Flow: math questions from scratch, filtered, deduplicated, answered and selected
(ScaleQuest), with a funnel report.

Every step writes its own dataset under `output` (generated, language, solvable, difficulty,
dedup, answered, selected, plus the scored intermediates of the two barrier steps), so any
step can be inspected or re-run alone; every drop sits in that step's rejected/ with its
reason.
"""

from __future__ import annotations

import io

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.plots import markdown_image
from gristmill.flows.report import cell
from gristmill.flows.stage_task import run_stage_cached
from gristmill.stages.answer_select import AnswerSelect, AnswerSelectConfig
from gristmill.stages.base import DatasetInput
from gristmill.stages.math_responses import MathResponses, MathResponsesConfig
from gristmill.stages.question_dedup import (
    QuestionDedupScore,
    QuestionDedupScoreConfig,
    QuestionDedupSelect,
    QuestionDedupSelectConfig,
    plan_question_dedup,
)
from gristmill.stages.question_difficulty import (
    DifficultySample,
    DifficultySampleConfig,
    DifficultyScore,
    DifficultyScoreConfig,
    plan_difficulty_sample,
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
from gristmill.storage.reader import Dataset

FUNNEL = ("generated", "language", "solvable", "difficulty", "dedup", "answered", "selected")
SAMPLES = 5


class DifficultyTarget(FrozenModel):
    """A target mix over difficulty bins; unset = keep every scored question."""

    edges: list[float] = Field(default_factory=lambda: [4.0, 7.0],
                               description="Inner bin edges (default: 1-3, 4-6, 7-10)")
    weights: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.4],
                                 description="Target share per bin")
    target_count: int | None = Field(default=None, ge=0, description="At most this many")
    seed: int = 0


class SynthesizeQuestionsParams(FrozenModel):
    output: str = Field(default=".gristmill/scalequest", description="Folder for every step")
    seeds: SeedSpec = SeedSpec()
    generate: QuestionGenConfig = QuestionGenConfig()
    language: QuestionLanguageConfig = QuestionLanguageConfig()
    solvability: SolvabilityConfig = SolvabilityConfig()
    difficulty: DifficultyScoreConfig = DifficultyScoreConfig()
    difficulty_target: DifficultyTarget | None = None
    dedup: QuestionDedupScoreConfig = QuestionDedupScoreConfig()
    near_duplicate_threshold: float = Field(default=0.7, gt=0, le=1,
                                            description="MinHash Jaccard for near duplicates")
    decontaminate: QuestionDedupSelectConfig = QuestionDedupSelectConfig()
    responses: MathResponsesConfig = MathResponsesConfig()
    select: AnswerSelectConfig = AnswerSelectConfig()
    runtime: RuntimeConfig = RuntimeConfig()


def _path(params: SynthesizeQuestionsParams, step: str) -> str:
    return resolve(params.output).join(step).uri()


def funnel_rows(results: dict[str, StageResult]) -> list[tuple[str, int, int, int, dict]]:
    """(step, rows in, rows out, rows rejected, reasons) in funnel order."""
    return [(step, r.stats.rows_in, r.stats.rows_out, r.stats.rows_rejected,
             r.stats.reject_reasons) for step, r in results.items()]


def funnel_png(rows: list[tuple[str, int, int, int, dict]], requested: int) -> bytes:
    """Rows left after each step, as horizontal bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["requested", *(r[0] for r in rows)]
    counts = [requested, *(r[2] for r in rows)]
    figure, axis = plt.subplots(figsize=(7, 3.6), dpi=110)
    bars = axis.barh(names[::-1], counts[::-1], color="#4c72b0")
    axis.bar_label(bars, padding=3)
    axis.set_xlabel("questions")
    axis.set_title("ScaleQuest funnel")
    axis.set_xlim(0, max(max(counts), 1) * 1.15)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def funnel_report(results: dict[str, StageResult], requested: int) -> str:
    rows = funnel_rows(results)
    lines = ["# synthesize_questions", "",
             "| step | in | out | rejected | reasons |", "|---|---:|---:|---:|---|"]
    for step, rows_in, rows_out, rejected, reasons in rows:
        why = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-"
        lines.append(f"| {step} | {rows_in:,} | {rows_out:,} | {rejected:,} | {why} |")
    lines += ["", markdown_image(funnel_png(rows, requested), "funnel"), ""]
    selected = Dataset.open(results["selected"].output)
    if selected.num_rows:
        lines += ["| question | answer | votes | response |", "|---|---|---:|---|"]
        table = next(selected.iter_batches(columns=["question", "answer", "votes", "response"]))
        for row in table.slice(0, SAMPLES).to_pylist():
            lines.append(f"| {cell(row['question'])} | {cell(row['answer'])} | "
                         f"{row['votes']} | {cell(row['response'])} |")
    return "\n".join(lines) + "\n"


def _input(uri: str, params: SynthesizeQuestionsParams) -> DatasetInput:
    return DatasetInput(uri, verify=params.runtime.storage.verify_inputs)


@flow(name="synthesize_questions", log_prints=True)
def synthesize_questions_flow(params: SynthesizeQuestionsParams) -> dict[str, StageResult]:
    rt = params.runtime
    results: dict[str, StageResult] = {}
    results["generated"] = run_stage_cached(QuestionGen, params.generate,
                                            SeedRowsInput(params.seeds),
                                            _path(params, "generated"), rt)
    chain = [("language", QuestionLanguage, params.language),
             ("solvable", Solvability, params.solvability)]
    previous = results["generated"].output
    for step, stage, config in chain:
        results[step] = run_stage_cached(stage, config, _input(previous, params),
                                         _path(params, step), rt)
        previous = results[step].output

    scored = run_stage_cached(DifficultyScore, params.difficulty, _input(previous, params),
                              _path(params, "difficulty_scored"), rt)
    target = params.difficulty_target
    sample = plan_difficulty_sample(scored.output, target.edges, target.weights,
                                    target.target_count, target.seed) if target else None
    difficulty = run_stage_cached(DifficultySample, sample or DifficultySampleConfig(),
                                  _input(scored.output, params), _path(params, "difficulty"), rt)
    results["difficulty"] = _merged(scored, difficulty)

    dedup_scored = run_stage_cached(QuestionDedupScore, params.dedup,
                                    _input(difficulty.output, params),
                                    _path(params, "dedup_scored"), rt)
    select = plan_question_dedup(dedup_scored.output,
                                 resolve(params.output).join("dedup_drops.json").uri(),
                                 params.near_duplicate_threshold, params.decontaminate)
    dedup = run_stage_cached(QuestionDedupSelect, select, _input(dedup_scored.output, params),
                             _path(params, "dedup"), rt)
    results["dedup"] = _merged(dedup_scored, dedup)

    results["answered"] = run_stage_cached(MathResponses, params.responses,
                                           _input(dedup.output, params),
                                           _path(params, "answered"), rt)
    results["selected"] = run_stage_cached(AnswerSelect, params.select,
                                           _input(results["answered"].output, params),
                                           _path(params, "selected"), rt)
    create_markdown_artifact(funnel_report(results, params.seeds.count),
                             key="synthesize-questions-funnel",
                             description="ScaleQuest: rows left after each step")
    return results


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
