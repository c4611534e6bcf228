"""SemDeDup (Abbas et al., 2023) inside one cluster: pure numpy, memory bounded by blocks.

Rows are ordered by distance to their centroid (farthest first by default, so the least
prototypical copy survives); a row is removed when its cosine similarity to a row kept
earlier exceeds 1 - eps. The cluster is walked in blocks of `block_rows`: each block is
compared with the kept rows chunk by chunk, so no pairwise matrix exceeds
block_rows x block_rows however large the cluster is, and the result is the same greedy
answer a full matrix would give.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from gristmill.scoring.pruning import l2_normalize

Survivor = Literal["farthest", "nearest"]


class SemDedupResult(NamedTuple):
    """Per input row: index of the kept row it duplicates (-1 when kept) and that cosine."""

    duplicate_of: np.ndarray
    similarity: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        return self.duplicate_of < 0


def walk_order(distances: np.ndarray, survivor: Survivor, tiebreak: np.ndarray) -> np.ndarray:
    """Earlier rows win: farthest from the centroid first, or nearest first."""
    distances = np.asarray(distances, np.float64)
    return np.lexsort((tiebreak, -distances if survivor == "farthest" else distances))


def _best_kept(block: np.ndarray, kept: list[np.ndarray],
               block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Highest similarity of each block row to any kept row, and that row's kept position."""
    best = np.full(len(block), -np.inf, np.float32)
    where = np.full(len(block), -1, np.int64)
    offset = 0
    for chunk in kept:
        for lo in range(0, len(chunk), block_rows):
            sims = block @ chunk[lo:lo + block_rows].T
            column = sims.argmax(axis=1)
            value = sims[np.arange(len(block)), column]
            better = value > best
            best[better] = value[better]
            where[better] = offset + lo + column[better]
        offset += len(chunk)
    return best, where


def semdedup(vectors: np.ndarray, distances: np.ndarray, eps: float, *,
             survivor: Survivor = "farthest", tiebreak: np.ndarray | None = None,
             block_rows: int = 4096) -> SemDedupResult:
    """Greedy semantic dedup of one cluster's rows (see module doc)."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    n = len(vectors)
    duplicate_of = np.full(n, -1, np.int64)
    similarity = np.zeros(n, np.float32)
    if n == 0:
        return SemDedupResult(duplicate_of, similarity)
    tiebreak = np.arange(n, dtype=np.uint64) if tiebreak is None else tiebreak
    order = walk_order(distances, survivor, tiebreak)
    ordered = l2_normalize(vectors[order])
    threshold = np.float32(1.0 - eps)
    kept_vectors: list[np.ndarray] = []
    kept_rows: list[np.ndarray] = []
    for start in range(0, n, block_rows):
        block = ordered[start:start + block_rows]
        best, where = _best_kept(block, kept_vectors, block_rows)
        inner = block @ block.T
        earlier = np.tril(inner, -1) > threshold
        conflicted = (best > threshold) | earlier.any(axis=1)
        keep = ~conflicted
        global_kept = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
        for j in np.flatnonzero(conflicted):
            previous = np.flatnonzero(keep[:j])
            inner_best = inner[j, previous].max() if len(previous) else -np.inf
            row = order[start + j]
            if max(inner_best, best[j]) <= threshold:
                keep[j] = True
            elif inner_best >= best[j]:
                duplicate_of[row] = order[start + previous[inner[j, previous].argmax()]]
                similarity[row] = inner_best
            else:
                duplicate_of[row] = order[global_kept[where[j]]]
                similarity[row] = best[j]
        kept_vectors.append(block[keep])
        kept_rows.append(start + np.flatnonzero(keep))
    return SemDedupResult(duplicate_of, similarity)
