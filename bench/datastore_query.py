"""Datastore benchmark: build speed by phase, query latency and QPS, overhead over FAISS,
memory per vector.

Why: the datastore must add little on top of FAISS, and its build must scale shard by shard.
- build phases on real text: chunk (Brown documents -> 256-word passages), embed (MiniLM on
  the CPU, a sample of those passages), train + add (synthetic vectors at each size);
- query, synthetic unit vectors (384-d, MiniLM's width) at 100k and 1M: Flat and IVF-PQ
  (MassiveDS defaults: 2048 lists, PQ16x8, nprobe 64, trained on 100k). Per size and index:
  FAISS called directly on the one shard's index (batch 1), our shard search + merge on the
  same one-shard datastore (the overhead ratio), the same vectors over 4 shards, and the
  full pipeline (fetch passages, MinHash dedup, k=3). K (candidates) = 100.
- memory: serialized index bytes per vector, and process RSS growth when the index loads.

Run: python bench/datastore_query.py [--sizes 100000 1000000] [--queries 200]
Writes bench/results/datastore_query.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psutil
import pyarrow as pa
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

from gristmill.inference import Embedder, EmbedderConfig
from gristmill.retrieval.datastore import Datastore, IndexSpec, build_from_arrays
from gristmill.retrieval.postprocess import SearchOptions
from gristmill.retrieval.retriever import Retriever
from gristmill.retrieval.search import ThreadSearcher, search_candidates
from gristmill.sources import resolve
from gristmill.stages.chunk import Chunk, ChunkConfig

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".gristmill" / "bench" / "datastore_query"
RESULTS = Path(__file__).resolve().parent / "results" / "datastore_query.json"
DIM = 384
CANDIDATES = 100
console = Console(width=200)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "qps": len(ordered) / sum(ordered)}


def timed(fn: Any, queries: np.ndarray) -> dict[str, float]:
    fn(queries[:1])  # warm-up
    seconds = []
    for q in range(len(queries)):
        started = time.perf_counter()
        fn(queries[q:q + 1])
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


def synthetic(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 1,000 centres: clustered like real embeddings, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    out = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        out[lo:hi] = centres[rng.integers(0, 1000, hi - lo)] \
            + 0.6 * rng.standard_normal((hi - lo, DIM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def passages(n: int, start: int = 0) -> pa.Table:
    ids = [f"p{i}" for i in range(start, start + n)]
    texts = [f"synthetic passage {i} " + " ".join(f"w{i % 977}x{j}" for j in range(14))
             for i in range(start, start + n)]
    return pa.table({"id": ids, "text": texts,
                     "word_count": pa.array([17] * n, pa.int32())})


def build_phases(embed_sample: int) -> dict[str, Any]:
    """Real-text phases: chunk every Brown document, embed a sample of the passages."""
    records = [json.loads(line) for line in
               resolve("brown").files[0].read_text().splitlines()]
    docs = pa.table({"id": [f"brown{i}" for i in range(len(records))],
                     "text": [r["text"] for r in records]})
    started = time.perf_counter()
    chunks = Chunk(ChunkConfig()).process(docs).kept
    chunk_seconds = time.perf_counter() - started
    texts = chunks.column("text").to_pylist()[:embed_sample]
    embedder = Embedder(EmbedderConfig()).load()
    embedder.embed(texts[:8])
    started = time.perf_counter()
    embedder.embed(texts)
    embed_seconds = time.perf_counter() - started
    embedder.close()
    text_bytes = sum(len(t.encode()) for t in chunks.column("text").to_pylist())
    return {"documents": len(records), "passages": chunks.num_rows,
            "chunk_passages_per_s": chunks.num_rows / chunk_seconds,
            "embed_passages": len(texts), "embed_passages_per_s": len(texts) / embed_seconds,
            "text_bytes_per_word": text_bytes / sum(chunks.column("word_count").to_pylist())}


def build(uri: Path, spec: IndexSpec, vectors: np.ndarray, shards: int) -> dict[str, Any]:
    if uri.exists():
        shutil.rmtree(uri)
    per = -(-len(vectors) // shards)
    parts = {s: (vectors[s * per:(s + 1) * per], passages(len(vectors[s * per:(s + 1) * per]),
                                                          s * per))
             for s in range(shards)}
    started = time.perf_counter()
    manifest = build_from_arrays(str(uri), spec, parts)
    total = time.perf_counter() - started
    train = manifest.training.seconds if manifest.training else 0.0
    return {"seconds": total, "train_seconds": train,
            "add_passages_per_s": len(vectors) / max(total - train, 1e-9),
            "index_bytes": manifest.index_bytes,
            "bytes_per_vector": manifest.index_bytes / len(vectors)}


def measure(size: int, spec: IndexSpec, queries: np.ndarray) -> dict[str, Any]:
    vectors = synthetic(size, seed=size)
    one = WORK_DIR / f"{spec.kind}-{size}-1"
    four = WORK_DIR / f"{spec.kind}-{size}-4"
    result: dict[str, Any] = {"size": size, "index": spec.factory(), "nprobe": spec.nprobe,
                              "queries": len(queries)}
    result["build_1_shard"] = build(one, spec, vectors, 1)
    result["build_4_shards"] = build(four, spec, vectors, 4)
    del vectors

    rss = psutil.Process().memory_info().rss
    store = Datastore.open(str(one)).load()
    result["rss_bytes_per_vector"] = (psutil.Process().memory_info().rss - rss) / size
    index = store.index(0)
    result["faiss_direct"] = timed(lambda q: index.search(q, CANDIDATES), queries)
    searcher = ThreadSearcher(store)
    result["ours_1_shard"] = timed(
        lambda q: search_candidates(store, searcher, q, CANDIDATES), queries)
    result["overhead_ratio"] = result["ours_1_shard"]["p50_ms"] / result["faiss_direct"]["p50_ms"]
    searcher.close()

    store4 = Datastore.open(str(four)).load()
    searcher4 = ThreadSearcher(store4)
    result["ours_4_shards"] = timed(
        lambda q: search_candidates(store4, searcher4, q, CANDIDATES), queries)
    retriever = Retriever(store4, searcher4)
    options = SearchOptions(k=3, candidates=CANDIDATES)
    result["full_pipeline_4_shards"] = timed(
        lambda q: retriever.search_vectors(q, options), queries)
    retriever.close()
    for path in (one, four):
        shutil.rmtree(path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-sample", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    parser.add_argument("--keep", action="store_true",
                        help="Keep earlier results for sizes not measured in this run")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": psutil.cpu_count(), "python": platform.python_version(),
                    "faiss": faiss.__version__, "load_average_start": load_average()},
        "dim": DIM, "candidates": CANDIDATES, "queries": args.queries}
    report["build_real_text"] = build_phases(args.embed_sample)
    console.print(report["build_real_text"])
    queries = synthetic(args.queries, seed=12345)
    runs = []
    if args.keep and RESULTS.exists():
        earlier = json.loads(RESULTS.read_text())
        runs = [{**r, "queries": r.get("queries", earlier["queries"])} for r in earlier["runs"]
                if r["size"] not in args.sizes]
    for size in args.sizes:
        for spec in (IndexSpec(kind="flat"), IndexSpec(kind="ivfpq")):
            runs.append(measure(size, spec, queries))
            console.print(f"done {size:,} {spec.factory()}")
            write_json(RESULTS, {**report, "runs": runs})
    report["runs"] = runs
    report["machine"]["load_average_end"] = load_average()
    write_json(RESULTS, report)
    shutil.rmtree(WORK_DIR, ignore_errors=True)

    table = Table("vectors", "index", "bytes/vec", "RSS B/vec", "train s", "add vec/s",
                  "faiss p50 ms", "ours p50 ms", "overhead", "4 shards p50/p99 ms",
                  "4 shards QPS", "full p50/p99 ms", title="datastore query (batch 1, K=100)")
    for r in runs:
        b = r["build_1_shard"]
        table.add_row(f"{r['size']:,}", r["index"], f"{b['bytes_per_vector']:.1f}",
                      f"{r['rss_bytes_per_vector']:.1f}", f"{b['train_seconds']:.1f}",
                      f"{b['add_passages_per_s']:,.0f}", f"{r['faiss_direct']['p50_ms']:.2f}",
                      f"{r['ours_1_shard']['p50_ms']:.2f}", f"{r['overhead_ratio']:.2f}x",
                      f"{r['ours_4_shards']['p50_ms']:.2f}/{r['ours_4_shards']['p99_ms']:.2f}",
                      f"{r['ours_4_shards']['qps']:.0f}",
                      f"{r['full_pipeline_4_shards']['p50_ms']:.2f}/"
                      f"{r['full_pipeline_4_shards']['p99_ms']:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
