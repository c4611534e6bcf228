"""The duplicate barrier over a dataset: exact, then MinHash, then semantic (SemDeDup).

The decisions themselves (who is a duplicate of whom, which copy survives) are
scoring/duplicates.py's, shared with question dedup and the datastore.

Cheap passes first: rows sharing a normalized-text key, then rows whose MinHash signatures
say their word n-grams overlap, both as phases of tasks on the Ray workers
(stages/lsh_dedup.py, which makes the same decisions without the driver holding a key or a
signature). Only their survivors reach SemDeDup: each shard's rows are routed by k-means
cluster to partition files, and one task per partition runs SemDeDup cluster by cluster,
so the partitions run in parallel and a task holds one partition's vectors, never the
corpus's. Every decision depends on ids and values only, never on how rows are laid out
in shards or partitions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.scoring.duplicates import (
    Duplicate,
    Duplicates,
    follow_survivors,
    semantic_duplicates,
)
from gristmill.scoring.near_dup import lsh_params
from gristmill.scoring.semdedup import Survivor
from gristmill.stages.lsh_dedup import (
    DECISION_SCHEMA,
    Columns,
    ShardRef,
    shard_refs,
    text_duplicates_on_workers,
)
from gristmill.stages.routed_files import RoutedFiles, partition_of, run_phase
from gristmill.storage.fs import Location
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vectors_of

SEMANTIC_ROWS_PER_TASK = 50_000
_WITH_SHARD = pa.schema([*DECISION_SCHEMA, pa.field("shard", pa.int64())])
BAND_RECORDS_PER_TASK = 250_000
"""About 150 MB of band records (a 512-byte signature each) per edges task."""


class DedupConfig(FrozenModel):
    """Which duplicate passes run and how strict each is."""

    exact: bool = Field(default=True, description="Drop rows whose normalized text repeats")
    minhash: bool = Field(default=True, description="Drop MinHash near-duplicates")
    minhash_threshold: float = Field(default=0.8, gt=0, lt=1,
                                     description="Estimated Jaccard of word n-grams to join")
    semantic: bool = Field(default=True, description="Run SemDeDup inside each cluster")
    eps: float = Field(default=0.05, ge=0, le=1,
                       description="Remove a row whose cosine to a kept row exceeds 1 - eps")
    survivor: Survivor = Field(
        default="farthest", description="Which copy of a semantic group is kept: farthest "
                                        "from its centroid (paper default) or nearest")
    block_rows: int = Field(default=4096, ge=1,
                            description="Pairwise blocks are at most block_rows^2 floats")
    partitions: int | None = Field(
        default=None, ge=1,
        description=f"Hash partitions of the steps on the workers; None: one per "
                    f"{BAND_RECORDS_PER_TASK:,} MinHash band records, and one per "
                    f"{SEMANTIC_ROWS_PER_TASK:,} rows for SemDeDup")


def signature_width(dataset: Dataset, column: str) -> int:
    """Slots per MinHash signature: the column's fixed list size, else the first row's."""
    kind = dataset.schema.field(column).type
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size
    for batch in dataset.iter_batches(columns=[column]):
        if batch.num_rows:
            return len(batch.column(0)[0])
    return 1


def read_decisions(files: RoutedFiles, partitions: int) -> Duplicates:
    """Decisions written by tasks into `partitions` routed partitions, keyed by id."""
    found: Duplicates = {}
    for partition in range(partitions):
        for row in files.read(partition).to_pylist():
            found[row["id"]] = Duplicate(row["reason"], row["duplicate_of"], row["score"],
                                         row["matched"] or "")
    return found


def text_pass(dataset: Dataset, config: DedupConfig, *, id_column: str, key_column: str,
              signature_column: str, work: Location, runtime: RuntimeConfig) -> RoutedFiles:
    """Exact and MinHash duplicates, decided on the workers (stages/lsh_dedup.py): the
    decisions, routed to the shard of the row each removes."""
    num_perm = signature_width(dataset, signature_column)
    bands = lsh_params(config.minhash_threshold, num_perm)[0] if config.minhash else 1
    partitions = config.partitions or max(2, math.ceil(dataset.num_rows * bands
                                                       / BAND_RECORDS_PER_TASK))
    return text_duplicates_on_workers(
        dataset, columns=Columns(id_column, key_column, signature_column),
        exact=config.exact, minhash=config.minhash, threshold=config.minhash_threshold,
        num_perm=num_perm, partitions=partitions, work=work, runtime=runtime)


def _route_clusters(shard: ShardRef, columns: list[str], removed: RoutedFiles | None,
                    rows: RoutedFiles, partitions: int) -> dict[str, Any]:
    """A shard's rows the text pass kept, routed by their cluster."""
    table = shard.read(columns)
    if removed is not None:
        gone = set(removed.read(shard.index).column("id").to_pylist())
        alive = [row_id not in gone for row_id in table.column(0).to_pylist()]
        table = table.filter(pa.array(alive, pa.bool_()))
    table = table.rename_columns(rows.schema.names[:-1])
    table = table.append_column("shard", pa.array(np.full(table.num_rows, shard.index,
                                                          np.int64)))
    clusters = table.column("cluster").to_numpy().astype(np.int64)
    rows.write(table, clusters % partitions, f"s{shard.index:06d}")
    return {"rows": table.num_rows}


def _semdedup_partition(partition: int, rows: RoutedFiles, config: DedupConfig,
                        decisions: RoutedFiles) -> dict[str, Any]:
    """SemDeDup over every cluster routed to this partition, one cluster at a time."""
    table = rows.read(partition).sort_by([("cluster", "ascending"), ("id", "ascending")])
    clusters = table.column("cluster").to_numpy()
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]]) if len(clusters) else []
    found: Duplicates = {}
    for start, end in zip(starts, [*starts[1:], len(clusters)], strict=True):
        cluster = table.slice(start, end - start)
        found.update(semantic_duplicates(
            cluster.column("id").to_pylist(), vectors_of(cluster.column("vector")),
            cluster.column("centroid_distance").to_numpy(), config.eps,
            survivor=config.survivor, block_rows=config.block_rows))
    ordered = sorted(found.items())
    shard_of = dict(zip(table.column("id").to_pylist(), table.column("shard").to_pylist(),
                        strict=True))
    decisions.write(decision_table(ordered),
                    np.array([shard_of[i] for i, _ in ordered], np.int64),
                    f"p{partition:06d}")
    return {"clusters": len(starts), "removed": len(ordered)}


def semantic_pass(dataset: Dataset, removed: RoutedFiles | None, config: DedupConfig, *,
                  id_column: str, vector_column: str, work: Location,
                  runtime: RuntimeConfig) -> RoutedFiles:
    """SemDeDup per cluster over the rows the text pass kept, on the workers: the
    decisions, routed to the shard of the row each removes."""
    partitions = config.partitions or max(2, math.ceil(dataset.num_rows
                                                       / SEMANTIC_ROWS_PER_TASK))
    vector = dataset.schema.field(vector_column)
    rows = RoutedFiles(work.join("clusters"), pa.schema([
        ("id", pa.string()), ("cluster", dataset.schema.field("cluster").type),
        ("centroid_distance", dataset.schema.field("centroid_distance").type),
        ("vector", vector.type), ("shard", pa.int64())]))
    columns = [id_column, "cluster", "centroid_distance", vector_column]
    run_phase(work, "clusters", _route_clusters,
              [(s, columns, removed, rows, partitions) for s in shard_refs(dataset, runtime)],
              runtime)
    decisions = RoutedFiles(work.join("semantic"), DECISION_SCHEMA)
    run_phase(work, "semdedup", _semdedup_partition,
              [(p, rows, config, decisions) for p in range(partitions)], runtime)
    return decisions


def decision_table(ordered: list[tuple[str, Duplicate]]) -> pa.Table:
    """(id, decision) pairs as DECISION_SCHEMA rows."""
    return pa.table({
        "id": [i for i, _ in ordered], "reason": [d.reason for _, d in ordered],
        "duplicate_of": [d.duplicate_of for _, d in ordered],
        "score": [d.score for _, d in ordered],
        "matched": [d.matched or None for _, d in ordered]}, schema=DECISION_SCHEMA)


def _route_for_following(shard: int, text: RoutedFiles, semantic: RoutedFiles,
                         by_target: RoutedFiles, by_id: RoutedFiles,
                         partitions: int) -> dict[str, Any]:
    """A shard's text decisions by the row they keep, its semantic ones by the row they
    remove, so a partition holds both ends of every link that must be followed."""
    removed = text.read(shard)
    removed = removed.append_column("shard", pa.array(np.full(removed.num_rows, shard,
                                                              np.int64)))
    by_target.write(removed, partition_of(removed.column("duplicate_of").to_pylist(),
                                          partitions), f"s{shard:06d}")
    found = semantic.read(shard)
    found = found.append_column("shard", pa.array(np.full(found.num_rows, shard, np.int64)))
    by_id.write(found, partition_of(found.column("id").to_pylist(), partitions),
                f"s{shard:06d}")
    return {"text": removed.num_rows, "semantic": found.num_rows}


def _follow(partition: int, by_target: RoutedFiles, by_id: RoutedFiles,
            resolved: RoutedFiles) -> dict[str, Any]:
    """Point a text duplicate whose kept row SemDeDup then removed at SemDeDup's survivor
    (scoring/duplicates.follow_survivors; one hop: a SemDeDup survivor is never removed)."""
    semantic = by_id.read(partition)
    text = by_target.read(partition)
    removed: Duplicates = {}
    shards: dict[str, int] = {}
    for table in (semantic, text):
        for row in table.to_pylist():
            removed[row["id"]] = Duplicate(row["reason"], row["duplicate_of"], row["score"],
                                           row["matched"] or "")
            shards[row["id"]] = row["shard"]
    followed = follow_survivors(removed)
    ordered = sorted((i, followed[i]) for i in text.column("id").to_pylist())
    ordered += sorted((i, followed[i]) for i in semantic.column("id").to_pylist())
    resolved.write(decision_table(ordered), np.array([shards[i] for i, _ in ordered],
                                                     np.int64), f"p{partition:06d}")
    return {"followed": sum(d.matched != removed[i].matched for i, d in ordered)}


def duplicate_decisions(dataset: Dataset, config: DedupConfig, *, id_column: str,
                        vector_column: str, work: Location,
                        runtime: RuntimeConfig) -> RoutedFiles | None:
    """Every duplicate row's decision (why, and the row finally kept in its place), routed
    to the shard that holds it; None when no pass is on. Decided on the workers: the driver
    holds no id."""
    text = semantic = None
    if config.exact or config.minhash:
        text = text_pass(dataset, config, id_column=id_column, key_column="exact_key",
                         signature_column="minhash", work=work.join("text"), runtime=runtime)
    if config.semantic:
        semantic = semantic_pass(dataset, text, config, id_column=id_column,
                                 vector_column=vector_column, work=work.join("semantic"),
                                 runtime=runtime)
    if text is None or semantic is None:
        return text or semantic
    partitions = config.partitions or max(2, math.ceil(dataset.num_rows
                                                       / SEMANTIC_ROWS_PER_TASK))
    folder = work.join("follow")
    by_target = RoutedFiles(folder.join("by_target"), _WITH_SHARD)
    by_id = RoutedFiles(folder.join("by_id"), _WITH_SHARD)
    run_phase(folder, "route", _route_for_following,
              [(s, text, semantic, by_target, by_id, partitions)
               for s in range(len(dataset.shards))], runtime)
    resolved = RoutedFiles(folder.join("resolved"), DECISION_SCHEMA)
    run_phase(folder, "follow", _follow,
              [(p, by_target, by_id, resolved) for p in range(partitions)], runtime)
    return resolved
