"""The command line every runner of bench/pipeline_vs_peers.py takes (standard library only,
since each runner imports it inside its own tool's virtualenv)."""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    """--input folder of JSONL, --output folder (report.json and kept/ go there), --workers,
    the fastText --model file, the language threshold, and the duplicate n-gram switch."""
    found = argparse.ArgumentParser()
    found.add_argument("--input", required=True)
    found.add_argument("--output", required=True)
    found.add_argument("--workers", type=int, default=2)
    found.add_argument("--model", required=True)
    found.add_argument("--min-language-score", type=float, default=0.65)
    found.add_argument("--no-duplicate-ngrams", action="store_true",
                       help="switch off the duplicate (repeated) n-gram rules")
    return found
