"""What the ScaleQuest question stages share: the question column, derived ids, prompts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pyarrow as pa

from gristmill.stages.base import (
    STRING_TYPES,
    AddColumnsStage,
    ColumnTypes,
    Rejections,
    StageConfig,
    require_columns,
)

EMPTY_QUESTION = ("empty_question", "the question is empty")


class QuestionConfig(StageConfig):
    """The question column's name, the same knob in every ScaleQuest stage."""

    question_column: str = "question"


QuestionConfigT = TypeVar("QuestionConfigT", bound=QuestionConfig)


class QuestionStage(AddColumnsStage[QuestionConfigT]):
    """A stage that reads the question column, plus the `NEEDS` columns (name: types)."""

    NEEDS: ClassVar[ColumnTypes] = {}

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name,
                        {self.config.question_column: STRING_TYPES, **self.NEEDS})


def derived_id(parent: str | None, text: str) -> str:
    """A stable id for a row made from `parent`: two generations of the same text from
    different seeds stay distinct rows (exact dedup, not the id, decides which survives)."""
    return hashlib.blake2b(f"{parent or ''}\n{text}".encode(), digest_size=16).hexdigest()


def prompts_that_fit(generator: Any, prompts: dict[int, str],
                     limit: int) -> tuple[dict[int, str], dict[int, int]]:
    """Split prompts into those within `limit` tokens and the token counts of the rest, so an
    over-long question is a rejected row instead of an error for the whole batch."""
    order = sorted(prompts)
    counts = generator.count_tokens([prompts[i] for i in order]) if order else []
    fit = {i: prompts[i] for i, c in zip(order, counts, strict=True) if c <= limit}
    over = {i: c for i, c in zip(order, counts, strict=True) if c > limit}
    return fit, over


def question_prompts(questions: list[str | None], prompt: Callable[[str], str],
                     generator: Any, limit: int, rejects: Rejections) -> dict[int, str]:
    """Prompts by row for the questions that are non-empty and fit in `limit` tokens; the
    other rows are rejected (empty_question, prompt_too_long)."""
    prompts = {}
    for i, question in enumerate(questions):
        if question is None or not question.strip():
            rejects[i] = EMPTY_QUESTION
        else:
            prompts[i] = prompt(question)
    fit, over = prompts_that_fit(generator, prompts, limit)
    for i, count in over.items():
        rejects[i] = "prompt_too_long", f"{count} tokens > max_prompt_tokens {limit}"
    return fit


def overlay_default(data: Any, field: str, default: Any) -> Any:
    """Fill a partly given nested config (e.g. `generator: {max_new_tokens: 64}` in YAML)
    from the stage's own default instead of the bare model's, so the paper's decoding
    settings survive an override of one knob."""
    if isinstance(data, dict) and isinstance(data.get(field), dict):
        return {**data, field: {**default.model_dump(), **data[field]}}
    return data
