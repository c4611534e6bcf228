"""capsfusion: an LLM merges a noisy web alt-text with a synthetic caption (Yu et al., 2023).

The alt-text has the real-world details (names, places, numbers) but is badly formed; the
synthetic caption is fluent but generic and may be wrong. The prompt asks for one fluent
sentence that keeps the alt-text's details. Defaults follow the reference inference: the
prompt capped at 256 tokens by trimming the alt-text's tail (only when over the cap), beam
search with 3 beams and no sampling, at most 80 new tokens, only new tokens kept. The model
is the embedded Qwen2.5-Coder-0.5B-Instruct (gristmill/inference/packed_models.py). Every
output passes a guard; a bad generation is a rejected row with its reason.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.inference import Generator, GeneratorConfig, load_generator
from gristmill.inference.packed_models import INSTRUCT_MODEL
from gristmill.scoring.caption_checks import clean_caption, entity_retention, guard
from gristmill.stages.base import (
    STRING_TYPES,
    AddColumnsStage,
    Rejections,
    Split,
    StageConfig,
    require_columns,
)

INSTRUCTION = (
    "Two descriptions of the same picture follow. Description A comes from the web: a title, "
    "often followed by a list of tags. It holds the real names, places, numbers and other "
    "specifics, but it is not a sentence. Description B comes from a captioning model: it "
    "reads well, but it is generic and may be wrong. Write one fluent sentence that "
    "describes the picture. Keep the names, numbers and specific details of A, drop tags "
    "that only repeat or generalise them, and take from B its wording and what A leaves "
    "out. Do not list tags, and do not just join the two descriptions. Reply with the "
    "sentence only."
)

EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("eiffel tower paris night lights 2019 trip IMG_2231",
     "a tall tower lit up against a dark sky",
     "The Eiffel Tower in Paris glows with lights against the night sky on a 2019 trip."),
    ("Schwinn Bicycle 1950s, bike, cycle, schwinn, transport, red, vintage",
     "a red bicycle leaning on a wall",
     "A red 1950s Schwinn bicycle leans against a wall."),
    ("Golden Retriever puppy Max 8 weeks old!!",
     "a small dog sitting on the grass",
     "Max, an 8-week-old Golden Retriever puppy, sits on the grass."),
)


def fusion_prompt(raw: str, synthetic: str, few_shot: int) -> str:
    """The instruction, `few_shot` worked examples, then the pair and an answer cue."""
    parts = [INSTRUCTION]
    for example_raw, example_synthetic, fused in EXAMPLES[:few_shot]:
        parts.append(f"A: {example_raw}\nB: {example_synthetic}\nSentence: {fused}")
    parts.append(f"A: {raw}\nB: {synthetic}\nSentence:")
    return "\n\n".join(parts)


class CapsFusionConfig(StageConfig):
    """Columns, prompt, decoding and guard settings; defaults reproduce the paper."""

    raw_column: str = "text"
    synthetic_column: str = "synthetic_caption"
    output_column: str = "fused_caption"
    generator: GeneratorConfig = GeneratorConfig(model=INSTRUCT_MODEL, num_beams=3,
                                                 do_sample=False, max_new_tokens=80,
                                                 batch_size=8)
    max_prompt_tokens: int = Field(default=256, ge=16,
                                   description="Trim the raw text's tail to fit (paper: 256)")
    few_shot: int = Field(default=0, ge=0, le=len(EXAMPLES),
                          description="Worked examples in the prompt; small models need 2-3")
    max_raw_chars: int = Field(default=4000, ge=1,
                               description="Raw text beyond this is cut before tokenizing")
    min_words: int = Field(default=3, ge=1)
    max_words: int = Field(default=60, ge=1)
    max_sentences: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _vllm_engines_take_the_gpus(self) -> CapsFusionConfig:
        """The vLLM backend starts its own GPU engine actors from inside the stage's worker;
        a worker that also holds a GPU would leave them none to start on."""
        if self.generator.backend == "vllm" and self.resources.num_gpus > 0:
            raise ValueError("with generator.backend=vllm set resources.num_gpus=0: vLLM's "
                             "engine actors claim the GPUs themselves")
        return self


class CapsFusion(AddColumnsStage[CapsFusionConfig]):
    name: ClassVar[str] = "capsfusion"

    def setup(self) -> None:
        self.generator: Generator = load_generator(self.config.generator)

    @property
    def example_texts(self) -> list[str]:
        """The worked examples' sentences and inputs: copying one is not a fusion."""
        return [text for example in EXAMPLES[: self.config.few_shot] for text in example]

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {self.config.raw_column: STRING_TYPES,
                                            self.config.synthetic_column: STRING_TYPES})

    def added(self) -> list[pa.Field]:
        return [pa.field(self.config.output_column, pa.string()),
                pa.field("entity_retention", pa.float32()),
                pa.field("fusion_tokens", pa.int32()), pa.field("parent_id", pa.string())]

    def capped_prompt(self, raw: str, synthetic: str) -> str | None:
        """The prompt, trimming the raw text's tail word by word only if it is over the cap;
        None when even an empty raw text does not fit."""
        cfg = self.config
        raw = raw[: cfg.max_raw_chars]
        prompt = fusion_prompt(raw, synthetic, cfg.few_shot)
        if self.generator.count_tokens([prompt])[0] <= cfg.max_prompt_tokens:
            return prompt
        words = raw.split()
        low, high = 0, len(words)
        while low < high:
            middle = (low + high + 1) // 2
            candidate = fusion_prompt(" ".join(words[:middle]), synthetic, cfg.few_shot)
            if self.generator.count_tokens([candidate])[0] <= cfg.max_prompt_tokens:
                low = middle
            else:
                high = middle - 1
        if low == 0:
            return None
        return fusion_prompt(" ".join(words[:low]), synthetic, cfg.few_shot)

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        raws = batch.column(cfg.raw_column).to_pylist()
        synthetics = batch.column(cfg.synthetic_column).to_pylist()
        rejects = Rejections(batch.num_rows)
        prompts: dict[int, str] = {}
        for i, (raw, synthetic) in enumerate(zip(raws, synthetics, strict=True)):
            if not raw or not raw.strip():
                rejects[i] = "empty_raw", f"{cfg.raw_column} is empty"
            elif not synthetic or not synthetic.strip():
                rejects[i] = "empty_synthetic", f"{cfg.synthetic_column} is empty"
            elif (prompt := self.capped_prompt(raw, synthetic)) is None:
                rejects[i] = "prompt_too_long", \
                    f"the prompt without the raw text exceeds {cfg.max_prompt_tokens} tokens"
            else:
                prompts[i] = prompt
        fused: list[str | None] = [None] * batch.num_rows
        retention: list[float | None] = [None] * batch.num_rows
        tokens: list[int | None] = [None] * batch.num_rows
        order = sorted(prompts)
        for i, outputs in zip(order, self.generator.generate([prompts[i] for i in order]),
                              strict=True):
            text = clean_caption(outputs[0].text)
            fused[i], tokens[i] = text, outputs[0].tokens
            verdict = guard(text, raws[i], synthetics[i], min_words=cfg.min_words,
                            max_words=cfg.max_words, max_sentences=cfg.max_sentences,
                            examples=self.example_texts)
            if verdict is not None:
                rejects[i] = verdict
            else:
                retention[i] = entity_retention(raws[i], text)
        parents = batch.column("id") if "id" in batch.column_names else \
            pa.nulls(batch.num_rows, pa.string())
        return rejects.split(self.with_added(batch, {
            cfg.output_column: fused, "entity_retention": retention, "fusion_tokens": tokens,
            "parent_id": parents}), self.name)
