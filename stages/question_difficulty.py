"""Question difficulty (ScaleQuest step 4): score once, then sample to a target mix.

`DifficultyScore` writes a `difficulty` column with a pluggable scorer: a judge LLM that
rates 1-10, or a sequence-classification model by path. `plan_difficulty_sample` is the
driver's barrier step: it reads every score and turns a target distribution over difficulty
bins into per-bin hash thresholds, which `DifficultySample`'s config then carries (so the
decision is in the lineage and the cache key). Rows are ranked inside a bin by a seeded hash
of their id, so each bin keeps an exact, reproducible count.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from gristmill.inference import Generator, GeneratorConfig, ModelPath, load_generator
from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Rejections,
    Split,
    StageConfig,
    require_columns,
    split_by_reasons,
)
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


class DifficultySampleConfig(StageConfig):
    """Carries the sampling decision: bin edges and each bin's hash threshold. The defaults
    (one bin, threshold 1) keep every row: the paper leaves difficulty sampling open."""

    score_column: str = "difficulty"
    edges: list[float] = Field(default_factory=list,
                               description="Inner bin edges; bin b is [edges[b-1], edges[b])")
    thresholds: list[float] = Field(default_factory=lambda: [1.0],
                                    description="Keep a row when its id hash is below this")
    keep_unscored: bool = True
    seed: int = 0

    @field_validator("edges")
    @classmethod
    def _sorted(cls, edges: list[float]) -> list[float]:
        if edges != sorted(edges):
            raise ValueError("edges must be increasing")
        return edges

    @model_validator(mode="after")
    def _one_threshold_per_bin(self) -> DifficultySampleConfig:
        if len(self.thresholds) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges make {len(self.edges) + 1} bins; "
                             f"got {len(self.thresholds)} thresholds")
        return self

    def bin_of(self, score: float) -> int:
        return bisect.bisect_right(self.edges, score)


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


def plan_difficulty_sample(uri: str, edges: list[float], weights: list[float],
                           target_count: int | None = None, seed: int = 0,
                           score_column: str = "difficulty") -> DifficultySampleConfig:
    """Read every score of a committed scored dataset and fix the per-bin thresholds."""
    if len(weights) != len(edges) + 1 or sum(weights) <= 0:
        raise ValueError(f"need {len(edges) + 1} non-negative weights with a positive sum")
    config = DifficultySampleConfig(score_column=score_column, edges=edges,
                                    thresholds=[1.0] * len(weights), seed=seed)
    ids: list[str] = []
    bins: list[int] = []
    for batch in Dataset.open(uri).iter_batches(columns=["id", score_column]):
        for row_id, score in zip(batch.column("id").to_pylist(),
                                 batch.column(score_column).to_pylist(), strict=True):
            if score is not None:
                ids.append(row_id)
                bins.append(config.bin_of(score))
    thresholds, _ = sampling_thresholds(np.array(bins, dtype=int), hash_uniform(ids, seed),
                                        weights, target_count)
    return config.with_(thresholds=thresholds)


class DifficultySample(MapStage[DifficultySampleConfig]):
    name: ClassVar[str] = "difficulty_sample"

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {"id": STRING_TYPES,
                                            self.config.score_column: (pa.float32(),
                                                                       pa.float64())})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        ids = batch.column("id").to_pylist()
        draws = hash_uniform(ids, cfg.seed)
        reasons: list[str | None] = []
        details: list[str | None] = []
        for score, draw in zip(batch.column(cfg.score_column).to_pylist(), draws, strict=True):
            if score is None:
                keep = cfg.keep_unscored
                reasons.append(None if keep else "unscored")
                details.append(None if keep else "no difficulty score")
                continue
            b = cfg.bin_of(score)
            keep = draw < cfg.thresholds[b]
            reasons.append(None if keep else "difficulty_sampled_out")
            details.append(None if keep else f"bin {b} keeps hash < {cfg.thresholds[b]:.4f}")
        return split_by_reasons(batch, reasons, details, self.name)
