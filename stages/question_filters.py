"""Question filters of ScaleQuest: language (step 2) and solvability by a judge (step 3).

The language filter keeps non-empty, pure-ASCII questions (the paper's rule), with fastText
language ID as an extra option. The solvability judge is asked, as a math teacher, whether
the text is a math problem that can be solved from its own conditions, reasoning step by step
and ending with Yes or No; decoding is greedy (T=0). Its reasoning is kept in a column, and
its verdict is parsed from explicit answer markers first, then the last line.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.inference import Generator, GeneratorConfig, load_generator
from gristmill.scoring.language_id import LanguageIdentifier
from gristmill.stages.base import Rejections, Split, split_by_reasons
from gristmill.stages.question_columns import (
    QuestionConfig,
    QuestionStage,
    overlay_default,
    question_prompts,
)


class QuestionLanguageConfig(QuestionConfig):
    """ASCII by default (paper); `languages` adds a fastText check."""

    require_ascii: bool = True
    languages: list[str] | None = Field(
        default=None, description="Keep only these fastText codes, e.g. ['en']; None = off")
    min_language_score: float = Field(default=0.65, ge=0, le=1)
    language_id_chars: int = Field(default=80, ge=1, description="Characters fed to fastText")


class QuestionLanguage(QuestionStage[QuestionLanguageConfig]):
    name: ClassVar[str] = "question_language"

    def setup(self) -> None:
        self._language_id = None
        if self.config.languages is not None:
            self._language_id = LanguageIdentifier(self.config.language_id_chars)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema

    def process(self, batch: pa.Table) -> Split:
        verdicts = [self.judge(t) for t in batch.column(self.config.question_column).to_pylist()]
        return split_by_reasons(batch, [v[0] for v in verdicts], [v[1] for v in verdicts],
                                self.name)

    def judge(self, text: str | None) -> tuple[str | None, str | None]:
        cfg = self.config
        if text is None or not text.strip():
            return "empty_question", "the question is empty"
        if cfg.require_ascii and not text.isascii():
            bad = next(c for c in text if not c.isascii())
            return "non_ascii", f"contains {bad!r} (U+{ord(bad):04X})"
        if self._language_id is not None and cfg.languages is not None:
            lang, score = self._language_id.identify(text)
            if lang not in cfg.languages or score < cfg.min_language_score:
                return "language", f"{lang} ({score:.2f}); wanted {cfg.languages}"
        return None, None


JUDGE_INSTRUCTION = (
    "You are a math teacher checking a text a student handed in. Decide two things: is the "
    "text a math problem, and can it be solved using only the conditions it states (nothing "
    "missing, nothing contradictory)? Think it through step by step, then finish with a last "
    "line that says only Yes (a solvable math problem) or No (anything else)."
)

_MARKED = re.compile(
    r"(?:final answer|answer|verdict|conclusion|decision)\s*(?:is)?\s*[:\-]?\s*[*_\"']*\s*"
    r"(yes|no)\b", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*(yes|no)\b", re.IGNORECASE)
_LINE = re.compile(r"^[\W_]*(yes|no)\b", re.IGNORECASE)


def judge_prompt(question: str, instruction: str = JUDGE_INSTRUCTION) -> str:
    return f"{instruction}\n\nText:\n{question}\n\nReasoning:"


def parse_verdict(reply: str) -> bool | None:
    """True for yes, False for no, None when the reply commits to neither. An explicit
    marker ('Answer: No', '\\boxed{Yes}') wins over a bare last line starting Yes/No."""
    for pattern in (_BOXED, _MARKED):
        found = pattern.findall(reply)
        if found:
            return found[-1].lower() == "yes"
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    last = _LINE.match(lines[-1]) if lines else None
    return None if last is None else last.group(1).lower() == "yes"


class SolvabilityConfig(QuestionConfig):
    """The judge model and prompt; `enforce=false` records verdicts but drops nothing."""

    generator: GeneratorConfig = GeneratorConfig(do_sample=False, max_new_tokens=512,
                                                 max_prompt_tokens=2048, batch_size=8)
    instruction: str = JUDGE_INSTRUCTION
    enforce: bool = Field(default=True, description="Reject 'No' and verdict-less rows")

    @model_validator(mode="before")
    @classmethod
    def _partial_generator(cls, data: Any) -> Any:
        return overlay_default(data, "generator", cls.model_fields["generator"].default)


class Solvability(QuestionStage[SolvabilityConfig]):
    name: ClassVar[str] = "solvability"

    ADDED: ClassVar[list[pa.Field]] = [pa.field("solvable", pa.bool_()),
                                       pa.field("solvable_reasoning", pa.string())]

    def setup(self) -> None:
        self.generator: Generator = load_generator(self.config.generator)

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        n = batch.num_rows
        rejects = Rejections(n)
        verdicts: list[bool | None] = [None] * n
        replies: list[str | None] = [None] * n
        fit = question_prompts(batch.column(cfg.question_column).to_pylist(),
                               lambda q: judge_prompt(q, cfg.instruction), self.generator,
                               cfg.generator.max_prompt_tokens, rejects)
        order = sorted(fit)
        for i, out in zip(order, self.generator.generate([fit[i] for i in order]), strict=True):
            replies[i] = out[0].text.strip()
            verdicts[i] = parse_verdict(replies[i])
            if cfg.enforce and verdicts[i] is None:
                rejects[i] = "no_verdict", "the judge answered neither yes nor no"
            elif cfg.enforce and not verdicts[i]:
                rejects[i] = "unsolvable", "the judge said no"
        return rejects.split(self.with_added(batch, {"solvable": verdicts,
                                                     "solvable_reasoning": replies}), self.name)
