"""prune: prototype pruning (Sorscher et al., 2022) and duplicate removal (SemDeDup).

This module holds the method's configs; each step has its own module (prune_score,
prune_centroids, prune_decisions, prune_select) and flows/prune.py chains them.

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

from typing import Self

from pydantic import Field, model_validator

from gristmill.config import FrozenModel
from gristmill.scoring.pruning import Strategy
from gristmill.stages.dedup import DedupConfig
from gristmill.stages.embed import EmbedConfig


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
