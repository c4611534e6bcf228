"""The datastore's HTTP API: `POST /search` and `GET /health`, served by uvicorn.

Requests are checked before any work, cheapest first: the bearer token and the declared
body size before a byte of the body is read (401; 411 without a Content-Length, 413 over
`max_body_bytes`), then the body against a schema that holds this server's limits (422
naming the failing field; a lone surrogate included), so a bad client never reaches the
index or another client's embedding batch. The server binds to loopback unless told
otherwise. Concurrent requests share query embedding through an `EmbedBatcher` (one model
call for the texts that arrive together; a failed call is retried request by request); each
request then searches in FastAPI's thread pool with its own options, and FAISS releases the
GIL, so concurrent requests overlap on shard search.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Annotated, Any, Self

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)
from starlette.types import ASGIApp, Receive, Scope, Send

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
    max_rerank_depth: int = Field(
        default=200, ge=1, description="Most candidates a request may have re-embedded for a "
                                       "rerank: the model is shared, so this bounds how long "
                                       "one request can hold it")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024,
                                description="Largest request body, checked before reading it")
    batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000,
        description="How long a request's queries wait for other requests to share one "
                    "embedding call; queries queued behind a busy model join without waiting")
    max_embed_batch: int = Field(
        default=64, ge=1, description="Most query texts per shared embedding call (one "
                                      "request's queries are never split)")
    rerank_turn: int = Field(
        default=16, ge=1, description="Passages a rerank re-embeds per turn on the shared "
                                      "model: a light request waits at most about one turn "
                                      "per heavy request ahead of it (16 MiniLM passages take "
                                      "~0.2 s on 2 cores); larger turns finish a rerank sooner")

    @model_validator(mode="after")
    def _exposed_only_with_a_token(self) -> Self:
        if self.token is None and self.host not in LOOPBACK:
            raise ValueError(f"host {self.host!r} exposes the API beyond this machine: "
                             "set a token (--token or GRISTMILL_DATASTORE_TOKEN)")
        return self


def _utf8_text(value: object) -> object:
    """Refuse a lone surrogate (JSON can carry one; UTF-8 and the model cannot) by name."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"holds a lone surrogate U+{ord(value[err.start]):04X}, which "
                             "is not text") from None
    return value


def _text(**limits: Any) -> Any:
    """A string type with `limits` in its schema that refuses lone surrogates by name."""
    return Annotated[str, StringConstraints(**limits), BeforeValidator(_utf8_text)]


def request_model(config: ServerConfig) -> type[BaseModel]:
    """The `POST /search` body with this server's limits in its schema: the OpenAPI spec
    tells a client exactly what is accepted, and anything else is a 422 naming the field.
    `options` takes any SearchOptions field but k (given at the top level)."""
    fields: dict[str, Any] = {name: (info.annotation, info) for name, info
                              in SearchOptions.model_fields.items() if name != "k"}
    fields["candidates"] = (int, Field(default=config.max_candidates, ge=1,
                                       le=config.max_candidates,
                                       description="K: top-K taken from every shard"))
    fields["rerank_depth"] = (int, Field(default=min(100, config.max_rerank_depth), ge=1,
                                         le=config.max_rerank_depth,
                                         description="Survivors re-scored by rerank"))
    options = create_model("SearchRequestOptions", __config__=ConfigDict(extra="forbid"),
                           **fields)
    query = _text(min_length=1, max_length=config.max_query_chars, pattern=r"\S")
    eval_text = _text(max_length=config.max_eval_chars)
    return create_model(
        "SearchRequest", __config__=ConfigDict(extra="forbid"),
        queries=(Annotated[list[query], Field(min_length=1, max_length=config.max_batch)]
                 | query, Field(description="One query or a list of queries")),
        k=(int, Field(default=3, ge=1, le=config.max_k)),
        options=(options, Field(default_factory=options)),
        eval_texts=(list[eval_text], Field(default_factory=list, max_length=config.max_eval_texts,
                                           description="Texts to decontaminate results against")))


class QueryResult(BaseModel):
    query: str
    hits: list[Hit]


class SearchResponse(BaseModel):
    results: list[QueryResult]
    seconds: float


class ErrorDetail(BaseModel):
    """The body of every 4xx and 5xx the API writes itself (422 keeps FastAPI's shape)."""

    detail: str


ERRORS = {status: {"model": ErrorDetail, "description": meaning} for status, meaning in {
    401: "missing or wrong bearer token",
    411: "no Content-Length", 413: "body over max_body_bytes",
    500: "the query embedding failed"}.items()}


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a 422 echoes the client's input, and a lone surrogate
    in it (valid in JSON, not in UTF-8) must not turn the refusal into a 500."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def _queries_and_options(request: BaseModel) -> tuple[list[str], SearchOptions]:
    queries = [request.queries] if isinstance(request.queries, str) else request.queries
    options = SearchOptions(**request.options.model_dump(), k=request.k)
    return queries, options.with_(candidates=max(options.candidates, options.k))


async def _embed(batcher: EmbedBatcher, queries: list[str]) -> np.ndarray:
    """This request's query vectors from a shared call; a failed call is this request's 500."""
    try:
        return await asyncio.wrap_future(batcher.submit(queries))
    except Exception as err:
        raise HTTPException(500, f"query embedding failed: {type(err).__name__}: {err}") from err


class RequestGate:
    """ASGI middleware in front of the API: on `POST /search` the bearer token and the
    declared body size are checked before the app reads the body, so an unauthorized or
    oversized request costs no parsing and no memory. uvicorn refuses a body longer than its
    Content-Length, so checking the header bounds what is read."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.token = None if config.token is None else f"Bearer {config.token}".encode()
        self.max_body_bytes = config.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/search":
            refusal = self._refusal(dict(scope["headers"]))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[bytes, bytes]) -> JSONResponse | None:
        if self.token is not None and not hmac.compare_digest(
                headers.get(b"authorization", b""), self.token):
            return JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length", b"")
        if not length.isdigit():
            return JSONResponse({"detail": "a body needs a Content-Length"}, 411)
        if int(length) > self.max_body_bytes:
            return JSONResponse({"detail": f"body of {int(length)} bytes; at most "
                                           f"{self.max_body_bytes}"}, 413)
        return None


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
    app.add_middleware(RequestGate, config=config)

    @app.exception_handler(RequestValidationError)
    async def refuse(request: Request, error: RequestValidationError) -> AsciiJSONResponse:
        return AsciiJSONResponse({"detail": jsonable_encoder(error.errors())}, 422)

    bearer = [Security(HTTPBearer(auto_error=False))] if config.token is not None else []

    @app.get("/health")
    def health() -> dict[str, object]:
        manifest = retriever.store.manifest
        return {"status": "ok", "shards": len(manifest.shards),
                "vectors": manifest.total_vectors, "index": manifest.index.kind,
                "dim": manifest.dim}

    async def search(request: BaseModel, http: Request) -> SearchResponse:
        queries, options = _queries_and_options(request)
        started = time.perf_counter()
        vectors = await _embed(http.app.state.batcher, queries)
        hits = await run_in_threadpool(retriever.search_vectors, vectors, options,
                                       request.eval_texts, queries,
                                       partial(http.app.state.batcher.embed_in_turns,
                                               turn=config.rerank_turn))
        return SearchResponse(
            results=[QueryResult(query=q, hits=h) for q, h in zip(queries, hits, strict=True)],
            seconds=time.perf_counter() - started)

    search.__annotations__["request"] = request_model(config)  # FastAPI reads the body's
    app.post("/search", dependencies=bearer, responses=ERRORS)(search)  # schema from here
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
