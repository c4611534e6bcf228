"""prune_centroids (global step): spherical k-means on the embeddings' id-hash sample, one
row per centroid; prune_score's config pins it by content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from gristmill.config import FrozenModel
from gristmill.scoring.pruning import (
    tiebreak_keys,
    train_spherical_kmeans,
)
from gristmill.stages.base import (
    StageInputError,
)
from gristmill.stages.global_step import GlobalStep, StepSink
from gristmill.stages.prune import ClusteringConfig, PruneConfig
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vector_array, vectors_of


def sample_vectors(dataset: Dataset, rows: int, *, id_column: str,
                   vector_column: str) -> np.ndarray:
    """The `rows` vectors whose ids hash lowest: the same sample in any shard layout."""
    keys = np.concatenate([tiebreak_keys(b.column(0).to_pylist())
                           for b in dataset.iter_batches(columns=[id_column])] or
                          [np.zeros(0, np.uint64)])
    if len(keys) == 0:
        return np.zeros((0, dataset.schema.field(vector_column).type.list_size), np.float32)
    cut = np.partition(keys, min(rows, len(keys)) - 1)[min(rows, len(keys)) - 1]
    parts, picked_keys = [], []
    for batch in dataset.iter_batches(columns=[id_column, vector_column]):
        batch_keys = tiebreak_keys(batch.column(0).to_pylist())
        chosen = batch_keys <= cut
        parts.append(vectors_of(batch.column(1))[chosen])
        picked_keys.append(batch_keys[chosen])
    order = np.argsort(np.concatenate(picked_keys), kind="stable")
    return np.concatenate(parts)[order]


class CentroidsConfig(FrozenModel):
    """What the centroids depend on: the clustering knobs and which columns to read."""

    id_column: str = "id"
    vector_column: str = "embedding"
    clustering: ClusteringConfig = ClusteringConfig()

    @classmethod
    def of(cls, config: PruneConfig) -> CentroidsConfig:
        return cls(id_column=config.id_column, vector_column=config.embed.vector_column,
                   clustering=config.clustering)


class PruneCentroids(GlobalStep[CentroidsConfig]):
    """Spherical k-means on the id-hash sample of the embeddings: one row per centroid."""

    name: ClassVar[str] = "prune_centroids"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        width = inputs[0].schema.field(self.config.vector_column).type.list_size
        return pa.schema([pa.field("cluster", pa.int32()),
                          pa.field("centroid", pa.list_(pa.float32(), width))])

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        cfg = self.config.clustering
        sample = sample_vectors(inputs[0], cfg.sample_rows, id_column=self.config.id_column,
                                vector_column=self.config.vector_column)
        if len(sample) == 0:
            raise StageInputError(f"nothing to cluster: {inputs[0].uri} has no rows (the embed "
                                  "stage rejected every row; see its rejected/ reasons)")
        centroids = train_spherical_kmeans(sample, cfg.clusters, iterations=cfg.iterations,
                                           seed=cfg.seed)
        sink.write(pa.table({"cluster": pa.array(np.arange(len(centroids)), pa.int32()),
                             "centroid": vector_array(centroids)}))
        return {"clusters": len(centroids), "sample_rows": len(sample)}
