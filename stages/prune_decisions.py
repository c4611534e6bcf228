"""prune_decisions (global step): exact, MinHash and semantic duplicates (stages/dedup.py),
then the prototype cut over the survivors: one row per rejected id, the report's summary in
the manifest. A duplicate whose kept copy the cut then prunes says so in its detail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from gristmill.config import FrozenModel
from gristmill.scoring.duplicates import Duplicate, Duplicates
from gristmill.scoring.pruning import (
    keep_hard,
    resolve_keep_fraction,
    select_prototypes,
    tiebreak_keys,
)
from gristmill.stages.dedup import DedupConfig, duplicate_decisions
from gristmill.stages.global_step import GlobalStep, StepSink
from gristmill.stages.prune import PrototypeConfig, PruneConfig
from gristmill.storage.reader import Dataset

HISTOGRAM_BINS = 40
DECISION_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("reason", pa.string()),
    pa.field("duplicate_of", pa.string()), pa.field("score", pa.float64()),
    pa.field("detail", pa.string()),
])


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
                                      vector_column=cfg.vector_column, work=sink.work,
                                      runtime=sink.runtime)
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
