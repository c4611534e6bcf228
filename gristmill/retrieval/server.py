"""The datastore's HTTP API: `POST /search` and `GET /health`, served by uvicorn.

Requests are validated before any work (422 with the failing field for a malformed body,
400 for limits, 401 for a missing or wrong bearer token), so a bad client never reaches the
index. The server binds to loopback unless told otherwise. Concurrent requests share query
embedding through an `EmbedBatcher` (one model call for the texts that arrive together); each
request then searches in FastAPI's thread pool with its own options, and FAISS releases the
GIL, so concurrent requests overlap on shard search.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Self

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.config import FrozenModel
from gristmill.net import base_url
from gristmill.retrieval.embed_batcher import EmbedBatcher
from gristmill.retrieval.postprocess import Hit, SearchOptions
from gristmill.retrieval.retriever import Retriever

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServerConfig(FrozenModel):
    """Where to listen and what a single request may ask for."""

    host: str = Field(default="127.0.0.1", description="Loopback by default; 0.0.0.0 exposes it")
    port: int = Field(default=8765, ge=0, le=65535)
    token: str | None = Field(default=None, min_length=8,
                              description="Require `Authorization: Bearer <token>`")
    max_query_chars: int = Field(default=2000, ge=1)
    max_batch: int = Field(default=64, ge=1, description="Queries per request")
    max_k: int = Field(default=100, ge=1)
    max_candidates: int = Field(default=1000, ge=1, description="Largest K a request may ask")
    max_eval_texts: int = Field(default=64, ge=0)
    max_eval_chars: int = Field(default=20_000, ge=1, description="Characters per eval text")
    batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000,
        description="How long a request's queries wait for other requests to share one "
                    "embedding call; queries queued behind a busy model join without waiting")
    max_embed_batch: int = Field(
        default=64, ge=1, description="Most query texts per shared embedding call (one "
                                      "request's queries are never split)")

    @model_validator(mode="after")
    def _exposed_only_with_a_token(self) -> Self:
        if self.token is None and self.host not in LOOPBACK:
            raise ValueError(f"host {self.host!r} exposes the API beyond this machine: "
                             "set a token (--token or GRISTMILL_DATASTORE_TOKEN)")
        return self


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[str] | str = Field(description="One query or a list of queries")
    k: int = Field(default=3, ge=1)
    options: dict[str, object] = Field(
        default_factory=dict, description="Any SearchOptions field except k")
    eval_texts: list[str] = Field(default_factory=list,
                                  description="Texts to decontaminate the results against")


class QueryResult(BaseModel):
    query: str
    hits: list[Hit]


class SearchResponse(BaseModel):
    results: list[QueryResult]
    seconds: float


def _limits(request: SearchRequest, config: ServerConfig) -> tuple[list[str], SearchOptions]:
    queries = [request.queries] if isinstance(request.queries, str) else request.queries
    problems = []
    if not queries:
        problems.append("queries is empty")
    if len(queries) > config.max_batch:
        problems.append(f"{len(queries)} queries; at most {config.max_batch} per request")
    if any(not q.strip() for q in queries):
        problems.append("a query is empty or blank")
    long = [i for i, q in enumerate(queries) if len(q) > config.max_query_chars]
    if long:
        problems.append(f"queries {long[:5]} exceed {config.max_query_chars} characters")
    if request.k > config.max_k:
        problems.append(f"k={request.k}; at most {config.max_k}")
    if len(request.eval_texts) > config.max_eval_texts:
        problems.append(f"{len(request.eval_texts)} eval_texts; at most {config.max_eval_texts}")
    if any(len(text) > config.max_eval_chars for text in request.eval_texts):
        problems.append(f"an eval text exceeds {config.max_eval_chars} characters")
    if "k" in request.options:
        problems.append("give k at the top level, not in options")
    if problems:
        raise HTTPException(400, "; ".join(problems))
    try:
        options = SearchOptions.model_validate({**request.options, "k": request.k})
    except ValueError as err:
        raise HTTPException(422, f"invalid options: {err}") from err
    if options.candidates > config.max_candidates:
        raise HTTPException(400, f"candidates={options.candidates}; at most "
                                 f"{config.max_candidates}")
    return queries, options.with_(candidates=max(options.candidates, options.k))


async def _embed(batcher: EmbedBatcher, queries: list[str]) -> np.ndarray:
    """This request's query vectors from a shared call; a failed call is this request's 500."""
    try:
        return await asyncio.wrap_future(batcher.submit(queries))
    except Exception as err:
        raise HTTPException(500, f"query embedding failed: {type(err).__name__}: {err}") from err


def create_app(retriever: Retriever, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = EmbedBatcher(retriever.embed, max_texts=config.max_embed_batch,
                               wait_s=config.batch_wait_ms / 1000)
        app.state.batcher = batcher
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(title="gristmill datastore", version="1", lifespan=lifespan)

    def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        if config.token is None:
            return
        expected = f"Bearer {config.token}"
        if authorization is None or not hmac.compare_digest(authorization.encode(),
                                                            expected.encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict[str, object]:
        manifest = retriever.store.manifest
        return {"status": "ok", "shards": len(manifest.shards),
                "vectors": manifest.total_vectors, "index": manifest.index.kind,
                "dim": manifest.dim}

    @app.post("/search", dependencies=[Depends(authorize)])
    async def search(request: SearchRequest, http: Request) -> SearchResponse:
        queries, options = _limits(request, config)
        started = time.perf_counter()
        vectors = await _embed(http.app.state.batcher, queries)
        hits = await run_in_threadpool(retriever.search_vectors, vectors, options,
                                       request.eval_texts, queries)
        return SearchResponse(
            results=[QueryResult(query=q, hits=h) for q, h in zip(queries, hits, strict=True)],
            seconds=time.perf_counter() - started)

    return app


def serve(retriever: Retriever, config: ServerConfig) -> None:
    """Run uvicorn in this process until interrupted."""
    import uvicorn

    uvicorn.run(create_app(retriever, config), host=config.host, port=config.port,
                log_level="warning")


@contextmanager
def serve_in_thread(retriever: Retriever, config: ServerConfig | None = None,
                    *, start_timeout: float = 30.0) -> Iterator[str]:
    """Run the API on a background thread (a notebook, a test) and yield its base URL.

    Port 0 in the config (the default here) takes a free port from the OS, so callers never
    race for one; the server stops and the batcher shuts down when the block exits.
    """
    import uvicorn

    config = config or ServerConfig(port=0)
    server = uvicorn.Server(uvicorn.Config(create_app(retriever, config), host=config.host,
                                           port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gristmill-datastore-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the datastore API did not start on {config.host}:{config.port}")
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield base_url(host, port)
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)
