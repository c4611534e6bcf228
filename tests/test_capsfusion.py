"""CapsFusion: prompt cap, output guard and entity retention (logic with a stand-in
generator), then the real 135M model on real openclipart rows through Ray (slow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from gristmill.config import RuntimeConfig
from gristmill.flows.fuse_captions import fusion_report
from gristmill.inference import GeneratorConfig
from gristmill.inference.packed_models import INSTRUCT_MODEL
from gristmill.scoring.caption_checks import clean_caption, entity_retention, guard
from gristmill.sources import resolve
from gristmill.stages.base import DatasetInput, StageInputError
from gristmill.stages.capsfusion import CapsFusion, CapsFusionConfig, fusion_prompt
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import StageResult, run_stage
from gristmill.storage.manifest import StageStats
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

GUARD = {"min_words": 3, "max_words": 60, "max_sentences": 2}


@dataclass
class Output:
    text: str
    tokens: int


class ScriptedGenerator:
    """Stands in for the model to test the logic around it: one token per word, and
    answers taken from a script in prompt order."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def generate(self, prompts: list[str]) -> list[list[Output]]:
        self.prompts.extend(prompts)
        return [[Output(self.answers.pop(0), 7)] for _ in prompts]


def stage_with(answers: list[str], **config: object) -> tuple[CapsFusion, ScriptedGenerator]:
    stage = CapsFusion(CapsFusionConfig(**config))
    stage.generator = ScriptedGenerator(answers)
    return stage, stage.generator


def test_the_prompt_is_untouched_under_the_cap_and_trims_only_the_raw_tail() -> None:
    stage, _ = stage_with([], max_prompt_tokens=200)
    short = stage.capped_prompt("red apple icon", "an apple")
    assert short == fusion_prompt("red apple icon", "an apple", 0)
    raw = " ".join(f"word{i}" for i in range(500))
    capped = stage.capped_prompt(raw, "a list of words")
    assert len(capped.split()) <= 200
    assert "word0 word1" in capped and "word499" not in capped
    assert capped.endswith("B: a list of words\nSentence:")


def test_guard_rejects_what_is_not_a_fused_caption() -> None:
    raw, synthetic = "Eiffel Tower at night, Paris 2019", "a tower lit up at night"
    cases = {
        "": "empty_output",
        "I'm sorry, but I cannot help with that request.": "refusal",
        "1. The tower\n2. The night": "not_a_caption",
        "One. Two here. Three there.": "not_a_caption",
        "Tower.": "too_short",
        " ".join(["tower"] * 70): "too_long",
        "Eiffel Tower at night, Paris 2019": "copied_input",
        "Eiffel Tower at night Paris 2019 a tower lit up at night": "copied_input",
        "A: Eiffel Tower B: a tower lit up at night": "prompt_echo",
        "a tree, a tree, a tree, a tree near the tower": "repetitive",
        "Tower at night, Paris": "copied_input",
        "Tower, night, lights, Paris, city, 2019, tourism": "not_a_caption",
    }
    for text, reason in cases.items():
        assert guard(text, raw, synthetic, **GUARD)[0] == reason, text
    for fine in ("The Eiffel Tower in Paris glows at night in 2019.",
                 "Eiffel Tower at night, seen from the river in Paris, 2019.",
                 "At night in Paris, the Eiffel Tower, lit, towers over the city, its lights on"):
        assert guard(fine, raw, synthetic, **GUARD) is None, fine
    copied = "Max, an 8-week-old Golden Retriever puppy, sits on the grass."
    assert guard(copied, raw, synthetic, examples=[copied], **GUARD)[0] == "example_copied"


def test_entity_retention_on_real_openclipart_rows() -> None:
    rows = [json.loads(line) for line in
            resolve("openclipart_captions").files[0].read_text().splitlines()[:200]]
    frog = next(r for r in rows if r["text"].startswith("2 dead frogs"))
    assert entity_retention(frog["text"], "Two dead frogs lie in a green swamp.") == 0.0
    assert entity_retention(frog["text"], "2 dead frogs lie in a swamp.") == 1.0
    assert entity_retention("tux penguin", "A penguin.") is None
    assert clean_caption('Sentence: "A frog."') == "A frog."


def test_process_keeps_good_fusions_and_rejects_bad_inputs_and_outputs() -> None:
    stage, generator = stage_with([
        "The Eiffel Tower in Paris glows at night in 2019.",
        "I am sorry, I can't do that.",
        "Many small x marks are scattered across the page.",
    ], max_prompt_tokens=150)
    batch = pa.table({
        "id": ["a", "b", "c", "d", "e"],
        "text": ["Eiffel Tower Paris 2019", "cat", "", "dog photo", "x " * 500_000],
        "synthetic_caption": ["a tower at night", "a cat", "a thing", None, "many xs"],
    })
    split = stage.process(batch)
    assert split.kept.column("id").to_pylist() == ["a", "e"]
    assert split.kept.column("parent_id").to_pylist() == ["a", "e"]
    assert split.kept.column("entity_retention").to_pylist() == [1.0, None]
    rejected = {r["id"]: r["reject_reason"] for r in split.rejected.to_pylist()}
    assert rejected == {"b": "refusal", "c": "empty_raw", "d": "empty_synthetic"}
    assert len(generator.prompts) == 3
    assert all(len(p.split()) <= 150 for p in generator.prompts)
    assert "x x x" in generator.prompts[2]


def test_vllm_workers_may_not_hold_the_gpus_their_engines_need() -> None:
    with pytest.raises(ValueError, match=r"set resources\.num_gpus=0"):
        CapsFusionConfig(generator=GeneratorConfig(backend="vllm"),
                         resources={"num_gpus": 1})


def test_missing_or_binary_columns_are_refused_before_any_work() -> None:
    stage = CapsFusion(CapsFusionConfig())
    with pytest.raises(StageInputError, match="missing column 'synthetic_caption'"):
        stage.check_input(pa.schema([("text", pa.string())]))
    with pytest.raises(StageInputError, match="column 'text' is binary"):
        stage.check_input(pa.schema([("text", pa.binary()),
                                     ("synthetic_caption", pa.string())]))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_real_model_fuses_real_openclipart_rows_through_ray(tmp_path: Path) -> None:
    lines = resolve("openclipart_captions").files[0].read_text().splitlines()
    raw = tmp_path / "pairs.jsonl"
    raw.write_text("\n".join(lines[100:104]) + "\n")
    quiet = RuntimeConfig(progress=False)
    ingested = run_stage(Ingest, IngestConfig(promote_fields=["synthetic_caption", "image_path"]),
                         RawFilesInput.from_args([str(raw)]), str(tmp_path / "ingest"), quiet)
    config = CapsFusionConfig(
        few_shot=2, max_prompt_tokens=512,
        generator=GeneratorConfig(model=INSTRUCT_MODEL, num_beams=1, max_new_tokens=48,
                                  batch_size=4))
    result = run_stage(CapsFusion, config, DatasetInput(ingested.output),
                       str(tmp_path / "fused"), quiet)
    stats = result.stats
    assert stats.rows_in == 4 == stats.rows_out + stats.rows_rejected
    inputs = set(Dataset.open(ingested.output).to_table().column("id").to_pylist())
    kept = Dataset.open(result.output).to_table().to_pylist()
    rejected = Dataset.open(result.output).rejected.to_table().to_pylist()
    assert len(kept) >= 3, rejected
    for row in kept:
        assert row["parent_id"] == row["id"] and row["id"] in inputs
        assert row["fused_caption"] and row["fusion_tokens"] > 0
        assert guard(row["fused_caption"], row["text"], row["synthetic_caption"], **GUARD) is None
        alone = entity_retention(row["text"], row["synthetic_caption"])
        if alone is not None:
            assert row["entity_retention"] >= alone, row
    for row in rejected:
        assert row["reject_reason"] and row["reject_stage"] == "capsfusion"
    assert {r["id"] for r in kept} | {r["id"] for r in rejected} == inputs


def test_the_flow_report_shows_fusions_beside_their_inputs(tmp_path: Path) -> None:
    out = tmp_path / "fused"
    write_table(str(out), pa.table({
        "id": ["a", "b"], "text": ["Eiffel Tower Paris 2019", "tux penguin"],
        "synthetic_caption": ["a tower at night", "a bird"],
        "fused_caption": ["The Eiffel Tower in Paris at night, 2019.", "Tux the penguin."],
        "entity_retention": pa.array([1.0, None], pa.float32()),
    }))
    result = StageResult(stage="capsfusion", output=str(out), rejected=None, cache_key="k",
                         reused=False, wall_seconds=1.0, stats=StageStats(
                             rows_in=3, rows_out=2, rows_rejected=1,
                             reject_reasons={"refusal": 1}))
    report = fusion_report(result, CapsFusionConfig())
    assert "mean entity retention 1.000 (1 rows with names or numbers)" in report
    assert "| refusal | 1 |" in report
    assert "| Eiffel Tower Paris 2019 | a tower at night | The Eiffel Tower in Paris" in report
