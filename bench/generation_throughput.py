"""Generation throughput: gristmill's transformers backend against a plain HF `generate` loop.

Why: caption fusion runs a causal LM over every row, so generated tokens/s and prompts/s by
batch size size the stage, and the backend must cost nothing over the loop anyone would
write by hand. Both run the same loaded model (SmolLM2-135M-Instruct by default) on the same
short caption-fusion prompts, greedy, and must produce the same text.

Run: python bench/generation_throughput.py [--device cpu|cuda] [--max-new-tokens 32]
CPU: batch 1, 4, 8, 16; `--device cuda`: batch 64..512 in bfloat16 (skipped without a GPU).
Writes bench/results/generation_throughput.json and prints a table.
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

import torch
import transformers
from common import write_json
from rich.console import Console
from rich.table import Table

from gristmill.inference import GeneratorConfig, TransformersGenerator

RESULTS = Path(__file__).resolve().parent / "results" / "generation_throughput.json"
CPU_BATCHES = (1, 4, 8, 16)
GPU_BATCHES = (64, 128, 256, 512)

# (alt text as scraped, synthetic caption from a captioner): the shape CapsFusion fuses.
PAIRS = [
    ("IMG_2041 red bike vintage Amsterdam canal", "a bicycle leaning on a railing by water"),
    ("Golden Gate Bridge fog sunrise 2019", "a large red bridge partly covered in fog"),
    ("grandma's apple pie recipe!!", "a pie with a lattice crust on a wooden table"),
    ("Tux penguin linux mascot clipart", "a cartoon penguin sitting and smiling"),
    ("Mount Fuji cherry blossoms spring", "a snowy mountain behind pink flowering trees"),
    ("SALE 50% off leather boots brown", "a pair of brown boots on a white background"),
    ("Eiffel Tower at night light show", "a tall metal tower lit up against a dark sky"),
    ("golden retriever puppy 8 weeks", "a small yellow dog lying on the grass"),
    ("NASA Saturn V launch Apollo 11", "a rocket lifting off with a trail of smoke"),
    ("kitchen remodel white cabinets marble", "a bright kitchen with white cupboards"),
    ("Lionel Messi goal celebration 2022", "a football player running with arms raised"),
    ("vector icon set weather sun cloud rain", "simple drawings of a sun, a cloud and rain"),
    ("Venice gondola Grand Canal sunset", "a long boat on a canal between old buildings"),
    ("DSC_0093.jpg", "a child holding a kite on a beach"),
    ("Tokyo Shibuya crossing rush hour", "a crowd of people crossing a wide street"),
    ("handmade ceramic mug blue glaze", "a blue cup on a shelf next to plants"),
]


def prompts(count: int) -> list[str]:
    """Short fusion prompts (about 70 tokens with SmolLM2's chat template)."""
    return [f"Merge these into one short caption.\nAlt text: {alt}\nDescription: {synth}"
            for alt, synth in (PAIRS[i % len(PAIRS)] for i in range(count))]


def plain_hf_loop(gen: TransformersGenerator) -> Callable[[list[str], int, int], list[str]]:
    """The loop one writes by hand: chat template, left padding, generate, decode new tokens."""
    tokenizer, model = gen.tokenizer, gen.model

    def run(batch_prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
                 for p in batch_prompts]
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                seqs = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)
            out.extend(tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:],
                                              skip_special_tokens=True))
        return out

    return run


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def bench_batch(gen: TransformersGenerator, batch: int, count: int,
                max_new: int) -> dict[str, Any]:
    """Both implementations on the same prompts; tokens are gristmill's counts for both
    (identical greedy output, checked), so the ratio is a pure time ratio."""
    items = prompts(count)
    ours = TransformersGenerator(gen.config.with_(batch_size=batch))
    results, ours_s = timed(lambda: ours.generate(items))
    plain, plain_s = timed(lambda: plain_hf_loop(gen)(items, batch, max_new))
    texts = [r[0].text for r in results]
    tokens = sum(r[0].tokens for r in results)
    return {
        "batch_size": batch, "prompts": count, "generated_tokens": tokens,
        "prompt_tokens": sum(ours.count_tokens(items)),
        "same_text": texts == plain,
        "gristmill_s": round(ours_s, 3), "plain_hf_s": round(plain_s, 3),
        "gristmill_tok_per_s": round(tokens / ours_s, 1),
        "plain_hf_tok_per_s": round(tokens / plain_s, 1),
        "gristmill_prompts_per_s": round(count / ours_s, 2),
        "plain_hf_prompts_per_s": round(count / plain_s, 2),
        "ratio_vs_plain": round(plain_s / ours_s, 3),
    }


def machine_info(device: str) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    info: dict[str, Any] = {
        "cpu_model": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for name in ("batch", "prompts", "gen tok", "gristmill tok/s", "plain HF tok/s",
                 "gristmill prompts/s", "plain prompts/s", "ratio", "same text"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(str(r["batch_size"]), str(r["prompts"]), str(r["generated_tokens"]),
                      f"{r['gristmill_tok_per_s']:.1f}", f"{r['plain_hf_tok_per_s']:.1f}",
                      f"{r['gristmill_prompts_per_s']:.2f}", f"{r['plain_hf_prompts_per_s']:.2f}",
                      f"{r['ratio_vs_plain']:.2f}", "yes" if r["same_text"] else "NO")
    console = Console()
    if not console.is_terminal:
        console.width = 150
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default=None, help="HF folder or .gguf; default SmolLM2-135M")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own, one per core)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no GPU here; skipping the GPU benchmark")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batch_sizes or (GPU_BATCHES if args.device == "cuda" else CPU_BATCHES)
    config = GeneratorConfig(model=args.model, device=args.device,
                             max_new_tokens=args.max_new_tokens)
    load_before = [round(x, 2) for x in os.getloadavg()]
    gen, load_s = timed(lambda: TransformersGenerator(config).load())
    gen.generate(prompts(2))  # warm-up: first-call allocations and kernel choices
    rows = []
    for batch in batches:
        rows.append(bench_batch(gen, batch, max(2 * batch, 8), args.max_new_tokens))
        print(json.dumps(rows[-1]), file=sys.stderr)
    info = machine_info(args.device)
    title = (f"{Path(str(gen.source.path)).name} on {args.device} "
             f"({info.get('gpu', info['cpu_model'])}, {info['torch_threads']} torch threads), "
             f"greedy, {args.max_new_tokens} new tokens max")
    print_table(rows, title)
    result = {"device": args.device, "model": str(gen.source.path), "load_s": round(load_s, 2),
              "dtype": str(gen.model.dtype), "max_new_tokens": args.max_new_tokens,
              "machine": info, "load_average_before": load_before,
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    out = args.out or (RESULTS if args.device == "cpu"
                       else RESULTS.with_name("generation_throughput_gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
