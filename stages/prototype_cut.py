"""The prototype cut on the workers: keep the `keep_fraction` hardest (or easiest) surviving
rows by prototype score, over the whole pool or the same share of every cluster, exactly as
scoring/pruning.select_prototypes decides in memory, while the driver holds no row.

Every row gets a 128-bit rank key, smallest first: its score's bits made order-preserving
(inverted when keeping hard, so the highest score comes first), then its id's xxh3
tiebreak. The quota-th smallest key of a group (the pool, or one cluster) is found by a
radix select:
- pool: each shard's rows that dedup kept are written with their order bits, and the
  shard's cluster sizes and score range come back;
- the driver turns the sizes into quotas (largest remainder, as in memory);
- rounds: the workers count, for each group still open, the next 8-bit digit of the keys
  that share the group's known prefix; the driver walks each group's counts to the digit
  holding its quota-th key. A group down to a few candidates (<= FETCH) gets their whole
  keys in the next round and is settled there;
- cut: each shard keeps the rows whose key is at most their group's threshold and routes
  the rest, as `pruned_easy` / `pruned_hard` decisions, by a hash of their id.
The driver holds per group a prefix and at most 256 counts: memory by clusters, not rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from gristmill.config import RuntimeConfig
from gristmill.scoring.pruning import (
    cluster_quotas,
    keep_hard,
    resolve_keep_fraction,
    tiebreak_keys,
)
from gristmill.stages.lsh_dedup import ShardRef
from gristmill.stages.prune import PrototypeConfig
from gristmill.stages.routed_files import RoutedFiles, fold_phase, partition_of, run_phase
from gristmill.storage.fs import Location

DIGIT_BITS = 8
KEY_BITS = 128
FETCH = 256
"""A group with this many candidates or fewer sends their keys whole and is settled: a
round then brings the driver at most FETCH keys per cluster, and costs at most one round
more than fetching later would (a digit narrows the candidates ~256-fold)."""
HISTOGRAM_BINS = 40
ALIVE_SCHEMA = pa.schema([("id", pa.string()), ("cluster", pa.int64()),
                          ("score", pa.float64()), ("order", pa.uint64())])
PRUNED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()),
                           ("score", pa.float64())])
_SIGN = np.uint64(1 << 63)


def order_bits(scores: np.ndarray) -> np.ndarray:
    """Unsigned integers that sort as the float scores do (-0.0 taken as 0.0)."""
    bits = (np.asarray(scores, np.float64) + 0.0).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def rank_keys(table: pa.Table, hard: bool) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of each row's key, smallest first."""
    order = table.column("order").to_numpy()
    return (~order if hard else order), tiebreak_keys(table.column("id").to_pylist())


class Group(BaseModel):
    """One group's search: the key bits known so far and the rank sought among the keys
    that share them; `threshold` once found (None: keep none of the group)."""

    size: int
    quota: int
    prefix: int = 0
    bits: int = 0
    rank: int = 0
    fetch: bool = False
    settled: bool = False
    threshold: tuple[int, int] | None = None


class CutResult(NamedTuple):
    pruned: RoutedFiles
    summary: dict[str, Any]


def _groups_of(table: pa.Table, balance: bool) -> np.ndarray:
    clusters = table.column("cluster").to_numpy()
    return clusters if balance else np.zeros(len(clusters), np.int64)


def _pool(shard: ShardRef, columns: list[str], removed: RoutedFiles | None,
          alive: RoutedFiles) -> dict[str, Any]:
    """The shard's rows dedup kept, with their order bits; cluster sizes (all rows, and
    kept rows) and the kept scores' range."""
    table = shard.read(columns)
    all_sizes = Counter(table.column(1).to_pylist())
    if removed is not None:
        gone = set(removed.read(shard.index).column("id").to_pylist())
        table = table.filter(pa.array([i not in gone for i in table.column(0).to_pylist()],
                                      pa.bool_()))
    scores = table.column(2).to_numpy(zero_copy_only=False).astype(np.float64)
    kept = pa.table({"id": table.column(0), "cluster": table.column(1).cast(pa.int64()),
                     "score": scores, "order": order_bits(scores)}, schema=ALIVE_SCHEMA)
    alive.write(kept, np.full(kept.num_rows, shard.index, np.int64), "pool")
    return {"clusters": sorted(Counter(kept.column("cluster").to_pylist()).items()),
            "all_clusters": sorted(all_sizes.items()),
            "min": float(scores.min()) if len(scores) else None,
            "max": float(scores.max()) if len(scores) else None}


def _group_rows(labels: np.ndarray, group_ids: list[int]) -> dict[int, np.ndarray]:
    """Each group's row indices (in row order) from one stable sort of the labels, so a
    pass costs the same with one group or thousands."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    ids = np.asarray(group_ids, labels.dtype)
    starts = np.searchsorted(ordered, ids, "left")
    ends = np.searchsorted(ordered, ids, "right")
    return {g: order[a:b] for g, a, b in zip(group_ids, starts, ends, strict=True)}


def _sharing(high: np.ndarray, low: np.ndarray, bits: int, prefix: int) -> np.ndarray:
    """Which keys begin with the `bits`-bit `prefix`."""
    if bits == 0:
        return np.ones(len(high), bool)
    if bits <= 64:
        return (high >> np.uint64(64 - bits)) == np.uint64(prefix)
    rest = bits - 64
    return ((high == np.uint64(prefix >> rest))
            & ((low >> np.uint64(KEY_BITS - bits)) == np.uint64(prefix & ((1 << rest) - 1))))


def _digit(high: np.ndarray, low: np.ndarray, bits: int) -> np.ndarray:
    """The 8-bit digit after the first `bits` bits of each key."""
    if bits < 64:
        return ((high >> np.uint64(64 - bits - DIGIT_BITS)) & np.uint64(0xFF)).astype(np.int64)
    return ((low >> np.uint64(KEY_BITS - bits - DIGIT_BITS)) & np.uint64(0xFF)).astype(np.int64)


def _count_digits(shard: int, alive: RoutedFiles, groups: dict[int, Group], hard: bool,
                  balance: bool) -> dict[str, Any]:
    """Per open group (by its id as a string, as the phase's JSON marker keeps it): the
    next digit's counts among its candidates, or (fetch) their whole keys."""
    table = alive.read(shard)
    high, low = rank_keys(table, hard)
    labels = _groups_of(table, balance)
    found: dict[str, Any] = {}
    for group_id, rows in _group_rows(labels, list(groups)).items():
        group = groups[group_id]
        rows = rows[_sharing(high[rows], low[rows], group.bits, group.prefix)]
        if group.fetch:
            found[str(group_id)] = [[int(h), int(lo)] for h, lo in zip(high[rows], low[rows],
                                                                       strict=True)]
        elif len(rows):
            found[str(group_id)] = np.bincount(_digit(high[rows], low[rows], group.bits),
                                               minlength=256).tolist()
    return found


def _add_answers(groups: dict[int, Group]) -> Callable[[dict, dict], dict]:
    """How one shard's answers join the round's total: digit counts add up, fetched keys
    gather (a fetched group has at most FETCH candidates over all shards)."""
    def add(total: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        for key, found in answer.items():
            if key not in total:
                total[key] = found
            elif groups[int(key)].fetch:
                total[key] = total[key] + found
            else:
                total[key] = [a + b for a, b in zip(total[key], found, strict=True)]
        return total
    return add


def _add_pool(total: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """One shard's cluster sizes and score range joined to the pool's."""
    merged = {name: sorted((Counter(dict(total[name])) + Counter(dict(answer[name]))).items())
              for name in ("clusters", "all_clusters")}
    ends = {name: [v for v in (total[name], answer[name]) if v is not None]
            for name in ("min", "max")}
    return {**merged, "min": min(ends["min"], default=None), "max": max(ends["max"], default=None)}


def _advance(group: Group, found: list[Any]) -> None:
    """Fold one round's total (digit counts, or the candidates' keys) into the search."""
    if group.fetch:
        keys = sorted(tuple(key) for key in found)
        group.threshold, group.settled = keys[group.rank - 1], True
        return
    counts = np.asarray(found, np.int64)
    cumulative = np.cumsum(counts)
    digit = int(np.searchsorted(cumulative, group.rank))
    group.rank -= int(cumulative[digit - 1]) if digit else 0
    group.prefix = (group.prefix << DIGIT_BITS) | digit
    group.bits += DIGIT_BITS
    if group.bits == KEY_BITS:
        group.threshold = (group.prefix >> 64, group.prefix & ((1 << 64) - 1))
        group.settled = True
    elif counts[digit] <= FETCH:
        group.fetch = True


def _cut(shard: int, alive: RoutedFiles, thresholds: dict[int, tuple[int, int] | None],
         hard: bool, balance: bool, edges: list[float], reason: str, pruned: RoutedFiles,
         partitions: int) -> dict[str, Any]:
    """Keep each row whose key is at most its group's threshold; route the others' decisions
    by id; histograms of kept and pruned scores."""
    table = alive.read(shard)
    high, low = rank_keys(table, hard)
    labels = _groups_of(table, balance)
    keep = np.zeros(table.num_rows, bool)
    for group_id, rows in _group_rows(labels, list(thresholds)).items():
        threshold = thresholds[group_id]
        if threshold is None:
            continue
        top, bottom = np.uint64(threshold[0]), np.uint64(threshold[1])
        keep[rows] = (high[rows] < top) | ((high[rows] == top) & (low[rows] <= bottom))
    gone = table.filter(pa.array(~keep))
    pruned.write(pa.table({"id": gone.column("id"),
                           "reason": pa.array([reason] * gone.num_rows, pa.string()),
                           "score": gone.column("score")}, schema=PRUNED_SCHEMA),
                 partition_of(gone.column("id").to_pylist(), partitions), f"s{shard:06d}")
    scores = table.column("score").to_numpy()
    return {"kept": np.histogram(scores[keep], edges)[0].tolist() if edges else [],
            "pruned": np.histogram(scores[~keep], edges)[0].tolist() if edges else []}


def prototype_cut(shards: list[ShardRef], removed: RoutedFiles | None, config: PrototypeConfig,
                  *, id_column: str, partitions: int, work: Location,
                  runtime: RuntimeConfig) -> CutResult:
    """The cut over the rows `removed` (decisions routed by shard) leaves: its decisions,
    routed to `partitions` by a hash of the id, and the numbers the report plots."""
    alive = RoutedFiles(work.join("alive"), ALIVE_SCHEMA)
    pooled = fold_phase(work, "pool", _pool,
                        [(s, [id_column, "cluster", "centroid_distance"], removed, alive)
                         for s in shards], runtime, _add_pool,
                        {"clusters": [], "all_clusters": [], "min": None, "max": None})
    sizes = dict(pooled["clusters"])
    rows = sum(sizes.values())
    every = dict(pooled["all_clusters"])
    summary: dict[str, Any] = {"cluster_sizes": [every.get(c, 0) for c in
                                                 range(max(every, default=-1) + 1)]}
    pruned = RoutedFiles(work.join("pruned"), PRUNED_SCHEMA)
    if not config.enabled:
        return CutResult(pruned, summary)
    hard = keep_hard(config.strategy, rows, config.budget_rows, config.abundance_ratio)
    fraction = resolve_keep_fraction(config.keep_fraction, rows, config.budget_rows,
                                     config.min_keep_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {fraction}")
    total = round(fraction * rows)
    if config.balance and rows and total:
        quotas = cluster_quotas(np.array(list(sizes)), np.array(list(sizes.values())), total)
        groups = {c: Group(size=sizes[c], quota=q) for c, q in quotas.items()}
    else:
        groups = {0: Group(size=rows, quota=total)}
    for group in groups.values():
        group.rank, group.fetch = group.quota, group.size <= FETCH
        group.settled = group.quota in (0, group.size)
        if group.quota == group.size:
            group.threshold = ((1 << 64) - 1, (1 << 64) - 1)
    for round_index in range(KEY_BITS // DIGIT_BITS + 1):
        open_groups = {g: group for g, group in groups.items() if not group.settled}
        if not open_groups:
            break
        answers = fold_phase(work, f"round-{round_index:02d}", _count_digits,
                             [(s.index, alive, open_groups, hard, config.balance)
                              for s in shards], runtime, _add_answers(open_groups), {})
        for group_id, group in open_groups.items():
            _advance(group, answers[str(group_id)])
    edges = np.histogram_bin_edges([pooled["min"], pooled["max"]],
                                   bins=HISTOGRAM_BINS).tolist() if rows else []
    counted = run_phase(work, "cut", _cut,
                        [(s.index, alive, {g: group.threshold for g, group in groups.items()},
                          hard, config.balance, edges,
                          "pruned_easy" if hard else "pruned_hard", pruned, partitions)
                         for s in shards], runtime)
    summary.update(keep_hard=hard, keep_fraction=fraction, score_edges=edges,
                   kept_counts=np.sum([c["kept"] for c in counted], axis=0).tolist()
                   if edges else [],
                   pruned_counts=np.sum([c["pruned"] for c in counted], axis=0).tolist()
                   if edges else [])
    return CutResult(pruned, summary)

