"""The retriever: text queries in, top-k passages out; what the CLI and HTTP API call.

It embeds queries with the datastore's own embedder (recorded in its manifest), searches
every shard, merges, and post-processes each query's candidates.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pyarrow as pa

from gristmill.inference import Embedder
from gristmill.inference.config import EmbedderConfig
from gristmill.retrieval.datastore import Datastore
from gristmill.retrieval.embed_batcher import EmbedFn
from gristmill.retrieval.postprocess import Hit, Passage, SearchOptions, select
from gristmill.retrieval.search import (
    RaySearcher,
    ShardSearcher,
    ThreadSearcher,
    search_candidates,
)

PASSAGE_COLUMNS = ("id", "text", "parent_id", "word_count")
Backend = Literal["threads", "ray"]


def embedder_config(store: Datastore) -> EmbedderConfig:
    """The embedder the datastore was built with (dim and extras are not config fields)."""
    fields = EmbedderConfig.model_fields
    return EmbedderConfig.model_validate(
        {k: v for k, v in store.manifest.embedder.items() if k in fields})


class PassageLookup:
    """Row -> passage for every shard; each shard's columns are read once, on first use."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.tables: dict[int, pa.Table] = {}
        self.lock = threading.Lock()

    def table(self, shard_id: int) -> pa.Table:
        if shard_id not in self.tables:
            with self.lock:
                if shard_id not in self.tables:
                    passages = self.store.passages(shard_id)
                    names = [c for c in PASSAGE_COLUMNS if c in passages.schema.names]
                    self.tables[shard_id] = passages.to_table(columns=names)
        return self.tables[shard_id]

    def __call__(self, shard_id: int, row: int) -> Passage:
        table = self.table(shard_id)
        record = table.slice(row, 1).to_pylist()[0]
        text = record["text"]
        count = record.get("word_count")
        return Passage(id=record["id"], text=text, parent_id=record.get("parent_id"),
                       word_count=len(text.split()) if count is None else count)


class Retriever:
    """A datastore opened for queries: searcher, passages and the query embedder."""

    def __init__(self, store: Datastore, searcher: ShardSearcher,
                 embedder: Embedder | None = None) -> None:
        self.store = store
        self.searcher = searcher
        self.embedder = embedder
        self.lookup = PassageLookup(store)
        self.embed_lock = threading.Lock()

    @classmethod
    def open(cls, uri: str, *, backend: Backend = "threads", workers: int | None = None,
             embed: bool = True) -> Retriever:
        store = Datastore.open(uri)
        if backend == "ray":
            from gristmill.runtime import ensure_ray

            ensure_ray()
            searcher: ShardSearcher = RaySearcher(store, workers or len(store.shard_ids))
        else:
            searcher = ThreadSearcher(store, workers)
        embedder = Embedder(embedder_config(store)).load() if embed else None
        return cls(store, searcher, embedder)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("this retriever was opened without an embedder")
        with self.embed_lock:  # one model per process; batches are serialized through it
            return self.embedder.embed(list(texts))

    def search(self, queries: Sequence[str], options: SearchOptions | None = None,
               eval_texts: Sequence[str] = ()) -> list[list[Hit]]:
        return self.search_vectors(self.embed(queries), options, eval_texts, list(queries))

    def search_vectors(self, vectors: np.ndarray, options: SearchOptions | None = None,
                       eval_texts: Sequence[str] = (),
                       query_texts: Sequence[str] | None = None,
                       rerank_embed: EmbedFn | None = None) -> list[list[Hit]]:
        """Hits per query vector; a rerank re-embeds passages with `rerank_embed` (a server
        passes one that takes turns with other requests), else with this process's model."""
        options = options or SearchOptions()
        found = search_candidates(self.store, self.searcher, vectors, options.candidates,
                                  options.nprobe)
        results = []
        for q in range(len(vectors)):
            valid = found.valid(q)
            evals = list(eval_texts)
            if options.decontaminate_query and query_texts is not None:
                evals.append(query_texts[q])
            rescore = (partial(self.rescore, vectors[q], embed=rerank_embed)
                       if options.rerank else None)
            results.append(select(found.scores[q, valid], found.shards[q, valid],
                                  found.rows[q, valid], self.lookup, options, evals, rescore))
        return results

    def rescore(self, query: np.ndarray, hits: list[Hit], *,
                embed: EmbedFn | None = None) -> np.ndarray:
        """Full inner products for a rerank: stored vectors if kept, else re-embedded text."""
        stored = [self.store.vectors(h.shard_id) for h in hits]
        if all(v is not None for v in stored):
            rows = np.stack([v[h.row] for v, h in zip(stored, hits, strict=True)])
            return rows.astype(np.float32) @ query
        return (embed or self.embed)([h.text for h in hits]) @ query

    def close(self) -> None:
        self.searcher.close()
        if self.embedder is not None:
            self.embedder.close()
