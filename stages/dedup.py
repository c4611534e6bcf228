"""The duplicate barrier over a dataset: exact, then MinHash, then semantic (SemDeDup).

The decisions themselves (who is a duplicate of whom, which copy survives) are
scoring/duplicates.py's, shared with question dedup and the datastore.

Cheap passes first: rows sharing a normalized-text key, then rows whose MinHash signatures
say their word n-grams overlap, both as phases of tasks on the Ray workers
(stages/lsh_dedup.py, which makes the same decisions without the driver holding a key or a
signature); only the survivors reach SemDeDup, which runs cluster by cluster. Clusters
are spilled to local Arrow files in one streaming pass and read back one at a time, so
memory holds one cluster's vectors, never the corpus's. Every decision depends on
ids and values only, never on how rows are laid out in shards.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
from gristmill.stages.lsh_dedup import Columns, text_duplicates_on_workers
from gristmill.storage.fs import Location
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
    partitions: int | None = Field(
        default=None, ge=1, description="Hash partitions of the exact and MinHash steps on "
                                        "the workers; None: one per million band records")


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


def signature_width(dataset: Dataset, column: str) -> int:
    """Slots per MinHash signature: the column's fixed list size, else the first row's."""
    kind = dataset.schema.field(column).type
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size
    for batch in _columns(dataset, [column]):
        if batch.num_rows:
            return len(batch.column(0)[0])
    return 1


def text_pass(dataset: Dataset, config: DedupConfig, *, id_column: str, key_column: str,
              signature_column: str, work: Location, runtime: RuntimeConfig) -> Duplicates:
    """Exact and MinHash duplicates, decided on the workers (stages/lsh_dedup.py)."""
    num_perm = signature_width(dataset, signature_column)
    bands = lsh_params(config.minhash_threshold, num_perm)[0] if config.minhash else 1
    partitions = config.partitions or max(2, math.ceil(dataset.num_rows * bands / 1_000_000))
    removed: Duplicates = {}
    for table in text_duplicates_on_workers(
            dataset, columns=Columns(id_column, key_column, signature_column),
            exact=config.exact, minhash=config.minhash, threshold=config.minhash_threshold,
            num_perm=num_perm, partitions=partitions, work=work, runtime=runtime):
        for row in table.to_pylist():
            removed[row["id"]] = Duplicate(row["reason"], row["duplicate_of"], row["score"],
                                           row["matched"] or "")
    return removed


def duplicate_decisions(dataset: Dataset, config: DedupConfig, *, id_column: str,
                        vector_column: str, work: Location,
                        runtime: RuntimeConfig) -> Duplicates:
    """Every duplicate row (id -> why, and the row kept in its place, chains followed)."""
    removed: Duplicates = {}
    if config.exact or config.minhash:
        removed.update(text_pass(dataset, config, id_column=id_column, key_column="exact_key",
                                 signature_column="minhash", work=work.join("text"),
                                 runtime=runtime))
    if config.semantic:
        removed.update(semantic_pass(dataset, removed, config, id_column=id_column,
                                     vector_column=vector_column))
    return follow_survivors(removed)
