"""math_responses: n sampled step-by-step solutions per question (ScaleQuest step 6).

Defaults follow the paper: 5 samples at T=0.7, top_p=0.95, up to 2048 new tokens, a prompt
asking for step-by-step reasoning with the final answer in \\boxed{}. Samples are seeded
from the question's id, so a rerun regenerates the same responses. A sample that runs out of
tokens or gives no final answer is dropped from the row (counted in `responses_dropped`); a
question left with no answered sample is a rejected row with reason `no_answer`.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.inference import Generator, GeneratorConfig, load_generator
from gristmill.scoring.math_answers import extract_answer
from gristmill.stages.base import STRING_TYPES, ColumnTypes, Rejections, Split
from gristmill.stages.question_columns import (
    QuestionConfig,
    QuestionStage,
    overlay_default,
    question_prompts,
)

SOLVE_INSTRUCTION = (
    "Solve the math problem below. Work through it step by step, explaining each step, and "
    "write the final answer at the end inside \\boxed{}."
)


def solve_prompt(question: str, instruction: str = SOLVE_INSTRUCTION) -> str:
    return f"{instruction}\n\nProblem: {question}"


def row_seed(row_id: str) -> int:
    """A 63-bit seed from the row's id: the same question always samples the same way."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class MathResponsesConfig(QuestionConfig):
    generator: GeneratorConfig = GeneratorConfig(
        do_sample=True, temperature=0.7, top_p=0.95, num_return_sequences=5,
        max_new_tokens=2048, max_prompt_tokens=2048, batch_size=4)
    instruction: str = SOLVE_INSTRUCTION
    keep_unfinished: bool = Field(
        default=False, description="Keep samples cut at max_new_tokens if they hold an answer")

    @model_validator(mode="before")
    @classmethod
    def _partial_generator(cls, data: Any) -> Any:
        return overlay_default(data, "generator", cls.model_fields["generator"].default)


class MathResponses(QuestionStage[MathResponsesConfig]):
    name: ClassVar[str] = "math_responses"

    NEEDS: ClassVar[ColumnTypes] = {"id": STRING_TYPES}

    ADDED: ClassVar[list[pa.Field]] = [
        pa.field("responses", pa.list_(pa.string())),
        pa.field("answers", pa.list_(pa.string())),
        pa.field("response_tokens", pa.list_(pa.int32())),
        pa.field("responses_dropped", pa.int32()),
        pa.field("drop_reasons", pa.string())]

    def setup(self) -> None:
        self.generator: Generator = load_generator(self.config.generator)

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        ids = batch.column("id").to_pylist()
        n = batch.num_rows
        rejects = Rejections(n)
        values: dict[str, list] = {f.name: [None] * n for f in self.ADDED}
        fit = question_prompts(batch.column(cfg.question_column).to_pylist(),
                               lambda q: solve_prompt(q, cfg.instruction), self.generator,
                               cfg.generator.max_prompt_tokens, rejects)
        order = sorted(fit)
        if order:
            outputs = self.generator.generate([fit[i] for i in order],
                                              seeds=[row_seed(ids[i] or "") for i in order])
            for i, samples in zip(order, outputs, strict=True):
                self._keep_answered(i, samples, values)
                if not values["responses"][i]:
                    rejects[i] = "no_answer", (f"none of {len(samples)} samples gave a final "
                                               f"answer ({values['drop_reasons'][i]})")
        return rejects.split(self.with_added(batch, values), self.name)

    def _keep_answered(self, i: int, samples: list, values: dict[str, list]) -> None:
        kept_text, kept_answer, kept_tokens, dropped = [], [], [], []
        for sample in samples:
            answer = extract_answer(sample.text)
            if sample.finish_reason == "length" and not self.config.keep_unfinished:
                dropped.append("runaway")
            elif answer is None:
                dropped.append("no_boxed_answer")
            else:
                kept_text.append(sample.text.strip())
                kept_answer.append(answer)
                kept_tokens.append(sample.tokens)
        values["responses"][i], values["answers"][i] = kept_text, kept_answer
        values["response_tokens"][i] = kept_tokens
        values["responses_dropped"][i] = len(dropped)
        values["drop_reasons"][i] = ",".join(dropped) if dropped else None
