"""`gristmill datastore plan | query | serve`: size, search and serve a datastore."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gristmill.retrieval.datastore import DatastoreError
from gristmill.retrieval.plan import PlanConfig, human_bytes, make_plan
from gristmill.retrieval.postprocess import SearchOptions
from gristmill.retrieval.retriever import Backend

app = typer.Typer(help="The retrieval datastore: plan its size, query it, serve it over HTTP.",
                  no_args_is_help=True)
console = Console()

DatastoreArg = Annotated[str, typer.Argument(help="Datastore folder or URI")]


@app.command()
def plan(
    tokens: Annotated[float, typer.Option(help="Corpus size in tokens, e.g. 1e12")] = 1e12,
    dim: Annotated[int, typer.Option(help="Embedding dimension")] = 768,
    tokens_per_passage: Annotated[int, typer.Option()] = 256,
    gpu_rate: Annotated[float, typer.Option(
        help="Measured passages/s per GPU for the embedder")] = 9000.0,
    vectors_per_shard: Annotated[int, typer.Option()] = 50_000_000,
    node_ram_gb: Annotated[float, typer.Option(help="RAM per search node, GB")] = 512.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
) -> None:
    """Shards, vectors, bytes per vector, RAM and disk per node, embedding GPU-hours."""
    result = make_plan(PlanConfig(tokens=tokens, dim=dim, tokens_per_passage=tokens_per_passage,
                                  passages_per_gpu_second=gpu_rate,
                                  vectors_per_shard=vectors_per_shard,
                                  node_ram_bytes=node_ram_gb * 1e9))
    if as_json:
        console.print_json(result.model_dump_json())
        return
    console.print(f"[bold]{tokens:.3g} tokens[/] -> {result.vectors:,.0f} passages/vectors in "
                  f"{result.shards:,} shards; passage text {human_bytes(result.text_bytes)}; "
                  f"embedding {result.embedding_gpu_hours:,.1f} GPU-hours at {gpu_rate:,.0f}/s")
    table = Table("index", "bytes/vector", "index size", "nodes", "RAM/node", "disk/node")
    for row in result.indexes:
        table.add_row(row.index, str(row.bytes_per_vector), human_bytes(row.index_bytes),
                      str(row.nodes), human_bytes(row.ram_per_node_bytes),
                      human_bytes(row.disk_per_node_bytes))
    console.print(table)


@app.command()
def query(
    datastore: DatastoreArg,
    text: Annotated[list[str], typer.Argument(help="One or more queries")],
    k: Annotated[int, typer.Option("-k", help="Passages per query")] = 3,
    candidates: Annotated[int, typer.Option(help="K taken from every shard")] = 1000,
    nprobe: Annotated[int | None, typer.Option()] = None,
    subsample: Annotated[float | None, typer.Option(help="Datastore rate p")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    rerank: Annotated[bool, typer.Option(help="Re-score with exact embeddings")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the datastore and print the top-k passages per query."""
    from gristmill.retrieval.retriever import Retriever

    try:
        options = SearchOptions(k=k, candidates=candidates, nprobe=nprobe, subsample=subsample,
                                seed=seed, rerank=rerank)
        retriever = Retriever.open(datastore)
        results = retriever.search(text, options)
    except (DatastoreError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps([[h.model_dump() for h in hits] for hits in results]))
        return
    for question, hits in zip(text, results, strict=True):
        console.print(f"[bold]{question}[/]")
        for rank, hit in enumerate(hits, 1):
            console.print(f"  {rank}. [cyan]{hit.score:.4f}[/] shard {hit.shard_id} "
                          f"{hit.id[:12]}  {hit.text[:160]}")


@app.command()
def serve(
    datastore: DatastoreArg,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 exposes it")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    token: Annotated[str | None, typer.Option(
        envvar="GRISTMILL_DATASTORE_TOKEN", help="Require this bearer token")] = None,
    backend: Annotated[Backend, typer.Option(help="Shards on threads, or on Ray actors")] =
        "threads",
    workers: Annotated[int | None, typer.Option(help="Threads or Ray actors")] = None,
    batch_wait_ms: Annotated[float, typer.Option(
        help="How long a request waits for others to share one query-embedding call")] = 2.0,
    max_embed_batch: Annotated[int, typer.Option(
        help="Most query texts per shared embedding call")] = 64,
    rerank_turn: Annotated[int, typer.Option(
        help="Passages a rerank re-embeds per turn on the shared model")] = 16,
) -> None:
    """Serve POST /search and GET /health with uvicorn."""
    from gristmill.net import base_url
    from gristmill.retrieval.retriever import Retriever
    from gristmill.retrieval.server import ServerConfig
    from gristmill.retrieval.server import serve as run_server

    try:
        settings = ServerConfig(host=host, port=port, token=token, batch_wait_ms=batch_wait_ms,
                                max_embed_batch=max_embed_batch, rerank_turn=rerank_turn)
        retriever = Retriever.open(datastore, backend=backend, workers=workers)
    except (DatastoreError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from None
    console.print(f"serving {datastore} ({retriever.store.manifest.total_vectors:,} vectors) "
                  f"on {base_url(host, port)}")
    run_server(retriever, settings)
