"""prune_decisions (global step): exact, MinHash and semantic duplicates (stages/dedup.py),
then the prototype cut over the survivors (stages/prototype_cut.py): one row per rejected
id, the report's summary in the manifest. A duplicate whose kept copy the cut then prunes
says so in its detail. Every phase runs on the workers; the last one joins each duplicate
with the cut's decision about its kept row (both hashed by that row's id) and writes the
decisions, sorted by id within each partition, as the step's output shards.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, Field

from gristmill.config import FrozenModel, StorageConfig
from gristmill.scoring.duplicates import Duplicate, Duplicates
from gristmill.stages.dedup import DedupConfig, duplicate_decisions
from gristmill.stages.global_step import GlobalStep, StepSink
from gristmill.stages.lsh_dedup import DECISION_SCHEMA as DUPLICATE_SCHEMA
from gristmill.stages.lsh_dedup import shard_refs
from gristmill.stages.prototype_cut import prototype_cut
from gristmill.stages.prune import PrototypeConfig, PruneConfig
from gristmill.stages.routed_files import RoutedFiles, partition_of, run_phase, run_tasks
from gristmill.storage.fs import Location
from gristmill.storage.manifest import ShardInfo
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import ShardSetWriter

DECISIONS_PER_TASK = 200_000
"""Input rows per task of the decisions' last phases (a partition's decisions in memory)."""
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


def _route_duplicates(shard: int, removed: RoutedFiles, by_kept: RoutedFiles,
                      partitions: int) -> dict[str, Any]:
    """A shard's duplicate decisions, sent where the prototype cut's decision about the row
    each keeps lands (a hash of that row's id)."""
    found = removed.read(shard)
    by_kept.write(found, partition_of(found.column("duplicate_of").to_pylist(), partitions),
                  f"s{shard:06d}")
    return {"duplicates": found.num_rows}


def _write_decisions(partition: int, by_kept: RoutedFiles, pruned: RoutedFiles,
                     folder: Location, storage: StorageConfig) -> dict[str, Any]:
    """One partition's decisions, sorted by id, as output shards written by this task: the
    rows the cut pruned (hashed here by id) and the duplicates whose kept row hashes here,
    each told whether the cut then pruned its kept row."""
    cut = {row["id"]: Duplicate(row["reason"], "", row["score"])
           for row in pruned.read(partition).to_pylist()}
    decisions = dict(cut)
    decisions.update({row["id"]: Duplicate(row["reason"], row["duplicate_of"], row["score"],
                                           row["matched"] or "")
                      for row in by_kept.read(partition).to_pylist()})
    ordered = sorted(decisions.items())
    writer = ShardSetWriter(folder, DECISION_SCHEMA, prefix=f"part-{partition:05d}",
                            max_rows=storage.max_rows_per_shard,
                            max_bytes=storage.max_bytes_per_shard, checksum=storage.checksum)
    writer.write(pa.table({
        "id": [i for i, _ in ordered], "reason": [d.reason for _, d in ordered],
        "duplicate_of": [d.duplicate_of or None for _, d in ordered],
        "score": [d.score for _, d in ordered],
        "detail": [_detail(d, cut) for _, d in ordered]}, schema=DECISION_SCHEMA))
    return {"shards": [shard.model_dump() for shard in writer.close()],
            "reasons": Counter(d.reason for d in decisions.values())}


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
        runtime = sink.runtime
        removed = duplicate_decisions(dataset, cfg.dedup, id_column=cfg.id_column,
                                      vector_column=cfg.vector_column, work=sink.work,
                                      runtime=runtime)
        shards = shard_refs(dataset, runtime)
        partitions = max(2, math.ceil(dataset.num_rows / DECISIONS_PER_TASK))
        work = sink.work.join("decisions")
        cut = prototype_cut(shards, removed, cfg.prototypes, id_column=cfg.id_column,
                            partitions=partitions, work=work.join("cut"), runtime=runtime)
        by_kept = RoutedFiles(work.join("by_kept"), DUPLICATE_SCHEMA)
        if removed is not None:
            run_phase(work, "route", _route_duplicates,
                      [(s.index, removed, by_kept, partitions) for s in shards], runtime)
        written = run_tasks(_write_decisions,
                            [(p, by_kept, cut.pruned, sink.location, runtime.storage)
                             for p in range(partitions)], runtime)
        sink.adopt([ShardInfo(**shard) for part in written for shard in part["shards"]])
        reasons: Counter[str] = Counter()
        for part in written:
            reasons.update(part["reasons"])
        return DecisionSummary(rows=dataset.num_rows, reasons=dict(reasons),
                               **cut.summary).model_dump(mode="json")
