"""Search a datastore: top-K from every shard, merged into the exact global top-K.

Each shard returns its own top-K by inner product; the global top-K is among the union of
those lists, so sorting the union by score (ties by shard, then row) gives exactly what one
index over every vector would return. Shards are searched in parallel: threads in this
process (FAISS releases the GIL), or Ray actors that each hold some shards, on any node.
A datastore with no shards is valid (built from an empty input): every query gets K empty
slots, so no hits, whichever searcher runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gristmill.retrieval.datastore import Datastore, as_matrix, set_nprobe

MISSING = -1
"""FAISS's id for an empty slot (a shard with fewer than K vectors)."""


@dataclass(frozen=True)
class Candidates:
    """Merged results for a batch of queries: (nq, K) scores, shard ids and row ids."""

    scores: np.ndarray
    shards: np.ndarray
    rows: np.ndarray

    def valid(self, query: int) -> np.ndarray:
        """Positions of real (non-empty) candidates of one query, best first."""
        return np.flatnonzero(self.rows[query] != MISSING)

    @classmethod
    def empty(cls, queries: int, k: int) -> Candidates:
        """No candidates for any query: what a datastore without shards returns."""
        return cls(scores=np.full((queries, k), -np.inf, np.float32),
                   shards=np.full((queries, k), MISSING, np.int64),
                   rows=np.full((queries, k), MISSING, np.int64))


def merge_topk(per_shard: Sequence[tuple[int, np.ndarray, np.ndarray]], k: int) -> Candidates:
    """Union of each shard's (scores, rows), cut to the global top-k per query.

    Order: score descending, then shard id, then row; empty slots sort last.
    """
    scores = np.concatenate([s for _, s, _ in per_shard], axis=1)
    rows = np.concatenate([r for _, _, r in per_shard], axis=1)
    shards = np.concatenate([np.full(r.shape, sid, np.int64) for sid, _, r in per_shard],
                            axis=1)
    masked = np.where(rows == MISSING, -np.inf, scores)
    order = np.lexsort((rows, shards, -masked), axis=1)[:, :k]
    take = np.take_along_axis
    return Candidates(scores=take(masked, order, 1), shards=take(shards, order, 1),
                      rows=take(rows, order, 1))


class ShardSearcher(Protocol):
    """Runs one batch of queries against every shard; returns (shard, scores, rows)."""

    def search(self, queries: np.ndarray, k: int,
               nprobe: int | None) -> list[tuple[int, np.ndarray, np.ndarray]]: ...

    def close(self) -> None: ...


def search_shard(store: Datastore, shard_id: int, queries: np.ndarray, k: int,
                 nprobe: int | None) -> tuple[int, np.ndarray, np.ndarray]:
    index = store.index(shard_id)
    if nprobe is not None:
        index = _with_nprobe(index, nprobe)
    scores, rows = index.search(queries, k)
    return shard_id, scores, rows.astype(np.int64)


def _with_nprobe(index: Any, nprobe: int) -> Any:
    """FAISS's search parameters are per call only through a params object; IVF indexes are
    shared between threads, so a request's nprobe goes through SearchParametersIVF."""
    import faiss

    if faiss.try_extract_index_ivf(index) is None:
        return index
    return _ParamIndex(index, faiss.SearchParametersIVF(nprobe=nprobe))


@dataclass(frozen=True)
class _ParamIndex:
    index: Any
    params: Any

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k, params=self.params)


class ThreadSearcher:
    """Every shard in this process, searched by a thread pool."""

    def __init__(self, store: Datastore, threads: int | None = None) -> None:
        self.store = store.load()
        workers = threads or min(len(store.shard_ids), 8) or 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-search")

    def search(self, queries: np.ndarray, k: int,
               nprobe: int | None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        jobs = [self.pool.submit(search_shard, self.store, s, queries, k, nprobe)
                for s in self.store.shard_ids]
        return [job.result() for job in jobs]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class ShardGroupActor:
    """A Ray actor holding some shards' indexes in its memory (one per node at scale)."""

    def __init__(self, uri: str, shard_ids: list[int], nprobe: int, verify: bool) -> None:
        self.store = Datastore.open(uri, verify=verify)
        self.shard_ids = shard_ids
        for shard_id in shard_ids:
            set_nprobe(self.store.index(shard_id), nprobe)

    def search(self, queries: np.ndarray, k: int,
               nprobe: int | None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        return [search_shard(self.store, s, queries, k, nprobe) for s in self.shard_ids]

    def node_id(self) -> str:
        """The Ray node holding these shards, so a cluster shows where its indexes live."""
        import ray

        return ray.get_runtime_context().get_node_id()


class RaySearcher:
    """Shards spread round-robin over `actors` Ray actors (one at least, one per shard at
    most), searched in parallel; a datastore without shards gets no actors and skips Ray."""

    def __init__(self, store: Datastore, actors: int, num_cpus: float = 1.0) -> None:
        import ray

        remote = ray.remote(num_cpus=num_cpus)(ShardGroupActor)
        ids = store.shard_ids
        count = min(max(actors, 1), len(ids))
        groups = [ids[i::count] for i in range(count)]
        self.actors = [remote.remote(store.uri, g, store.manifest.index.nprobe, store.verify)
                       for g in groups]

    def search(self, queries: np.ndarray, k: int,
               nprobe: int | None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        import ray

        if not self.actors:
            return []
        parts = ray.get([a.search.remote(queries, k, nprobe) for a in self.actors])
        return [item for part in parts for item in part]

    def nodes(self) -> list[str]:
        """The Ray node of each actor, in actor order."""
        import ray

        return ray.get([a.node_id.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def search_candidates(store: Datastore, searcher: ShardSearcher, queries: np.ndarray, k: int,
                      nprobe: int | None = None) -> Candidates:
    """The exact global top-k over all shards (exact for Flat; per-shard approximate for
    IVF-PQ, merged exactly); all slots empty when the datastore has no shards."""
    matrix = as_matrix(queries, store.manifest.dim)
    per_shard = searcher.search(matrix, k, nprobe)
    if not per_shard:
        return Candidates.empty(len(matrix), k)
    return merge_topk(per_shard, k)
