"""ScaleQuest throughput on this CPU: questions/s through each stage's batch transform.

Why: the synthesis pipeline is a funnel of very unequal stages (LLM generation, an LLM judge,
n sampled solutions per question, against cheap CPU filters and dedup), so questions/s per
stage tells where the time goes and how many workers each stage needs at scale. Each stage's
`process()` runs in this process on real inputs (its model loaded first, load time not
counted): the embedded SmolLM2-135M with short token caps for the LLM stages, GSM8K test and
CHAMP questions for the others. LLM figures scale roughly inversely with the token caps.

Run: python bench/scalequest_throughput.py [--llm-rows 8] [--max-new-tokens 32]
Writes bench/results/scalequest_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

from gristmill.inference import GeneratorConfig
from gristmill.sources import resolve
from gristmill.stages.answer_select import AnswerSelect, AnswerSelectConfig
from gristmill.stages.base import MapStage
from gristmill.stages.math_responses import MathResponses, MathResponsesConfig
from gristmill.stages.question_dedup import (
    QuestionDedupScore,
    QuestionDedupScoreConfig,
    QuestionDedupSelect,
    QuestionDedupSelectConfig,
)
from gristmill.stages.question_difficulty import DifficultyScore, DifficultyScoreConfig
from gristmill.stages.question_filters import (
    QuestionLanguage,
    QuestionLanguageConfig,
    Solvability,
    SolvabilityConfig,
)
from gristmill.stages.question_gen import QuestionGen, QuestionGenConfig, SeedRowsInput, SeedSpec

RESULTS = Path(__file__).resolve().parent / "results" / "scalequest_throughput.json"


def _texts(source: str, field: str = "text") -> list[str]:
    return [json.loads(line)[field] for path in resolve(source).files
            for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _questions(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"q{i:06d}" for i in range(len(texts))], "question": texts})


def _time(stage: MapStage, batch: pa.Table,
          tokens: str | None = None) -> tuple[dict[str, Any], pa.Table]:
    stage.setup()
    started = time.perf_counter()
    split = stage.process(batch)
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {"stage": stage.name, "rows": batch.num_rows, "seconds": seconds,
                           "questions_per_s": batch.num_rows / seconds,
                           "kept": split.kept.num_rows, "rejected": split.rejected.num_rows}
    if tokens and split.kept.num_rows + split.rejected.num_rows:
        table = pa.concat_tables([split.kept.select([tokens]),
                                  split.rejected.select([tokens])])
        values = table.column(tokens).to_pylist()
        flat = [v for x in values if x is not None for v in (x if isinstance(x, list) else [x])]
        row["new_tokens"] = sum(flat)
        row["tokens_per_s"] = sum(flat) / seconds
    return row, split.kept


def run(llm_rows: int, max_new_tokens: int, batch_size: int,
        done: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every stage in funnel order; `done(rows)` after each, so a cut-short run keeps what
    it measured."""
    rows: list[dict[str, Any]] = []

    def timed(stage: MapStage, batch: pa.Table, tokens: str | None = None,
              label: str = "") -> pa.Table:
        row, kept = _time(stage, batch, tokens)
        row["stage"] += label
        rows.append(row)
        done(rows)
        return kept

    sampled = {"do_sample": True, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    greedy = {"do_sample": False, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "max_prompt_tokens": 2048}
    gsm = _texts("gsm8k")
    champ = _texts("champ")
    pool = (gsm + champ) * 3
    llm_questions = _questions(gsm[:llm_rows])
    spec = SeedSpec(count=llm_rows)
    seeds = next(SeedRowsInput(spec).read_unit(SeedRowsInput(spec).units()[0], llm_rows))
    timed(QuestionGen(QuestionGenConfig(
        generator=GeneratorConfig(use_chat_template=False, temperature=1.0, top_p=0.99,
                                  **sampled), keep_unfinished=True)), seeds, "gen_tokens")
    timed(QuestionLanguage(QuestionLanguageConfig()), _questions(pool))
    timed(QuestionLanguage(QuestionLanguageConfig(languages=["en"])), _questions(pool),
          label=" (+fastText)")
    timed(Solvability(SolvabilityConfig(generator=GeneratorConfig(**greedy), enforce=False)),
          llm_questions)
    timed(DifficultyScore(DifficultyScoreConfig(
        generator=GeneratorConfig(**{**greedy, "max_new_tokens": 4}), require_score=False)),
        llm_questions)
    scored = timed(QuestionDedupScore(QuestionDedupScoreConfig()), _questions(pool))
    timed(QuestionDedupSelect(QuestionDedupSelectConfig()), scored)
    timed(MathResponses(MathResponsesConfig(keep_unfinished=True, generator=GeneratorConfig(
        temperature=0.7, top_p=0.95, num_return_sequences=5, max_prompt_tokens=2048,
        **{**sampled, "batch_size": max(1, batch_size // 5)}))), llm_questions,
        "response_tokens", " (n=5)")
    solutions = _texts("gsm8k", "answer")
    answers = [s.rsplit("####", 1)[1].strip() for s in solutions]
    votes = pa.table({"id": [f"q{i}" for i in range(len(gsm))], "question": gsm,
                      "responses": pa.array([[s] * 5 for s in solutions], pa.list_(pa.string())),
                      "answers": pa.array([[a] * 5 for a in answers], pa.list_(pa.string()))})
    timed(AnswerSelect(AnswerSelectConfig()), pa.concat_tables([votes] * 10), label=" (vote)")
    return rows


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu_model": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-rows", type=int, default=8, help="Questions through LLM stages")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    before = load_average()

    def save(rows: list[dict[str, Any]]) -> None:
        write_json(args.out, {"benchmark": "scalequest_throughput", "machine": machine_info(),
                              "settings": vars(args) | {"out": str(args.out)},
                              "load_average_before": before,
                              "load_average_after": load_average(), "rows": rows})

    rows = run(args.llm_rows, args.max_new_tokens, args.batch_size, save)
    table = Table(title="ScaleQuest stages on this CPU (process() only, model preloaded)")
    for column in ("stage", "rows", "seconds", "questions/s", "new tokens/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in rows:
        table.add_row(row["stage"], str(row["rows"]), f"{row['seconds']:.2f}",
                      f"{row['questions_per_s']:.2f}",
                      f"{row['tokens_per_s']:.1f}" if "tokens_per_s" in row else "-")
    Console().print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
