"""Question difficulty (ScaleQuest step 4): score once, then sample to a target mix.

`DifficultyScore` writes a `difficulty` column with a pluggable scorer: a judge LLM that
rates 1-10, or a sequence-classification model by path. `DifficultyPlan` is the global step:
it reads every score and turns a target distribution over difficulty bins into per-bin hash
thresholds, one output row per bin, which `DifficultySample`'s config pins by content (so
the decision is in the lineage and the cache key, and the sample applies the plan's own
bins, seed and score column). Rows are ranked inside a bin by a seeded hash of their id, so
each bin keeps an exact, reproducible count.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from gristmill.config import FrozenModel
from gristmill.inference import Generator, GeneratorConfig, ModelPath, load_generator
from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Rejections,
    Split,
    StageConfig,
    StageInputError,
    require_columns,
    split_by_reasons,
)
from gristmill.stages.global_step import DatasetRef, GlobalStep, StepSink
from gristmill.stages.question_columns import (
    EMPTY_QUESTION,
    QuestionConfig,
    QuestionStage,
    overlay_default,
    question_prompts,
)
from gristmill.stages.question_scorer_model import SequenceScorer, check_model_folder
from gristmill.storage.reader import Dataset

RATING_INSTRUCTION = (
    "How hard is the following math problem for a strong high-school student? Answer with a "
    "single whole number from 1 (a one-step exercise) to 10 (an olympiad problem), nothing else."
)
_RATING = re.compile(r"(?<![\d.])(10|[1-9])(?![\d.])")


def parse_rating(reply: str, low: int = 1, high: int = 10) -> int | None:
    """The first whole number in [low, high] the reply gives; None if there is none."""
    for match in _RATING.finditer(reply):
        value = int(match.group(1))
        if low <= value <= high:
            return value
    return None


class DifficultyScoreConfig(QuestionConfig):
    """`scorer=judge` asks `generator`; `scorer=classifier` runs `classifier_path`."""

    scorer: Literal["judge", "classifier"] = "judge"
    generator: GeneratorConfig = GeneratorConfig(do_sample=False, max_new_tokens=8,
                                                 max_prompt_tokens=2048, batch_size=8)
    instruction: str = RATING_INSTRUCTION
    classifier_path: Annotated[str | None, ModelPath()] = Field(
        default=None, description="Sequence-classification model folder (scorer=classifier)")
    require_score: bool = Field(default=True, description="Reject rows the scorer cannot rate")

    @model_validator(mode="after")
    def _classifier_needs_a_model(self) -> DifficultyScoreConfig:
        if self.scorer == "classifier":
            if self.classifier_path is None:
                raise ValueError("scorer=classifier needs classifier_path")
            check_model_folder(self.classifier_path, "classifier_path")
        return self

    @model_validator(mode="before")
    @classmethod
    def _partial_generator(cls, data: Any) -> Any:
        return overlay_default(data, "generator", cls.model_fields["generator"].default)


class DifficultyScore(QuestionStage[DifficultyScoreConfig]):
    name: ClassVar[str] = "difficulty_score"

    ADDED: ClassVar[list[pa.Field]] = [pa.field("difficulty", pa.float32()),
                                       pa.field("difficulty_reply", pa.string())]

    def setup(self) -> None:
        if self.config.scorer == "classifier":
            assert self.config.classifier_path is not None
            self.classifier = SequenceScorer(self.config.classifier_path).load()
        else:
            self.generator: Generator = load_generator(self.config.generator)

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        questions = batch.column(cfg.question_column).to_pylist()
        n = batch.num_rows
        rejects = Rejections(n)
        scores: list[float | None] = [None] * n
        replies: list[str | None] = [None] * n
        if cfg.scorer == "classifier":
            valid = [i for i, q in enumerate(questions) if q and q.strip()]
            for i in set(range(n)) - set(valid):
                rejects[i] = EMPTY_QUESTION
            if valid:
                for i, s in zip(valid, self.classifier.score([questions[i] for i in valid]),
                                strict=True):
                    scores[i] = s
        else:
            fit = question_prompts(
                questions, lambda q: f"{cfg.instruction}\n\nProblem:\n{q}\n\nDifficulty:",
                self.generator, cfg.generator.max_prompt_tokens, rejects)
            order = sorted(fit)
            outputs = self.generator.generate([fit[i] for i in order]) if order else []
            for i, out in zip(order, outputs, strict=True):
                replies[i] = out[0].text.strip()
                rating = parse_rating(replies[i])
                scores[i] = None if rating is None else float(rating)
                if rating is None and cfg.require_score:
                    rejects[i] = "no_difficulty", "the judge gave no rating 1-10"
        return rejects.split(self.with_added(batch, {"difficulty": scores,
                                                     "difficulty_reply": replies}), self.name)


def hash_uniform(ids: list[str], seed: int) -> np.ndarray:
    """A reproducible value in [0, 1) per id: the within-bin sampling order."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8)
                                    .digest(), "big") / 2.0**64 for i in ids])


class DifficultyPlanConfig(FrozenModel):
    """A target mix over difficulty bins: everything the plan's thresholds depend on, and
    everything the sample step needs besides them (bins, seed, score column)."""

    score_column: str = "difficulty"
    edges: list[float] = Field(default_factory=lambda: [4.0, 7.0],
                               description="Inner bin edges (default: 1-3, 4-6, 7-10); "
                                           "bin b is [edges[b-1], edges[b])")
    weights: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.4],
                                 description="Target share per bin")
    target_count: int | None = Field(default=None, ge=0, description="At most this many")
    seed: int = Field(default=0, description="Seeds the id hash that orders rows in a bin")

    @field_validator("edges")
    @classmethod
    def _sorted(cls, edges: list[float]) -> list[float]:
        if edges != sorted(edges):
            raise ValueError("edges must be increasing")
        return edges

    @model_validator(mode="after")
    def _one_weight_per_bin(self) -> DifficultyPlanConfig:
        if len(self.weights) != len(self.edges) + 1 or min(self.weights) < 0 \
                or sum(self.weights) <= 0:
            raise ValueError(f"{len(self.edges)} edges make {len(self.edges) + 1} bins: need "
                             f"as many non-negative weights with a positive sum, got "
                             f"{self.weights}")
        return self

    def bin_of(self, score: float) -> int:
        return bisect.bisect_right(self.edges, score)


class DifficultySampleConfig(StageConfig):
    """Pins the sampling decision: a difficulty_plan output. The default (no plan) keeps
    every row: the paper leaves difficulty sampling open."""

    plan: DatasetRef | None = Field(default=None, description="A difficulty_plan output: "
                                                              "one hash threshold per bin")
    keep_unscored: bool = True


def sampling_thresholds(bins: np.ndarray, order: np.ndarray, weights: list[float],
                        target_count: int | None) -> tuple[list[float], list[int]]:
    """Per-bin hash thresholds that keep `weights`-proportional counts, as many in all as the
    scarcest wanted bin allows (or `target_count`, if fewer). Returns thresholds and counts."""
    counts = np.bincount(bins, minlength=len(weights))[:len(weights)]
    share = np.asarray(weights, dtype=float)
    share = share / share.sum()
    wanted = share > 0
    if not (counts[wanted] > 0).all():
        share = np.where(counts > 0, share, 0.0)  # an empty bin cannot be filled: drop it
        share = share / share.sum() if share.sum() > 0 else share
        wanted = share > 0
    total = float((counts[wanted] / share[wanted]).min()) if wanted.any() else 0.0
    if target_count is not None:
        total = min(total, float(target_count))
    keep = np.floor(total * share + 1e-9).astype(int)
    thresholds = []
    for b, k in enumerate(keep):
        values = np.sort(order[bins == b])
        thresholds.append(1.0 if k >= len(values) else float(values[k]) if k > 0 else 0.0)
    return thresholds, keep.tolist()


PLAN_SCHEMA = pa.schema([
    pa.field("bin", pa.int32()), pa.field("low", pa.float64()), pa.field("high", pa.float64()),
    pa.field("weight", pa.float64()), pa.field("threshold", pa.float64()),
    pa.field("scored", pa.int64()), pa.field("kept", pa.int64())])
"""One row per bin: its bounds (null = open), target share, the hash threshold the sample
step applies, and how many scored rows it holds and keeps."""


class DifficultyPlan(GlobalStep[DifficultyPlanConfig]):
    """The barrier: reads every score of the committed scored dataset and fixes the
    per-bin thresholds."""

    name: ClassVar[str] = "difficulty_plan"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        if len(inputs) != 1:
            raise StageInputError(f"{self.name} reads one scored dataset, got {len(inputs)}")
        require_columns(inputs[0].schema, self.name, {
            "id": STRING_TYPES, self.config.score_column: (pa.float32(), pa.float64())})
        return PLAN_SCHEMA

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        cfg = self.config
        ids, bins = self.scored_bins(inputs[0], sink)
        thresholds, kept = sampling_thresholds(bins, hash_uniform(ids, cfg.seed), cfg.weights,
                                               cfg.target_count)
        bounds: list[float | None] = [None, *cfg.edges, None]
        sink.write(pa.table({
            "bin": list(range(len(cfg.weights))), "low": bounds[:-1], "high": bounds[1:],
            "weight": cfg.weights, "threshold": thresholds,
            "scored": np.bincount(bins, minlength=len(cfg.weights)).tolist(), "kept": kept},
            schema=PLAN_SCHEMA))
        return {"scored": len(ids), "unscored": inputs[0].num_rows - len(ids),
                "kept": sum(kept)}

    def scored_bins(self, dataset: Dataset, sink: StepSink) -> tuple[list[str], np.ndarray]:
        """Ids and bins of the rows with a score; unscored rows are the sample's
        `keep_unscored` call, not the plan's."""
        column = self.config.score_column
        ids: list[str] = []
        bins: list[int] = []
        task = sink.progress.add_task(self.name, total=dataset.num_rows)
        for batch in dataset.iter_batches(columns=["id", column]):
            for row_id, score in zip(batch.column("id").to_pylist(),
                                     batch.column(column).to_pylist(), strict=True):
                if score is not None:
                    ids.append(row_id)
                    bins.append(self.config.bin_of(score))
            sink.progress.advance(task, batch.num_rows)
        return ids, np.array(bins, dtype=int)


class SamplingPlan(NamedTuple):
    """What the sample step applies: the plan's target (bins, seed, score column) and the
    hash threshold of each bin."""

    target: DifficultyPlanConfig
    thresholds: list[float]


KEEP_ALL = SamplingPlan(DifficultyPlanConfig(edges=[], weights=[1.0]), [1.0])


def load_sampling_plan(ref: DatasetRef | None) -> SamplingPlan:
    """The pinned plan (`DatasetRef.open` refuses one whose content changed), with the
    target it was planned with from its lineage, so the sample cannot bin or hash
    differently from the plan."""
    if ref is None:
        return KEEP_ALL
    plan = ref.open()
    lineage = plan.manifest.lineage
    if lineage is None or lineage.stage != DifficultyPlan.name:
        raise StageInputError(f"{plan.uri} is not a {DifficultyPlan.name} output: plan again "
                              "with DifficultyPlan")
    target = DifficultyPlanConfig.model_validate(lineage.config)
    table = plan.to_table(columns=["bin", "threshold"]).sort_by("bin")
    return SamplingPlan(target, table.column("threshold").to_pylist())


class DifficultySample(MapStage[DifficultySampleConfig]):
    name: ClassVar[str] = "difficulty_sample"

    @cached_property
    def plan(self) -> SamplingPlan:
        """Loaded on first use: by `check_input` on the driver, so a changed plan is refused
        before any work, and in each worker."""
        return load_sampling_plan(self.config.plan)

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {"id": STRING_TYPES,
                                            self.plan.target.score_column: (pa.float32(),
                                                                            pa.float64())})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema

    def process(self, batch: pa.Table) -> Split:
        target, thresholds = self.plan
        draws = hash_uniform(batch.column("id").to_pylist(), target.seed)
        reasons: list[str | None] = []
        details: list[str | None] = []
        for score, draw in zip(batch.column(target.score_column).to_pylist(), draws,
                               strict=True):
            if score is None:
                keep = self.config.keep_unscored
                reasons.append(None if keep else "unscored")
                details.append(None if keep else "no difficulty score")
                continue
            b = target.bin_of(score)
            keep = draw < thresholds[b]
            reasons.append(None if keep else "difficulty_sampled_out")
            details.append(None if keep else f"bin {b} keeps hash < {thresholds[b]:.4f}")
        return split_by_reasons(batch, reasons, details, self.name)
