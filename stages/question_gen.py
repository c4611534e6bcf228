"""question_gen: an instruct model writes math questions from scratch (ScaleQuest step 1).

The prompt is only the chat template's opening up to where a user message starts (derived
from the model's own template, see scoring/chat_prefix.py), sent as raw text, so the model
writes a user's question itself. Sampling follows the paper: T=1.0, top_p=0.99, up to 1024
new tokens, stopping at the end-of-turn marker. Each input row is one request with its own
seed, so any question can be regenerated alone. A generation that is empty or never ends its
turn (runaway text) is a rejected row with its reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.config import FrozenModel
from gristmill.inference import Generator, GeneratorConfig, load_generator
from gristmill.inference.models import load_tokenizer, resolve_generator_source
from gristmill.scoring.chat_prefix import end_of_turn_strings, user_turn_prefix
from gristmill.stages.base import (
    STRING_TYPES,
    AddColumnsStage,
    Digest,
    Rejections,
    Split,
    WorkUnit,
    require_columns,
)
from gristmill.stages.question_columns import QuestionConfig, derived_id, overlay_default
from gristmill.storage.manifest import InputRef, canonical_json

SEED_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("seed", pa.int64())])


class SeedSpec(FrozenModel):
    """How many generation requests, their seeds, and how they are cut into work units."""

    count: int = Field(default=64, ge=1, description="Questions requested (N)")
    first_seed: int = Field(default=0, ge=0, description="Request i samples with seed first+i")
    rows_per_unit: int = Field(default=256, ge=1, description="Requests per work unit")


class SeedRowsInput:
    """N seed rows made on the fly: the input of a from-scratch generation stage. Its
    input ref hashes the spec, so the same spec is the same input for caching."""

    def __init__(self, spec: SeedSpec) -> None:
        self.spec = spec

    def units(self) -> list[WorkUnit]:
        spec = self.spec
        starts = range(0, spec.count, spec.rows_per_unit)
        return [WorkUnit(index=i, uri=f"seeds:{start}", rows=min(spec.rows_per_unit,
                                                                   spec.count - start))
                for i, start in enumerate(starts)]

    def refs(self) -> list[InputRef]:
        payload = canonical_json(self.spec.model_dump(mode="json"))
        return [InputRef(uri=f"seeds:{payload}",
                         content_sha256=hashlib.sha256(payload.encode()).hexdigest())]

    def schema(self) -> pa.Schema:
        return SEED_SCHEMA

    def read_unit(self, unit: WorkUnit, batch_rows: int,
                  digest: Digest | None = None) -> Iterator[pa.Table]:
        first = self.spec.first_seed + unit.index * self.spec.rows_per_unit
        seeds = list(range(first, first + (unit.rows or 0)))
        if digest is not None:
            digest.update(f"seeds {first}-{first + len(seeds)}".encode())
        for offset in range(0, len(seeds), batch_rows):
            chunk = seeds[offset:offset + batch_rows]
            ids = [hashlib.blake2b(f"scalequest-seed:{s}".encode(), digest_size=16).hexdigest()
                   for s in chunk]
            yield pa.table({"id": ids, "seed": chunk}, schema=SEED_SCHEMA)


class QuestionGenConfig(QuestionConfig):
    """Sampling and guards for from-scratch generation; defaults follow the paper."""

    generator: GeneratorConfig = GeneratorConfig(
        use_chat_template=False, do_sample=True, temperature=1.0, top_p=0.99,
        max_new_tokens=1024, batch_size=8)
    system_prompt: str | None = Field(
        default=None, description="System message in the prefix; None = the template's own")
    min_chars: int = Field(default=1, ge=1, description="Shorter questions are rejected")
    keep_unfinished: bool = Field(
        default=False, description="Keep questions cut at max_new_tokens (else 'runaway')")

    @model_validator(mode="before")
    @classmethod
    def _partial_generator(cls, data: Any) -> Any:
        return overlay_default(data, "generator", cls.model_fields["generator"].default)


class QuestionGen(AddColumnsStage[QuestionGenConfig]):
    name: ClassVar[str] = "question_gen"

    ADDED: ClassVar[list[pa.Field]] = [
        pa.field("parent_id", pa.string()), pa.field("gen_tokens", pa.int32()),
        pa.field("finish_reason", pa.string())]

    def setup(self) -> None:
        cfg = self.config.generator
        tokenizer = load_tokenizer(resolve_generator_source(cfg), cfg.gguf_cache_dir)
        self.prefix = user_turn_prefix(tokenizer, self.config.system_prompt)
        stop = [*self.config.generator.stop, *end_of_turn_strings(tokenizer)]
        self.generator: Generator = load_generator(
            self.config.generator.with_(stop=list(dict.fromkeys(stop))))

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {"id": STRING_TYPES,
                                            "seed": (pa.int64(), pa.int32())})

    def added(self) -> list[pa.Field]:
        return [pa.field(self.config.question_column, pa.string()), *self.ADDED]

    def process(self, batch: pa.Table) -> Split:
        parents = batch.column("id").to_pylist()
        seeds = batch.column("seed").to_pylist()
        n = batch.num_rows
        rejects = Rejections(n)
        questions: list[str | None] = [None] * n
        tokens: list[int | None] = [None] * n
        finishes: list[str | None] = [None] * n
        todo = [i for i in range(n) if seeds[i] is not None]
        for i in range(n):
            if seeds[i] is None:
                rejects[i] = "no_seed", "the request row has no seed"
        if todo:
            prompts = [self.prefix] * len(todo)
            outputs = self.generator.generate(prompts, seeds=[seeds[i] for i in todo])
            for i, out in zip(todo, outputs, strict=True):
                text = out[0].text.strip()
                questions[i], tokens[i], finishes[i] = text, out[0].tokens, out[0].finish_reason
                rejects[i] = self.verdict(text, out[0].finish_reason)
        ids = [derived_id(p, q or "") for p, q in zip(parents, questions, strict=True)]
        values = {self.config.question_column: questions, "parent_id": parents,
                  "gen_tokens": tokens, "finish_reason": finishes}
        at = batch.column_names.index("id")
        table = self.with_added(batch.set_column(at, "id", pa.array(ids, pa.string())), values)
        return rejects.split(table, self.name)

    def verdict(self, text: str, finish_reason: str) -> tuple[str | None, str | None]:
        """Why a generation is not a question, or (None, None)."""
        if len(text) < self.config.min_chars:
            return "no_question", f"{len(text)} chars < min_chars {self.config.min_chars}"
        if finish_reason == "length" and not self.config.keep_unfinished:
            return "runaway", (f"no end of turn within "
                               f"{self.config.generator.max_new_tokens} new tokens")
        return None, None
