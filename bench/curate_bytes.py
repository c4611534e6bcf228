"""Bytes curate writes against the raw bytes it reads, per step folder.

Why: every copy of the corpus a pipeline writes costs disk, I/O and time at crawl scale
(issue 16 asks for <= 3x the input). Runs `curate` on a config (the demo's by default) into
a scratch folder, once per storage variant, and sums the files under each step's folder.
Bytes are deterministic, so one run per variant is enough.

Run: python bench/curate_bytes.py [--config configs/demo.yaml]
At ~1 GB of real text (bench/debian_corpus.py, built by bench/pipeline_vs_peers.py):
    python bench/curate_bytes.py \
        --set 'sources=[.gristmill/bench/pipeline_vs_peers/corpus-1000mb]' \
        --set max_records=null --set datastore=null \
        --results bench/results/curate_bytes_1gb.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from gristmill.config import apply_overrides
from gristmill.stages.raw_inputs import RawFilesInput

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".gristmill" / "bench" / "curate_bytes"
RESULTS = ROOT / "bench" / "results" / "curate_bytes.json"
VARIANTS = {"default": [], "rejected_rows=ids": ["--set", "runtime.storage.rejected_rows=ids"]}
DATASTORE = ("datastore", "datastore_work")


def input_bytes(config: dict, overrides: list[str]) -> int:
    """The raw records curate reads (each payload and its line end)."""
    config = apply_overrides(config, overrides)
    source = RawFilesInput.from_args(config["sources"], max_records=config.get("max_records"))
    return sum(len(payload) + 1 for unit in source.units()
               for table in source.read_unit(unit, 4096)
               for payload in table.column("payload").to_pylist())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_variant(config_path: Path, name: str, extra: list[str]) -> tuple[dict[str, int], float]:
    """One curate run into a fresh folder: bytes per top-level step folder, wall seconds."""
    work = SCRATCH / name.replace("=", "_")
    shutil.rmtree(work, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("gristmill")), "run", "curate", "-c",
               str(config_path), "--set", f"work_dir={work}", "--set", "runtime.progress=false",
               *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return {p.name: folder_bytes(p) for p in sorted(work.iterdir()) if p.is_dir()}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="key.path=value, passed to every curate run")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    read = input_bytes(config, args.overrides)
    given = [arg for override in args.overrides for arg in ("--set", override)]
    runs = {name: run_variant(args.config, name, given + VARIANTS[name])
            for name in args.variants}
    found = {name: sizes for name, (sizes, _) in runs.items()}
    walls = {name: wall for name, (_, wall) in runs.items()}
    shutil.rmtree(SCRATCH, ignore_errors=True)
    table = Table(title=f"curate bytes written ({args.config.name}; input {read / 1e6:.2f} MB)")
    table.add_column("folder")
    for name in found:
        table.add_column(f"{name} (MB)", justify="right")
    for folder in sorted({f for sizes in found.values() for f in sizes}):
        table.add_row(folder, *(f"{sizes.get(folder, 0) / 1e6:.2f}" for sizes in found.values()))
    totals = {name: sum(sizes.values()) for name, sizes in found.items()}
    bare = {name: sum(v for k, v in sizes.items() if k not in DATASTORE)
            for name, sizes in found.items()}
    table.add_row("total (x input)", *(f"{t / 1e6:.2f} ({t / read:.2f}x)" for t in totals.values()))
    table.add_row("without datastore (x input)",
                  *(f"{t / 1e6:.2f} ({t / read:.2f}x)" for t in bare.values()))
    Console().print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    args.results.write_text(json.dumps({
        "config": str(args.config.relative_to(ROOT)), "overrides": args.overrides,
        "commit": commit, "input_bytes": read, "wall_s": walls,
        "variants": {name: {"folders": sizes, "total": totals[name],
                            "without_datastore": bare[name],
                            "ratio": totals[name] / read,
                            "ratio_without_datastore": bare[name] / read}
                     for name, sizes in found.items()}}, indent=1))
    print(f"-> {args.results}")


if __name__ == "__main__":
    main()
