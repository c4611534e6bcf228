"""What every runner of bench/dedup_vs_peers.py shares (standard library only, since each
imports it inside its own tool's virtualenv): the command line, how a text becomes word
5-gram shingles, how documents are read, and the report."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

WORD = re.compile(r"\w+")


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser()
    found.add_argument("--input", required=True, help="folder of JSONL with doc_id and text")
    found.add_argument("--output", required=True, help="report.json goes there")
    found.add_argument("--workers", type=int, default=2)
    found.add_argument("--threshold", type=float, default=0.8)
    found.add_argument("--num-perm", type=int, default=128)
    return found


def shingles(text: str, n: int = 5) -> list[str]:
    """Lowercased word n-grams; a text shorter than n words is one shingle."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def documents(folder: str) -> Iterator[tuple[str, str]]:
    for path in sorted(Path(folder).glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                yield record["doc_id"], record["text"]


def report(output: str, seconds: float, removed: dict[str, str]) -> None:
    """removed: every dropped document -> the kept document it duplicates."""
    Path(output, "report.json").write_text(json.dumps({"seconds": seconds,
                                                       "removed": removed}))
