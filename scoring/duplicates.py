"""Duplicate groups, one implementation for every place that removes duplicates.

Prune's dedup, ScaleQuest's question dedup and the datastore's result post-processing all
call these functions and get the same thing back: `Duplicates`, a map from each removed
row's id to a `Duplicate` naming the row of its group that survives. The ids must be unique
(row identity, not content: two copies of one text are two rows).

The survivor rule, the same everywhere:
- exact (equal content keys) and MinHash groups keep the member that comes first in the
  caller's `rank` (the datastore passes its result order, so the best-scoring passage
  survives), ties and the default broken by the smaller id. Ids are hashes, so by default
  this is a fixed, layout-independent choice: the same rows survive at any shard size,
  worker count or input order.
- semantic groups (SemDeDup, inside one k-means cluster) keep the member farthest from the
  centroid (the paper's default) or the nearest, ties broken by a hash of the id.
Passes run in sequence, each over what the earlier ones kept; `follow_survivors` then points
every removed row at the row that is finally kept, so no `duplicate_of` names a row that a
later pass removed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from gristmill.scoring.near_dup import jaccard, leader_verified_groups, near_duplicate_pairs
from gristmill.scoring.pruning import tiebreak_keys
from gristmill.scoring.semdedup import Survivor, semdedup


class Duplicate(NamedTuple):
    """Why a row is removed, the row kept in its place, and how close the two are."""

    reason: str
    """exact_duplicate, near_duplicate (MinHash) or semantic_duplicate."""
    duplicate_of: str
    """The id of the row its group keeps."""
    score: float
    """Estimated Jaccard (exact and MinHash) or cosine (semantic) to `matched`."""
    matched: str = ""
    """The row it was found to match, when a later pass removed that one (else empty)."""


Duplicates = dict[str, Duplicate]


class RepeatedIdError(ValueError):
    """Two rows share an id: decisions key on ids, so a shared id would take every row
    that carries it with one decision."""


def require_unique(ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        repeated = next(i for i, count in Counter(ids).items() if count > 1)
        raise RepeatedIdError(
            f"id {repeated!r} is on more than one row: dedup needs an id per row (re-ingest "
            "data whose ids are content hashes, as gristmill's were before text_hash)")


def survivor_order(ids: Sequence[str], rank: Sequence[Any] | None = None) -> np.ndarray:
    """Row indices in survivor order: by rank (when given), then by id."""
    require_unique(ids)
    if rank is None:
        return np.argsort(np.asarray(ids, dtype=object), kind="stable")
    return np.array(sorted(range(len(ids)), key=lambda i: (rank[i], ids[i])), np.int64)


def exact_duplicates(ids: Sequence[str], keys: Sequence[str],
                     rank: Sequence[Any] | None = None) -> Duplicates:
    """Rows sharing a content key; the first in survivor order stays."""
    first: dict[str, str] = {}
    found: Duplicates = {}
    for row in survivor_order(ids, rank).tolist():
        kept = first.setdefault(keys[row], ids[row])
        if kept != ids[row]:
            found[ids[row]] = Duplicate("exact_duplicate", kept, 1.0)
    return found


def minhash_duplicates(ids: Sequence[str], signatures: np.ndarray, threshold: float,
                       rank: Sequence[Any] | None = None) -> Duplicates:
    """MinHash LSH groups: the first in survivor order stays, and a row is removed as its
    duplicate only at estimated Jaccard >= threshold to it (`leader_verified_groups`)."""
    order = survivor_order(ids, rank)
    ordered = np.asarray(signatures)[order]
    groups = np.zeros(0, np.int64)
    if len(order):
        pairs = near_duplicate_pairs(ordered, threshold)
        groups = leader_verified_groups(ordered, pairs, threshold)
    found: Duplicates = {}
    for position in np.flatnonzero(groups != np.arange(len(groups))).tolist():
        leader = int(groups[position])
        found[ids[order[position]]] = Duplicate(
            "near_duplicate", ids[order[leader]],
            float(jaccard(ordered[position], ordered[leader])))
    return found


def semantic_duplicates(ids: Sequence[str], vectors: np.ndarray, distances: np.ndarray,
                        eps: float, *, survivor: Survivor = "farthest",
                        block_rows: int = 4096) -> Duplicates:
    """SemDeDup over one cluster's rows: cosine > 1 - eps to a kept row removes a row."""
    require_unique(ids)
    result = semdedup(vectors, distances, eps, survivor=survivor,
                      tiebreak=tiebreak_keys(list(ids)), block_rows=block_rows)
    return {ids[row]: Duplicate("semantic_duplicate", ids[int(result.duplicate_of[row])],
                                float(result.similarity[row]))
            for row in np.flatnonzero(~result.kept).tolist()}


def follow_survivors(removed: Duplicates) -> Duplicates:
    """Point every removed row at the row finally kept: a match that a later pass removed is
    followed to that pass's survivor (and kept in `matched`)."""
    resolved: Duplicates = {}
    for row_id, decision in removed.items():
        target, seen = decision.duplicate_of, {row_id}
        while target in removed and target not in seen:
            seen.add(target)
            target = removed[target].duplicate_of
        matched = decision.matched or (decision.duplicate_of
                                        if target != decision.duplicate_of else "")
        resolved[row_id] = decision._replace(duplicate_of=target, matched=matched)
    return resolved


def text_duplicates(ids: Sequence[str], keys: Sequence[str] | None,
                    signatures: np.ndarray | None, threshold: float,
                    rank: Sequence[Any] | None = None) -> Duplicates:
    """Exact groups by content key, then MinHash groups over the rows that survived them,
    every removal pointed at its final survivor."""
    removed: Duplicates = {}
    if keys is not None:
        removed.update(exact_duplicates(ids, keys, rank))
    if signatures is not None:
        alive = np.array([i not in removed for i in ids], bool)
        alive_ids = [i for i, a in zip(ids, alive, strict=True) if a]
        alive_rank = None if rank is None else [r for r, a in zip(rank, alive, strict=True) if a]
        removed.update(minhash_duplicates(alive_ids, np.asarray(signatures)[alive], threshold,
                                          alive_rank))
    return follow_survivors(removed)
