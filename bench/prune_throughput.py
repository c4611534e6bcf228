"""Prune throughput on the CPU: embedding, k-means, and each dedup pass at 10k and 100k rows.

Why: the prune flow's cost is embedding (map stage, scales with workers), k-means on a
sample (driver), and the duplicate barrier (driver): exact keys, MinHash signatures plus LSH,
and SemDeDup cluster by cluster with clusters spilled to disk. This measures each on real
text: OWT and Wikipedia passages with their shuffled copies, cycled to the row count with a
row number appended (so rows are not all exact copies). Embedding speed is measured on
`--embed-rows` real texts; k-means and SemDeDup run on those real MiniLM vectors tiled to
the row count with small noise, so clusters and duplicates look like the real ones.
Peak memory is the process's peak RSS during each step (the kernel's high-water mark, reset
before the step), so it includes the embedder and the texts already loaded.

Run: python bench/prune_throughput.py [--rows 10000 100000] [--embed-rows 2000]
Writes bench/results/prune_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

from gristmill.config import RuntimeConfig
from gristmill.inference import Embedder, EmbedderConfig
from gristmill.scoring.near_dup import MinHasher, exact_key, near_duplicate_groups
from gristmill.scoring.pruning import assign, l2_normalize, train_spherical_kmeans
from gristmill.sources import resolve
from gristmill.stages.dedup import DedupConfig, duplicate_decisions, read_decisions
from gristmill.storage.fs import resolve as resolve_location
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vector_array
from gristmill.storage.writer import write_table

RESULTS = Path(__file__).resolve().parent / "results" / "prune_throughput.json"
SOURCES = ("owt", "owt_shuffled", "wikipedia", "wikipedia_shuffled")


def real_texts() -> list[str]:
    texts = []
    for name in SOURCES:
        for path in resolve(name).files:
            texts.extend(json.loads(line)["text"] for line in path.open(encoding="utf-8"))
    return texts


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return float("nan")


def measured(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak RSS MB during the call): the kernel's high-water mark is
    reset first (/proc/self/clear_refs), so the peak is this step's, FAISS included."""
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - started
    return result, seconds, _peak_rss_mb()


def run_size(rows: int, texts: list[str], vectors: np.ndarray, clusters: int,
             sample_rows: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(rows)
    corpus = [f"{texts[i % len(texts)]} row {i}" if i >= len(texts) else texts[i]
              for i in range(rows)]
    tiled = vectors[np.arange(rows) % len(vectors)]
    tiled = l2_normalize(tiled + 0.01 * rng.normal(size=tiled.shape).astype(np.float32))
    ids = [f"row{i:07d}" for i in range(rows)]
    steps: dict[str, dict[str, float]] = {}

    def record(name: str, step: Callable[[], Any]) -> Any:
        result, seconds, peak = measured(step)
        steps[name] = {"seconds": seconds, "rows_per_s": rows / seconds, "peak_mb": peak}
        return result

    sample = tiled[rng.permutation(rows)[:sample_rows]]
    centroids = record("kmeans train", lambda: train_spherical_kmeans(sample, clusters))
    steps["kmeans train"]["rows_per_s"] = len(sample) / steps["kmeans train"]["seconds"]
    labels, distances = record("kmeans assign", lambda: assign(tiled, centroids))
    keys = record("exact keys", lambda: [exact_key(t) for t in corpus])
    signatures = record("minhash signatures", lambda: MinHasher().signatures(corpus))
    record("minhash lsh groups", lambda: near_duplicate_groups(signatures, 0.8))
    with tempfile.TemporaryDirectory(prefix="gristmill-prune-bench-") as folder:
        uri = str(Path(folder) / "scored")
        write_table(uri, pa.table({
            "id": ids, "cluster": pa.array(labels, pa.int32()),
            "centroid_distance": pa.array(distances), "embedding": vector_array(tiled),
            "exact_key": keys, "minhash": pa.FixedSizeListArray.from_arrays(
                pa.array(signatures.ravel(), pa.uint64()), signatures.shape[1])}),
            max_rows=10_000)
        dataset = Dataset.open(uri)
        def decided(config: DedupConfig, work: str) -> dict:
            found = duplicate_decisions(dataset, config, id_column="id",
                                        vector_column="embedding",
                                        work=resolve_location(str(Path(folder) / work)),
                                        runtime=RuntimeConfig(progress=False))
            return read_decisions(found, len(dataset.shards))

        semantic_only = DedupConfig(exact=False, minhash=False, eps=0.05)
        found = record("semdedup (workers, per cluster)",
                       lambda: decided(semantic_only, "work-semantic"))
        steps["semdedup (workers, per cluster)"]["removed"] = len(found)
        found = record("duplicate barrier (all passes)",
                       lambda: decided(DedupConfig(eps=0.05), "work-all"))
        steps["duplicate barrier (all passes)"]["removed"] = len(found)
    steps["largest cluster"] = {"rows": int(np.bincount(labels).max())}
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--embed-rows", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--sample-rows", type=int, default=100_000)
    args = parser.parse_args()
    console = Console(width=120)
    texts = real_texts()
    embedder = Embedder(EmbedderConfig(device="cpu", batch_size=64)).load()
    embedder.embed(texts[:64])
    vectors, seconds, peak = measured(lambda: embedder.embed(texts[:args.embed_rows]))
    embedding = {"rows": args.embed_rows, "seconds": seconds,
                 "rows_per_s": args.embed_rows / seconds, "peak_mb": peak}
    sizes = {rows: run_size(rows, texts, vectors, args.clusters, args.sample_rows)
             for rows in args.rows}

    table = Table(title=f"Prune throughput (CPU, k={args.clusters}, embed: all-MiniLM-L6-v2)")
    table.add_column("step")
    for rows in args.rows:
        table.add_column(f"{rows:,} rows: rows/s", justify="right")
        table.add_column("s", justify="right")
        table.add_column("peak MB", justify="right")
    table.add_row("embed (real texts, batch 64)",
                  *[f"{embedding['rows_per_s']:.0f}", f"{embedding['seconds']:.1f}",
                    f"{embedding['peak_mb']:.0f}"] * len(args.rows))
    for step in sizes[args.rows[0]]:
        if step == "largest cluster":
            continue
        cells = []
        for rows in args.rows:
            row = sizes[rows][step]
            cells += [f"{row['rows_per_s']:,.0f}", f"{row['seconds']:.1f}",
                      f"{row['peak_mb']:.0f}"]
        table.add_row(step, *cells)
    console.print(table)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    console.print(f"process max RSS {max_rss:.0f} MB; largest cluster "
                  + ", ".join(f"{sizes[r]['largest cluster']['rows']:,} of {r:,}"
                              for r in args.rows) + f"; load average {load_average()}")
    write_json(RESULTS, {"clusters": args.clusters, "sample_rows": args.sample_rows,
                         "embedding": embedding, "sizes": {str(k): v for k, v in sizes.items()},
                         "max_rss_mb": max_rss, "load_average": load_average()})


if __name__ == "__main__":
    main()
