"""prune: prototype pruning (Sorscher et al., 2022) and duplicate removal (SemDeDup).

Steps, each with a durable output so a rerun resumes and the decision sits in the lineage:
1. `Embed` (stages/embed.py) adds vectors.
2. `PruneCentroids` (global step): spherical k-means on a sample chosen by id hash, written
   as a small dataset; the next stage's config pins it by content (`DatasetRef`).
3. `PruneScore` (map): nearest centroid and distance (the prototype score), the exact-text
   key and the MinHash signature: every score computed once.
4. `PruneDecisions` (global step): exact, MinHash and semantic duplicates (stages/dedup.py),
   then the prototype cut over the survivors, written as a dataset of rejected ids with the
   report's summary in its manifest.
5. `PruneSelect` (map): rows listed there go to rejected/ with their reason, the id of the
   row their duplicate group keeps (`duplicate_of`) and score; the rest pass. When the
   prototype cut then prunes that survivor too, the duplicate's detail says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from gristmill.config import FrozenModel
from gristmill.scoring.duplicates import Duplicate, Duplicates
from gristmill.scoring.near_dup import MinHasher, exact_key
from gristmill.scoring.pruning import (
    Strategy,
    assign,
    keep_hard,
    resolve_keep_fraction,
    select_prototypes,
    tiebreak_keys,
    train_spherical_kmeans,
)
from gristmill.stages.base import (
    REJECT_COLUMNS,
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    attach_reasons,
    require_columns,
)
from gristmill.stages.dedup import DedupConfig, duplicate_decisions
from gristmill.stages.embed import EmbedConfig
from gristmill.stages.global_step import DatasetRef, GlobalStep, StepSink
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vector_array, vectors_of

SCORE_COLUMNS = ("cluster", "centroid_distance", "exact_key", "minhash")
HISTOGRAM_BINS = 40


class ClusteringConfig(FrozenModel):
    """Spherical k-means; k within an order of magnitude of the natural topics."""

    clusters: int = Field(default=100, ge=1, description="k; cut to the rows there are")
    iterations: int = Field(default=20, ge=1)
    sample_rows: int = Field(default=100_000, ge=1,
                             description="k-means trains on this many rows, picked by id hash")
    seed: int = 0


class PrototypeConfig(FrozenModel):
    """Which end of the prototype score to keep, and how much."""

    enabled: bool = True
    strategy: Strategy = Field(
        default="hard", description="easy, hard, or auto: hard when the pool is at least "
                                    "abundance_ratio x budget_rows, easy when data is scarce")
    keep_fraction: float | None = Field(
        default=0.8, ge=0, le=1,
        description="Share of deduplicated rows kept; None = budget_rows / pool, floored")
    budget_rows: int | None = Field(
        default=None, ge=1, description="Examples the training run can use (auto modes)")
    abundance_ratio: float = Field(default=1.0, gt=0)
    min_keep_fraction: float = Field(
        default=0.2, ge=0, le=1, description="Floor on the derived fraction: an imperfect "
                                             "metric makes pruning below it harmful")
    balance: bool = Field(default=False, description="Keep the same fraction of every cluster")

    @model_validator(mode="after")
    def _auto_needs_a_budget(self) -> Self:
        if (self.strategy == "auto" or self.keep_fraction is None) and self.budget_rows is None:
            raise ValueError("strategy=auto and keep_fraction=None need budget_rows")
        return self


class PruneConfig(FrozenModel):
    """Everything the prune flow decides with; defaults follow METHODS.md section 4."""

    id_column: str = "id"
    text_column: str = "text"
    embed: EmbedConfig = EmbedConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    dedup: DedupConfig = DedupConfig()
    prototypes: PrototypeConfig = PrototypeConfig()
    num_perm: int = Field(default=128, ge=1, description="MinHash permutations")
    ngram: int = Field(default=5, ge=1, description="MinHash word n-gram size")
    minhash_seed: int = 1
    drop_columns: list[str] = Field(
        default_factory=lambda: ["exact_key", "minhash"],
        description="Helper columns left out of the selected dataset")


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
        signatures = self.hasher.signatures(texts)
        kept = batch.drop_columns([c for c in SCORE_COLUMNS if c in batch.column_names])
        schema = self.output_schema(batch.schema)
        kept = (kept.append_column(schema.field("cluster"), pa.array(clusters, pa.int32()))
                .append_column(schema.field("centroid_distance"), pa.array(distances))
                .append_column(schema.field("exact_key"),
                               pa.array([exact_key(t) for t in texts], pa.string()))
                .append_column(schema.field("minhash"), pa.FixedSizeListArray.from_arrays(
                    pa.array(signatures.ravel(), pa.uint64()), cfg.num_perm)))
        return Split(kept, attach_reasons(batch.slice(0, 0), [], [], self.name))


class PruneSelectConfig(StageConfig):
    id_column: str = "id"
    decisions: DatasetRef
    drop_columns: list[str] = Field(default_factory=lambda: ["exact_key", "minhash"])


DECISION_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("reason", pa.string()),
    pa.field("duplicate_of", pa.string()), pa.field("score", pa.float64()),
    pa.field("detail", pa.string()),
])


class PruneSelect(MapStage[PruneSelectConfig]):
    """Rows the decisions list are rejected with their reason; everything else is kept."""

    name: ClassVar[str] = "prune_select"

    def setup(self) -> None:
        table = self.config.decisions.open().to_table()
        self.decisions = {row["id"]: row for row in table.to_pylist()}

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {self.config.id_column: STRING_TYPES})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return pa.schema([f for f in input_schema if f.name not in self.config.drop_columns])

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return pa.schema([*self.output_schema(input_schema),
                          pa.field("duplicate_of", pa.string()),
                          pa.field("prune_score", pa.float64()), *REJECT_COLUMNS])

    def process(self, batch: pa.Table) -> Split:
        batch = batch.drop_columns([c for c in self.config.drop_columns
                                    if c in batch.column_names])
        found = [self.decisions.get(i) for i in batch.column(self.config.id_column).to_pylist()]
        dropped = [d for d in found if d is not None]
        rejected = batch.filter(pa.array([d is not None for d in found], pa.bool_()))
        rejected = (rejected
                    .append_column("duplicate_of",
                                   pa.array([d["duplicate_of"] for d in dropped], pa.string()))
                    .append_column("prune_score",
                                   pa.array([d["score"] for d in dropped], pa.float64())))
        rejected = attach_reasons(rejected, [d["reason"] for d in dropped],
                                  [d["detail"] for d in dropped], self.name)
        kept = batch.filter(pa.array([d is None for d in found], pa.bool_()))
        return Split(kept, rejected)


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


class DecisionSummary(BaseModel):
    """What the decision barrier found, for the flow's report and plots."""

    rows: int
    reasons: dict[str, int]
    cluster_sizes: list[int]
    keep_hard: bool | None = None
    keep_fraction: float | None = None
    score_edges: list[float] = Field(default_factory=list,
                                     description="Histogram bin edges of the prototype score")
    kept_counts: list[int] = Field(default_factory=list, description="Kept rows per bin")
    pruned_counts: list[int] = Field(default_factory=list, description="Pruned rows per bin")


def _prototype_cut(dataset: Dataset, removed: Duplicates, config: DecisionsConfig,
                   ) -> tuple[Duplicates, DecisionSummary]:
    ids: list[str] = []
    clusters, scores = [], []
    for batch in dataset.iter_batches(columns=[config.id_column, "cluster",
                                               "centroid_distance"]):
        batch_ids = batch.column(0).to_pylist()
        alive = np.array([i not in removed for i in batch_ids], bool)
        ids.extend(i for i, a in zip(batch_ids, alive, strict=True) if a)
        clusters.append(batch.column(1).to_numpy()[alive])
        scores.append(batch.column(2).to_numpy()[alive])
    labels = np.concatenate(clusters) if clusters else np.zeros(0, np.int32)
    score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    summary = DecisionSummary(rows=dataset.num_rows, reasons={}, cluster_sizes=[])
    cfg = config.prototypes
    if not cfg.enabled:
        return {}, summary
    hard = keep_hard(cfg.strategy, len(ids), cfg.budget_rows, cfg.abundance_ratio)
    fraction = resolve_keep_fraction(cfg.keep_fraction, len(ids), cfg.budget_rows,
                                     cfg.min_keep_fraction)
    keep = select_prototypes(score, fraction, hard=hard, labels=labels, balance=cfg.balance,
                             tiebreak=tiebreak_keys(ids))
    reason = "pruned_easy" if hard else "pruned_hard"
    pruned = {ids[i]: Duplicate(reason, "", float(score[i])) for i in np.flatnonzero(~keep)}
    edges = np.histogram_bin_edges(score, bins=HISTOGRAM_BINS) if len(score) else np.zeros(0)
    summary = summary.model_copy(update={
        "keep_hard": hard, "keep_fraction": fraction, "score_edges": edges.tolist(),
        "kept_counts": np.histogram(score[keep], edges)[0].tolist() if len(score) else [],
        "pruned_counts": np.histogram(score[~keep], edges)[0].tolist() if len(score) else []})
    return pruned, summary


def _detail(decision: Duplicate, pruned: Duplicates) -> str:
    if not decision.duplicate_of:
        return f"prototype distance {decision.score:.4f}"
    measure = {"semantic_duplicate": f"cosine {decision.score:.4f} to",
               "exact_duplicate": "same normalized text as"}.get(
        decision.reason, f"jaccard {decision.score:.4f} to")
    text = f"{measure} {decision.matched or decision.duplicate_of}"
    if decision.matched:
        text += f", itself a duplicate of {decision.duplicate_of}"
    if decision.duplicate_of in pruned:
        text += (f"; the kept copy {decision.duplicate_of} was then "
                 f"{pruned[decision.duplicate_of].reason} by the prototype cut")
    return text


class DecisionsConfig(FrozenModel):
    """What the decisions depend on: the dedup passes, the prototype cut, the columns."""

    id_column: str = "id"
    vector_column: str = "embedding"
    dedup: DedupConfig = DedupConfig()
    prototypes: PrototypeConfig = PrototypeConfig()

    @classmethod
    def of(cls, config: PruneConfig) -> DecisionsConfig:
        return cls(id_column=config.id_column, vector_column=config.embed.vector_column,
                   dedup=config.dedup, prototypes=config.prototypes)


class PruneDecisions(GlobalStep[DecisionsConfig]):
    """Duplicates first (exact, MinHash, semantic), then the prototype cut over the rest:
    one row per rejected id, and a `DecisionSummary` for the report."""

    name: ClassVar[str] = "prune_decisions"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        return DECISION_SCHEMA

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        cfg, dataset = self.config, inputs[0]
        removed = duplicate_decisions(dataset, cfg.dedup, id_column=cfg.id_column,
                                      vector_column=cfg.vector_column)
        pruned, summary = _prototype_cut(dataset, removed, cfg)
        decisions = {**removed, **pruned}
        ordered = sorted(decisions.items())
        sink.write(pa.table({
            "id": [i for i, _ in ordered],
            "reason": [d.reason for _, d in ordered],
            "duplicate_of": [d.duplicate_of or None for _, d in ordered],
            "score": [d.score for _, d in ordered],
            "detail": [_detail(d, pruned) for _, d in ordered],
        }, schema=DECISION_SCHEMA))
        reasons = Counter(decision.reason for decision in decisions.values())
        return summary.model_copy(update={
            "reasons": dict(reasons), "cluster_sizes": _cluster_sizes(dataset).tolist(),
        }).model_dump(mode="json")


def _cluster_sizes(dataset: Dataset) -> np.ndarray:
    sizes = np.zeros(0, np.int64)
    for batch in dataset.iter_batches(columns=["cluster"]):
        sizes_batch = np.bincount(batch.column(0).to_numpy())
        grown = np.zeros(max(len(sizes), len(sizes_batch)), np.int64)
        grown[:len(sizes)] += sizes
        grown[:len(sizes_batch)] += sizes_batch
        sizes = grown
    return sizes
