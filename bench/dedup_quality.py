"""Dedup quality on real near-duplicates: OWT and Wikipedia passages with shuffled copies.

Why: each passage comes with sentence-shuffled copies (DATA.md), so the ideal dedup keeps
exactly one row per passage. For exact keys, MinHash and SemDeDup at several eps this
measures recall (share of the ideal removals made, each pointing at a row of the same
passage), precision (share of removals that point at the same passage), and passages lost
(passages with no row left: merged into a different passage). It calls the same functions
the prune stages call (scoring/duplicates.py) on the real embedded MiniLM.

Run: python bench/dedup_quality.py [--passages 1000] [--copies 10] [--clusters 100]
Writes bench/results/dedup_quality.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

from gristmill.inference import Embedder, EmbedderConfig
from gristmill.scoring.duplicates import (
    Duplicates,
    exact_duplicates,
    follow_survivors,
    minhash_duplicates,
    semantic_duplicates,
)
from gristmill.scoring.near_dup import MinHasher, exact_key
from gristmill.scoring.pruning import assign, train_spherical_kmeans
from gristmill.sources import resolve

RESULTS = Path(__file__).resolve().parent / "results" / "dedup_quality.json"
CORPORA = {"owt": "owt_shuffled", "wikipedia": "wikipedia_shuffled"}
EPS = (0.01, 0.02, 0.05, 0.1, 0.15)
MINHASH_THRESHOLDS = (0.5, 0.8)


def load_rows(passages_per_corpus: int,
              copies: int) -> tuple[list[str], list[str], list[str]]:
    """(ids, texts, passage key) for the first passages of each corpus and their first
    `copies` shuffled copies."""
    ids, texts, passages = [], [], []
    for corpus, shuffled in CORPORA.items():
        for name, is_copy in ((corpus, False), (shuffled, True)):
            for path in resolve(name).files:
                for line in path.open(encoding="utf-8"):
                    row = json.loads(line)
                    if ((is_copy and row["copy"] > copies)
                            or row["passage_idx"] >= passages_per_corpus):
                        continue
                    suffix = f"c{row['copy']:02d}" if is_copy else "c00"
                    ids.append(f"{corpus}-{row['passage_idx']:04d}-{suffix}")
                    texts.append(row["text"])
                    passages.append(f"{corpus}-{row['passage_idx']:04d}")
    return ids, texts, passages


def semantic(ids: list[str], vectors: np.ndarray, labels: np.ndarray, distances: np.ndarray,
             eps: float) -> Duplicates:
    found: Duplicates = {}
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        found.update(semantic_duplicates([ids[m] for m in members], vectors[members],
                                         distances[members], eps))
    return found


def quality(removed: Duplicates, ids: list[str], passages: list[str],
            seconds: float) -> dict[str, float]:
    passage_of = dict(zip(ids, passages, strict=True))
    resolved = follow_survivors(removed)
    same = sum(passage_of[i] == passage_of[d.duplicate_of] for i, d in resolved.items())
    ideal = len(ids) - len(set(passages))
    surviving = {passage_of[i] for i in ids if i not in removed}
    return {"removed": len(removed), "same_passage": same,
            "recall": same / ideal if ideal else 1.0,
            "precision": same / len(removed) if removed else 1.0,
            "passages_lost": len(set(passages)) - len(surviving),
            "originals_removed_to_other_passage": sum(
                1 for i, d in resolved.items()
                if i.endswith("c00") and passage_of[d.duplicate_of] != passage_of[i]),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10, help="shuffled copies per passage")
    parser.add_argument("--passages", type=int, default=1000, help="passages per corpus")
    parser.add_argument("--clusters", type=int, default=100)
    args = parser.parse_args()
    ids, texts, passages = load_rows(args.passages, args.copies)
    console = Console(width=120)
    console.print(f"{len(ids):,} rows: {len(set(passages)):,} passages x (1 + {args.copies}) "
                  "copies")
    started = time.perf_counter()
    vectors = Embedder(EmbedderConfig(device="cpu")).embed(texts)
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    centroids = train_spherical_kmeans(vectors, args.clusters, seed=0)
    labels, distances = assign(vectors, centroids)
    kmeans_seconds = time.perf_counter() - started

    results: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    exact = exact_duplicates(ids, [exact_key(t) for t in texts])
    results["exact"] = quality(exact, ids, passages, time.perf_counter() - started)
    started = time.perf_counter()
    signatures = MinHasher().signatures(texts)
    signature_seconds = time.perf_counter() - started
    for threshold in MINHASH_THRESHOLDS:
        started = time.perf_counter()
        found = minhash_duplicates(ids, signatures, threshold)
        results[f"minhash J>={threshold}"] = quality(
            found, ids, passages, signature_seconds + time.perf_counter() - started)
    for eps in EPS:
        started = time.perf_counter()
        found = semantic(ids, vectors, labels, distances, eps)
        results[f"semdedup eps={eps}"] = quality(found, ids, passages,
                                                 time.perf_counter() - started)

    table = Table(title=f"Dedup quality: OWT + Wikipedia passages with {args.copies} "
                        "sentence-shuffled copies each")
    for column in ("method", "removed", "recall", "precision", "passages lost",
                   "originals -> other passage", "seconds"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, row in results.items():
        table.add_row(name, f"{row['removed']:,}", f"{row['recall']:.3f}",
                      f"{row['precision']:.3f}", f"{row['passages_lost']:,}",
                      f"{row['originals_removed_to_other_passage']:,}", f"{row['seconds']:.1f}")
    console.print(table)
    console.print(f"embedding {embed_seconds:.0f} s, k-means + assignment {kmeans_seconds:.1f} s"
                  f" (k={args.clusters}); load average {load_average()}")
    write_json(RESULTS, {
        "rows": len(ids), "passages": len(set(passages)), "copies": args.copies,
        "passages_per_corpus": args.passages,
        "clusters": args.clusters, "embedder": "all-MiniLM-L6-v2 (cpu)",
        "embed_seconds": embed_seconds, "kmeans_seconds": kmeans_seconds,
        "load_average": load_average(), "methods": results,
        "definitions": {
            "recall": "removals that point at a row of the same passage / (rows - passages)",
            "precision": "removals that point at a row of the same passage / removals",
            "passages_lost": "passages with no row left after dedup",
        },
    })


if __name__ == "__main__":
    main()
