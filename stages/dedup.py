"""The duplicate barrier over a dataset: exact, then MinHash, then semantic (SemDeDup).

The decisions themselves (who is a duplicate of whom, which copy survives) are
scoring/duplicates.py's, shared with question dedup and the datastore; this module feeds them
a dataset's columns.

Cheap passes first: rows sharing a normalized-text key, then rows whose MinHash signatures
say their word n-grams overlap, and only the survivors reach SemDeDup, which runs cluster by
cluster. Clusters are spilled to local Arrow files in one streaming pass and read back one at
a time, so memory holds one cluster's vectors, never the corpus's. Every decision depends on
ids and values only, never on how rows are laid out in shards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from gristmill.config import FrozenModel
from gristmill.scoring.duplicates import (
    Duplicates,
    follow_survivors,
    semantic_duplicates,
    text_duplicates,
)
from gristmill.scoring.semdedup import Survivor
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vectors_of


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
    spill_rows: int = Field(default=65_536, ge=1,
                            description="Rows buffered before clusters spill to disk")


def _columns(dataset: Dataset, columns: list[str]) -> Iterator[pa.RecordBatch]:
    yield from dataset.iter_batches(columns=columns)


class ClusterSpill:
    """Rows appended by cluster to small Arrow files, read back one cluster at a time."""

    def __init__(self, folder: Path, flush_rows: int) -> None:
        self.folder = folder
        self.flush_rows = flush_rows
        self.buffer: dict[int, list[pa.Table]] = {}
        self.buffered = 0
        self.parts: dict[int, int] = {}

    def add(self, table: pa.Table, clusters: np.ndarray) -> None:
        for cluster in np.unique(clusters).tolist():
            rows = table.filter(pa.array(clusters == cluster))
            self.buffer.setdefault(cluster, []).append(rows)
            self.buffered += rows.num_rows
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        for cluster, tables in self.buffer.items():
            part = self.parts.get(cluster, 0)
            path = self.folder / f"cluster-{cluster:07d}-{part:05d}.arrow"
            table = pa.concat_tables(tables)
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink,
                                                                       table.schema) as writer:
                writer.write_table(table)
            self.parts[cluster] = part + 1
        self.buffer, self.buffered = {}, 0

    def clusters(self) -> Iterator[tuple[int, pa.Table]]:
        self.flush()
        for cluster in sorted(self.parts):
            tables = []
            for part in range(self.parts[cluster]):
                path = self.folder / f"cluster-{cluster:07d}-{part:05d}.arrow"
                with pa.memory_map(str(path)) as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
                path.unlink()
            yield cluster, pa.concat_tables(tables)


def semantic_pass(dataset: Dataset, removed: Duplicates, config: DedupConfig,
                  *, id_column: str, vector_column: str) -> Duplicates:
    """SemDeDup per cluster over the rows no cheaper pass removed."""
    found: Duplicates = {}
    columns = [id_column, "cluster", "centroid_distance", vector_column]
    with tempfile.TemporaryDirectory(prefix="gristmill-semdedup-") as folder:
        spill = ClusterSpill(Path(folder), config.spill_rows)
        for batch in _columns(dataset, columns):
            table = pa.Table.from_batches([batch])
            alive = [i not in removed for i in table.column(id_column).to_pylist()]
            table = table.filter(pa.array(alive, pa.bool_()))
            spill.add(table, table.column("cluster").to_numpy())
        for _, table in spill.clusters():
            found.update(semantic_duplicates(
                table.column(id_column).to_pylist(), vectors_of(table.column(vector_column)),
                table.column("centroid_distance").to_numpy(), config.eps,
                survivor=config.survivor, block_rows=config.block_rows))
    return found


def duplicate_decisions(dataset: Dataset, config: DedupConfig, *, id_column: str,
                        vector_column: str) -> Duplicates:
    """Every duplicate row (id -> why, and the row kept in its place, chains followed)."""
    removed: Duplicates = {}
    if config.exact or config.minhash:
        table = pa.Table.from_batches(
            list(_columns(dataset, [id_column, "exact_key", "minhash"])),
            schema=pa.schema([dataset.schema.field(c)
                              for c in (id_column, "exact_key", "minhash")]))
        removed.update(text_duplicates(
            table.column(id_column).to_pylist(),
            table.column("exact_key").to_pylist() if config.exact else None,
            vectors_of(table.column("minhash")).astype(np.uint64) if config.minhash else None,
            config.minhash_threshold))
    if config.semantic:
        removed.update(semantic_pass(dataset, removed, config, id_column=id_column,
                                     vector_column=vector_column))
    return follow_survivors(removed)
