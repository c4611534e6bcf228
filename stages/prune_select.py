"""prune_select (map stage): rows the decisions list go to rejected/ with their reason, the
row their duplicate group keeps (`duplicate_of`) and score; the rest pass.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
from pydantic import Field

from gristmill.stages.base import (
    REJECT_COLUMNS,
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    attach_reasons,
    require_columns,
)
from gristmill.stages.global_step import DatasetRef


class PruneSelectConfig(StageConfig):
    id_column: str = "id"
    decisions: DatasetRef
    drop_columns: list[str] = Field(default_factory=lambda: ["exact_key", "minhash"])


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
