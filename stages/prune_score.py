"""prune_score (map stage): each row's nearest centroid and cosine distance to it (the
prototype score), its normalized-text key and MinHash signature: every score computed once.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from gristmill.scoring.near_dup import MinHasher
from gristmill.scoring.pruning import (
    assign,
)
from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    attach_reasons,
    require_columns,
)
from gristmill.stages.global_step import DatasetRef
from gristmill.stages.near_dup_keys import near_dup_columns
from gristmill.storage.vectors import vectors_of

SCORE_COLUMNS = ("cluster", "centroid_distance", "exact_key", "minhash")


class PruneScoreConfig(StageConfig):
    id_column: str = "id"
    text_column: str = "text"
    vector_column: str = "embedding"
    centroids: DatasetRef
    num_perm: int = 128
    ngram: int = 5
    minhash_seed: int = 1


class PruneScore(MapStage[PruneScoreConfig]):
    """Nearest centroid, cosine distance to it, exact key and MinHash signature per row."""

    name: ClassVar[str] = "prune_score"

    def setup(self) -> None:
        table = self.config.centroids.open().to_table()
        order = np.argsort(table.column("cluster").to_numpy())
        self.centroids = vectors_of(table.column("centroid"))[order]
        cfg = self.config
        self.hasher = MinHasher(num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.minhash_seed)

    def check_input(self, schema: pa.Schema) -> None:
        cfg = self.config
        require_columns(schema, self.name, {cfg.id_column: STRING_TYPES,
                                            cfg.text_column: STRING_TYPES})
        vector = schema.field(cfg.vector_column) if cfg.vector_column in schema.names else None
        if vector is None or not pa.types.is_fixed_size_list(vector.type):
            raise StageInputError(f"{self.name} needs a fixed_size_list vector column "
                                  f"{cfg.vector_column!r} (run the embed stage first)")
        width = cfg.centroids.open().schema.field("centroid").type.list_size
        if vector.type.list_size != width:
            raise StageInputError(f"{cfg.vector_column!r} holds {vector.type.list_size}-d "
                                  f"vectors, the centroids are {width}-d")

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        added = [pa.field("cluster", pa.int32()), pa.field("centroid_distance", pa.float32()),
                 pa.field("exact_key", pa.string()),
                 pa.field("minhash", pa.list_(pa.uint64(), self.config.num_perm))]
        return pa.schema([*(f for f in input_schema if f.name not in SCORE_COLUMNS), *added])

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        texts = [t or "" for t in batch.column(cfg.text_column).to_pylist()]
        clusters, distances = assign(vectors_of(batch.column(cfg.vector_column)), self.centroids)
        keys = near_dup_columns(self.hasher, texts)
        kept = batch.drop_columns([c for c in SCORE_COLUMNS if c in batch.column_names])
        schema = self.output_schema(batch.schema)
        kept = (kept.append_column(schema.field("cluster"), pa.array(clusters, pa.int32()))
                .append_column(schema.field("centroid_distance"), pa.array(distances))
                .append_column(schema.field("exact_key"), keys["exact_key"])
                .append_column(schema.field("minhash"), keys["minhash"]))
        return Split(kept, attach_reasons(batch.slice(0, 0), [], [], self.name))
