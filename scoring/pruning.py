"""Self-supervised prototype pruning (Sorscher et al., 2022): pure numpy + FAISS, no I/O.

Embed, run spherical k-means, and score each example by its cosine distance to the nearest
centroid: small = easy (prototypical), large = hard. Which end to keep depends on how much
data there is: with abundant data keep hard examples, with scarce data keep easy ones, and
the useful fraction to keep shrinks as data grows, down to a floor set by how imperfect the
metric is. k-means trains on a sample; assignment streams batch by batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xxhash

Strategy = Literal["easy", "hard", "auto"]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows as contiguous float32 (FAISS needs both); zero rows stay zero."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), np.float32)


def effective_clusters(requested: int, rows: int) -> int:
    """k-means needs at least one row per centroid: k is cut to the rows there are."""
    if rows < 1:
        raise ValueError("no vectors to cluster: every row was rejected or the input is empty")
    return min(requested, rows)


def train_spherical_kmeans(sample: np.ndarray, clusters: int, *, iterations: int = 20,
                           seed: int = 0) -> np.ndarray:
    """Unit-norm centroids (k, d) from a sample, k cut to the sample size if it is smaller.

    FAISS's own subsampling is off: the caller already chose the sample (deterministically),
    so the centroids depend only on it and the seed.
    """
    import faiss

    sample = l2_normalize(sample)
    k = effective_clusters(clusters, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=iterations, seed=seed, spherical=True,
                          verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=max(1, -(-len(sample) // k)))
    kmeans.train(sample)
    return l2_normalize(kmeans.centroids)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid per row, cosine distance 1 - cos to it): the prototype score."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    similarity, nearest = index.search(l2_normalize(vectors), 1)
    distance = np.clip(1.0 - similarity[:, 0], 0.0, 2.0).astype(np.float32)
    return nearest[:, 0].astype(np.int32), distance


def tiebreak_keys(ids: list[str]) -> np.ndarray:
    """A stable 64-bit key per id: equal scores are ordered the same in any row order."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids), np.uint64, len(ids))


def keep_hard(strategy: Strategy, pool_rows: int, budget_rows: int | None,
              abundance_ratio: float = 1.0) -> bool:
    """Which end to keep. auto: hard when the pool holds at least `abundance_ratio` times
    the budget (abundant data), easy when data is scarce relative to the budget."""
    if strategy != "auto":
        return strategy == "hard"
    if budget_rows is None:
        raise ValueError("strategy=auto needs budget_rows: how much data the training run "
                         "can use decides whether data is abundant (keep hard) or scarce")
    return pool_rows >= abundance_ratio * budget_rows


def resolve_keep_fraction(keep_fraction: float | None, pool_rows: int, budget_rows: int | None,
                          min_keep_fraction: float = 0.0) -> float:
    """The configured fraction, or (None) the budget's share of the pool: the more data per
    budget, the smaller the fraction, never under `min_keep_fraction` (the metric's floor)."""
    if keep_fraction is not None:
        return keep_fraction
    if budget_rows is None:
        raise ValueError("keep_fraction=None needs budget_rows to derive the fraction")
    if pool_rows == 0:
        return 1.0
    return float(np.clip(budget_rows / pool_rows, min_keep_fraction, 1.0))


def _quotas(labels: np.ndarray, total: int) -> dict[int, int]:
    clusters, sizes = np.unique(labels, return_counts=True)
    return cluster_quotas(clusters, sizes, total)


def cluster_quotas(clusters: np.ndarray, sizes: np.ndarray, total: int) -> dict[int, int]:
    """Per-cluster keep counts proportional to size, summing exactly to `total` (largest
    remainder, ties to the smaller cluster id). `clusters` ascending, sizes > 0."""
    exact = sizes * (total / int(sizes.sum()))
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.lexsort((clusters, -(exact - counts)))
    counts[order[:short]] += 1
    return dict(zip(clusters.tolist(), counts.tolist(), strict=True))


def _ranked(scores: np.ndarray, hard: bool, tiebreak: np.ndarray) -> np.ndarray:
    """Indices best-first: highest score first when keeping hard, lowest when keeping easy."""
    return np.lexsort((tiebreak, -scores if hard else scores))


def select_prototypes(scores: np.ndarray, keep_fraction: float, *, hard: bool,
                      labels: np.ndarray | None = None, balance: bool = False,
                      tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Keep mask: the `keep_fraction` hardest (or easiest) rows by prototype score, over the
    whole pool or, with `balance`, the same fraction from every cluster, so no topic whose
    examples sit far from its centroid is dropped wholesale."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    scores = np.asarray(scores, np.float64)
    n = len(scores)
    tiebreak = np.arange(n, dtype=np.uint64) if tiebreak is None else tiebreak
    total = round(keep_fraction * n)
    keep = np.zeros(n, bool)
    if n == 0 or total == 0:
        return keep
    if not balance:
        keep[_ranked(scores, hard, tiebreak)[:total]] = True
        return keep
    if labels is None:
        raise ValueError("balance=True needs the cluster labels")
    for cluster, count in _quotas(labels, total).items():
        members = np.flatnonzero(labels == cluster)
        best = _ranked(scores[members], hard, tiebreak[members])[:count]
        keep[members[best]] = True
    return keep
