"""HTTP API load test: many concurrent clients against `gristmill datastore serve`.

Why: the API must stay correct and responsive under concurrent clients, a heavy request
included. The server runs as a real subprocess (`gristmill datastore serve`, uvicorn on
127.0.0.1, bearer token) over a datastore of 100k synthetic 384-d vectors in 4 Flat shards.
A light request is one real Brown sentence, embedded by the server with MiniLM, k=3 from
K=100 candidates; meanwhile --heavy-clients others send the largest rerank the server allows,
back to back (k=100, 200 passages re-embedded per request). The light requests' latency is
the figure. Concurrent requests share embedding calls (--batch-wait-ms, --max-embed-batch;
--batch-wait-ms 0 still joins the requests queued behind a busy model). Every response is
checked (status 200, k hits); the run fails on any error. The server stays a separate process
(not `serve_in_thread`) so the client threads do not share its interpreter.

Run: python bench/datastore_api_load.py [--clients 32] [--requests 200] [--vectors 100000]
     [--batch-wait-ms 2] [--max-embed-batch 64] [--rerank-turn 16] [--heavy-clients 2]
(--max-embed-batch 1 gives every single-query request its own embedding call, as before
sharing.)
Writes bench/results/datastore_api_load.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

from gristmill.net import free_port
from gristmill.retrieval.datastore import IndexSpec, build_from_arrays
from gristmill.sources import resolve

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".gristmill" / "bench" / "datastore_api_load"
RESULTS = Path(__file__).resolve().parent / "results" / "datastore_api_load.json"
TOKEN = "bench-token"
console = Console(width=160)


def build(uri: Path, vectors: int, shards: int = 4) -> None:
    if uri.exists():
        shutil.rmtree(uri)
    rng = np.random.default_rng(0)
    per = vectors // shards
    parts = {}
    for s in range(shards):
        matrix = rng.standard_normal((per, 384)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        ids = [f"s{s}-{i}" for i in range(per)]
        texts = [f"passage {s} {i} " + " ".join(f"w{(i * 7 + j) % 5000}" for j in range(16))
                 for i in range(per)]
        parts[s] = (matrix, pa.table({"id": ids, "text": texts}))
    build_from_arrays(str(uri), IndexSpec(), parts, embedder={"max_seq_length": 128})


def sentences(count: int) -> list[str]:
    out = []
    for line in resolve("brown").files[0].read_text().splitlines():
        for sentence in json.loads(line)["text"].replace("\n", " ").split(". "):
            if 6 <= len(sentence.split()) <= 40:
                out.append(sentence)
            if len(out) == count:
                return out
    return out


def start_server(uri: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "GRISTMILL_DATASTORE_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gristmill.cli", "datastore", "serve", str(uri),
         "--port", str(port), "--batch-wait-ms", str(args.batch_wait_ms),
         "--max-embed-batch", str(args.max_embed_batch), "--rerank-turn", str(args.rerank_turn)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("server did not become healthy in 300 s")


LIGHT = {"k": 3, "options": {"candidates": 100}}
HEAVY = {"k": 100, "options": {"candidates": 1000, "rerank": True, "rerank_depth": 200}}
"""A heavy request: the server's largest rerank, 200 passages re-embedded for one query."""


def client(base: str, queries: list[str], requests: int | threading.Event, offset: int,
           latencies: list[float], errors: list[str], body: dict[str, Any]) -> None:
    """Send `requests` requests one after another (or until the event is set)."""
    count = range(requests) if isinstance(requests, int) else iter(int, 1)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=300) as http:
        for n, _ in enumerate(count):
            if isinstance(requests, threading.Event) and requests.is_set():
                return
            query = queries[(offset + n) % len(queries)]
            started = time.perf_counter()
            try:
                response = http.post("/search", json={"queries": query, **body})
                elapsed = time.perf_counter() - started
                hits = response.json()["results"][0]["hits"] if response.status_code == 200 \
                    else []
                if response.status_code != 200 or len(hits) != body["k"]:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as err:
                elapsed = time.perf_counter() - started
                errors.append(f"{type(err).__name__}: {err}")
            latencies.append(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200, help="Per client")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0,
                        help="Server window for sharing one embedding call")
    parser.add_argument("--max-embed-batch", type=int, default=64,
                        help="Server cap on query texts per embedding call")
    parser.add_argument("--rerank-turn", type=int, default=16,
                        help="Server: passages a rerank re-embeds per turn")
    parser.add_argument("--heavy-clients", type=int, default=2,
                        help="Clients sending the heaviest rerank back to back meanwhile")
    args = parser.parse_args()
    uri = WORK_DIR / "ds"
    build(uri, args.vectors)
    queries = sentences(2000)
    port = free_port()
    server = start_server(uri, port, args)
    base = f"http://127.0.0.1:{port}"
    try:
        latencies: list[float] = []
        errors: list[str] = []
        heavy_latencies: list[float] = []
        light_done = threading.Event()
        load_before = load_average()
        heavy = [threading.Thread(target=client, args=(
            base, queries, light_done, 10_000 + c * 1000, heavy_latencies, errors, HEAVY))
            for c in range(args.heavy_clients)]
        for thread in heavy:
            thread.start()
        if heavy:
            time.sleep(2.0)
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(
            base, queries, args.requests, c * args.requests, latencies, errors, LIGHT))
            for c in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        light_done.set()
        for thread in heavy:
            thread.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(WORK_DIR, ignore_errors=True)
    ordered = sorted(latencies)
    report: dict[str, Any] = {
        "clients": args.clients, "requests_per_client": args.requests,
        "vectors": args.vectors, "shards": 4, "index": "Flat", "k": 3, "candidates": 100,
        "batch_wait_ms": args.batch_wait_ms, "max_embed_batch": args.max_embed_batch,
        "rerank_turn": args.rerank_turn,
        "requests": len(latencies), "errors": len(errors), "first_errors": errors[:5],
        "wall_seconds": wall, "throughput_rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
        "max_ms": 1000 * ordered[-1],
        "heavy_clients": args.heavy_clients, "heavy_request": HEAVY,
        "heavy_requests": len(heavy_latencies),
        "heavy_p50_ms": 1000 * statistics.median(heavy_latencies) if heavy_latencies else None,
        "cores": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": load_average()}
    write_json(RESULTS, report)
    table = Table("light clients x requests", "heavy clients (requests, p50 ms)",
                  "wait ms / max batch", "errors", "light req/s", "p50 ms", "p90 ms", "p99 ms",
                  "max ms", title="datastore HTTP API under load: light requests' latency")
    heavy_p50 = report["heavy_p50_ms"]
    table.add_row(f"{args.clients} x {args.requests}",
                  f"{args.heavy_clients} ({len(heavy_latencies)}, "
                  f"{'-' if heavy_p50 is None else f'{heavy_p50:.0f}'})",
                  f"{args.batch_wait_ms:g} / {args.max_embed_batch}",
                  str(len(errors)),
                  f"{report['throughput_rps']:.1f}", f"{report['p50_ms']:.0f}",
                  f"{report['p90_ms']:.0f}", f"{report['p99_ms']:.0f}",
                  f"{report['max_ms']:.0f}")
    console.print(table)
    if errors:
        raise SystemExit(f"{len(errors)} errors, first: {errors[0]}")


if __name__ == "__main__":
    main()
