"""CapsFusion end to end: captions/s and generated tokens/s through the whole stage.

Why: `generation_throughput.py` times the generator alone; a curation run pays for more
(Ray actor start, model load per actor, prompt building with the 256-token cap, the output
guard, shard writes and the commit). This runs the real `capsfusion` stage through a local
Ray actor pool on real openclipart rows (title + keywords as alt-text, description as the
synthetic caption), once per generator batch size, with the reference decoding (3 beams,
greedy) and the embedded SmolLM2-135M.

Run: python bench/capsfusion_stage.py [--rows 24] [--batch-sizes 1 4 8] [--max-new-tokens 32]
Writes bench/results/capsfusion_stage.json and prints a table. About 5-10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

from gristmill.config import RuntimeConfig
from gristmill.inference import GeneratorConfig
from gristmill.runtime import RayConfig, ensure_ray
from gristmill.sources import resolve
from gristmill.stages.base import DatasetInput, Resources
from gristmill.stages.capsfusion import CapsFusion, CapsFusionConfig
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset

RESULTS = Path(__file__).resolve().parent / "results" / "capsfusion_stage.json"
SCRATCH = Path(".gristmill/bench/capsfusion_stage")


def ingest_rows(rows: int, runtime: RuntimeConfig) -> str:
    """The first `rows` openclipart pairs as an ingested dataset (one shard)."""
    lines = resolve("openclipart_captions").files[0].read_text().splitlines()[:rows]
    raw = SCRATCH / "pairs.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    result = run_stage(Ingest, IngestConfig(promote_fields=["synthetic_caption", "image_path"]),
                       RawFilesInput.from_args([str(raw)]), str(SCRATCH / "ingest"), runtime)
    return result.output


def generated_tokens(output: str) -> int:
    """Tokens the model generated for every row it saw, kept or rejected by the guard."""
    dataset = Dataset.open(output)
    total = 0
    for part in (dataset, dataset.rejected):
        if part is not None and part.num_rows:
            column = part.to_table(columns=["fusion_tokens"]).column("fusion_tokens")
            total += int(pc.sum(column).as_py() or 0)
    return total


def run_batch(source: str, batch: int, args: argparse.Namespace,
              runtime: RuntimeConfig) -> dict[str, Any]:
    config = CapsFusionConfig(
        few_shot=2, max_prompt_tokens=512,
        generator=GeneratorConfig(num_beams=3, do_sample=False,
                                  max_new_tokens=args.max_new_tokens, batch_size=batch),
        resources=Resources(num_cpus=args.cpus, concurrency=1, batch_rows=max(batch, 8)))
    start = time.perf_counter()
    result = run_stage(CapsFusion, config, DatasetInput(source),
                       str(SCRATCH / f"fused-b{batch}"), runtime)
    wall = time.perf_counter() - start
    stats = result.stats
    tokens = generated_tokens(result.output)
    return {
        "batch_size": batch, "rows": stats.rows_in, "kept": stats.rows_out,
        "rejected": stats.rows_rejected, "reject_reasons": stats.reject_reasons,
        "generated_tokens": tokens, "wall_s": round(wall, 2),
        "worker_s": round(stats.seconds, 2),
        "captions_per_s": round(stats.rows_in / wall, 3),
        "kept_captions_per_s": round(stats.rows_out / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for name in ("batch", "rows", "kept", "gen tok", "wall s", "worker s", "captions/s",
                 "kept/s", "tok/s"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(str(r["batch_size"]), str(r["rows"]), str(r["kept"]),
                      str(r["generated_tokens"]), f"{r['wall_s']:.1f}", f"{r['worker_s']:.1f}",
                      f"{r['captions_per_s']:.3f}", f"{r['kept_captions_per_s']:.3f}",
                      f"{r['tokens_per_s']:.1f}")
    console = Console()
    if not console.is_terminal:
        console.width = 120
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--cpus", type=float, default=2.0,
                        help="num_cpus of the one fusion actor (its torch threads)")
    args = parser.parse_args()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    runtime = RuntimeConfig(progress=False)
    load_before = load_average()
    ensure_ray(RayConfig())
    source = ingest_rows(args.rows, runtime)
    rows = [run_batch(source, batch, args, runtime) for batch in args.batch_sizes]
    title = (f"capsfusion stage, SmolLM2-135M, 3 beams, {args.max_new_tokens} new tokens max, "
             f"one actor with {args.cpus:g} CPUs ({cpu_model()})")
    print_table(rows, title)
    write_json(RESULTS, {
        "rows": args.rows, "max_new_tokens": args.max_new_tokens, "num_beams": 3,
        "few_shot": 2, "actor_cpus": args.cpus, "cpu": cpu_model(),
        "python": platform.python_version(),
        "load_average_before": load_before, "load_average_after": load_average(),
        "results": rows,
    })
    shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
