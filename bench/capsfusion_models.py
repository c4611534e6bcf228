"""CapsFusion with the two packed instruction models on this machine's CPU: time per caption,
how many fusions pass the guard, and how many of the alt-text's names and numbers they keep.

Both models fuse the same openclipart pairs (distinct alt-texts, from --start) with the
demo's settings: 2 worked examples, greedy, at most 48 new tokens, batch 4, fp32. Each model
is loaded once in its own process before the rounds (load and one caption, reported apart,
from the converted HF folder); the rounds
alternate the two models (0.5B, 1.5B, 0.5B, ...). The fusions are deterministic (greedy),
so the kept counts and retention come from the first round; times are medians with min and
max over the rounds.

    python bench/capsfusion_models.py [--pairs 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import load_average, write_json
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results" / "capsfusion_models.json"
MODELS = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
WORKER = """
import json, sys, time
import pyarrow as pa
from gristmill.inference import GeneratorConfig
from gristmill.scoring.caption_checks import entity_retention
from gristmill.stages.capsfusion import CapsFusion, CapsFusionConfig
pairs = json.loads(sys.argv[2])
started = time.perf_counter()
stage = CapsFusion(CapsFusionConfig(few_shot=2, max_prompt_tokens=512, generator=GeneratorConfig(
    model=sys.argv[1], num_beams=1, max_new_tokens=48, batch_size=4)))
table = pa.table({"id": [str(i) for i in range(len(pairs))],
                  "text": [p["text"] for p in pairs],
                  "synthetic_caption": [p["synthetic_caption"] for p in pairs]})
stage.setup()
stage.process(table.slice(0, 1))  # the model loads on its first call
print(json.dumps({"load_s": time.perf_counter() - started}), flush=True)
for line in sys.stdin:
    started = time.perf_counter()
    split = stage.process(table)
    kept = split.kept.to_pylist()
    print(json.dumps({
        "seconds": time.perf_counter() - started, "kept": len(kept),
        "tokens": sum(r["fusion_tokens"] for r in kept),
        "rejects": split.rejected.column("reject_reason").to_pylist(),
        "fused": {r["id"]: r["fused_caption"] for r in kept},
        "retention": [r["entity_retention"] for r in kept],
        "synthetic_retention": [entity_retention(r["text"], r["synthetic_caption"])
                                for r in kept]}), flush=True)
"""


def caption_pairs(start: int, count: int) -> list[dict[str, str]]:
    from gristmill.sources import resolve

    pairs, seen = [], set()
    for line in resolve("openclipart_captions").files[0].read_text().splitlines()[start:]:
        row = json.loads(line)
        if row["text"] not in seen:
            seen.add(row["text"])
            pairs.append({"text": row["text"], "synthetic_caption": row["synthetic_caption"]})
        if len(pairs) == count:
            break
    return pairs


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--start", type=int, default=300, help="First openclipart pair line")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pairs = caption_pairs(args.start, args.pairs)
    workers = {model: subprocess.Popen([sys.executable, "-c", WORKER, model, json.dumps(pairs)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
               for model in MODELS}
    loads = {model: json.loads(worker.stdout.readline())["load_s"]
             for model, worker in workers.items()}
    rounds: dict[str, list[dict]] = {model: [] for model in MODELS}
    load_before = load_average()
    for _ in range(args.rounds):
        for model, worker in workers.items():
            worker.stdin.write("go\n")
            worker.stdin.flush()
            rounds[model].append(json.loads(worker.stdout.readline()))
    for worker in workers.values():
        worker.stdin.close()
        worker.wait(timeout=60)
    report = {"pairs": pairs, "rounds": args.rounds, "settings": {
        "few_shot": 2, "num_beams": 1, "max_new_tokens": 48, "batch_size": 4, "dtype": "fp32"},
        "load_average_before": load_before, "load_average_after": load_average(),
        "measured": time.strftime("%Y-%m-%d"), "models": {}}
    table = Table("model", "load + 1 caption s", "s per caption (median, min-max)", "kept",
                  "rejects", "retention kept / synthetic alone",
                  title="CapsFusion on 2 CPU cores")
    for model in MODELS:
        first = rounds[model][0]
        per_caption = [r["seconds"] / len(pairs) for r in rounds[model]]
        summary = {"load_s": loads[model], "s_per_caption": {
            "median": statistics.median(per_caption), "min": min(per_caption),
            "max": max(per_caption)}, "kept": first["kept"], "rejects": first["rejects"],
            "retention_kept": mean(first["retention"]),
            "retention_synthetic": mean(first["synthetic_retention"]),
            "fused": first["fused"]}
        report["models"][model] = summary
        retention = (f"{summary['retention_kept'] or 0:.2f} / "
                     f"{summary['retention_synthetic'] or 0:.2f}")
        table.add_row(model, f"{loads[model]:.1f}",
                      f"{summary['s_per_caption']['median']:.2f} "
                      f"({min(per_caption):.2f}-{max(per_caption):.2f})",
                      f"{first['kept']}/{len(pairs)}", ", ".join(sorted(set(first["rejects"]))),
                      retention)
    write_json(RESULTS, report)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
