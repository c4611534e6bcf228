"""quality_select (map stage), step 3 of the quality filter: its config pins the cut dataset
by content, so the cuts and the choice sit in the output's lineage and cache key. Rows
outside the chosen pool are rejected as `below_selected_quality_pool` with their bucket.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field, ValidationError, model_validator

from gristmill.config import FrozenModel
from gristmill.scoring.quality import assign_buckets
from gristmill.stages.base import (
    REJECT_COLUMNS,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    reject_schema,
    require_columns,
    split_by_reasons,
)
from gristmill.stages.global_step import DatasetRef
from gristmill.stages.quality_score import SCORE_TYPES

REJECT_REASON = "below_selected_quality_pool"


class SelectedPool(FrozenModel):
    """What the select stage reads from a `quality_cut` dataset."""

    thresholds: list[float] = Field(min_length=1, description="Descending bucket cuts")
    keep_buckets: int = Field(ge=1, description="Keep buckets 0..keep_buckets-1")

    @model_validator(mode="after")
    def _descending(self) -> SelectedPool:
        cuts = np.asarray(self.thresholds, dtype=np.float64)
        if not np.all(np.isfinite(cuts)) or np.any(np.diff(cuts) > 0):
            raise ValueError(f"thresholds must be finite and descending: {self.thresholds}")
        return self

    @classmethod
    def read(cls, ref: DatasetRef) -> SelectedPool:
        """The cuts and the pool, checked: buckets 0..K-1, the selected ones the best."""
        dataset = ref.open()
        require_columns(dataset.schema, "quality_select",
                        {"bucket": (pa.int16(),), "threshold": SCORE_TYPES,
                         "selected": (pa.bool_(),)})
        table = dataset.to_table(columns=["bucket", "threshold", "selected"]).sort_by("bucket")
        selected = table.column("selected").to_pylist()
        keep = sum(selected)
        if table.column("bucket").to_pylist() != list(range(table.num_rows)) \
                or selected != [True] * keep + [False] * (table.num_rows - keep):
            raise StageInputError(f"{ref.uri} is not a quality cut: buckets must run 0..K-1 "
                                  "and the selected ones be the best (0..k-1)")
        try:
            return cls(thresholds=table.column("threshold").to_pylist(), keep_buckets=keep)
        except ValidationError as err:
            raise StageInputError(f"{ref.uri}: {err}") from err


class QualitySelectConfig(StageConfig):
    """The cut dataset by content: new cuts or a new budget's pool is a new selection over
    the same scores."""

    score_column: str = "quality_score"
    bucket_column: str = "quality_bucket"
    cuts: DatasetRef = Field(description="A `quality_cut` output: cuts and selected buckets")


class QualitySelect(MapStage[QualitySelectConfig]):
    name: ClassVar[str] = "quality_select"

    def setup(self) -> None:
        self.pool = SelectedPool.read(self.config.cuts)

    def check_input(self, schema: pa.Schema) -> None:
        """The score column and a readable, coherent cut, before any worker starts."""
        require_columns(schema, self.name, {self.config.score_column: SCORE_TYPES})
        SelectedPool.read(self.config.cuts)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        base = [f for f in input_schema if f.name != self.config.bucket_column]
        return pa.schema([*base, pa.field(self.config.bucket_column, pa.int16())])

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return reject_schema(self.output_schema(input_schema))

    def details(self) -> list[str]:
        """The reject detail per bucket (index K: below every bucket)."""
        pool = self.pool
        total = len(pool.thresholds)
        kept = f"kept buckets 0..{pool.keep_buckets - 1} of {total}, 0 = best"
        lines = [f"quality bucket {b} ({kept})" for b in range(total)]
        return [*lines, f"below all {total} quality buckets (score < {pool.thresholds[-1]:.6g};"
                        f" {kept})"]

    def process(self, batch: pa.Table) -> Split:
        cfg, pool = self.config, self.pool
        scores = batch.column(cfg.score_column).to_numpy(zero_copy_only=False).astype(np.float64)
        missing = np.isnan(scores)
        buckets = assign_buckets(np.where(missing, -np.inf, scores), pool.thresholds)
        if cfg.bucket_column in batch.column_names:
            batch = batch.drop_columns([cfg.bucket_column])
        batch = batch.append_column(pa.field(cfg.bucket_column, pa.int16()),
                                    pa.array(buckets.astype(np.int16)))
        if missing.any():  # a score column written elsewhere may have holes: never guess
            lines = self.details()
            reasons: list[str | None] = [None] * batch.num_rows
            details: list[str | None] = [None] * batch.num_rows
            for i in np.flatnonzero(missing):
                reasons[i], details[i] = "missing_score", "score is null or NaN"
            for i in np.flatnonzero(~missing & (buckets >= pool.keep_buckets)):
                reasons[i], details[i] = REJECT_REASON, lines[buckets[i]]
            return split_by_reasons(batch, reasons, details, self.name)
        keep = buckets < pool.keep_buckets
        rejected = batch.filter(pa.array(~keep))
        dropped = buckets[~keep] - pool.keep_buckets
        detail = pa.array(self.details()[pool.keep_buckets:], pa.string()).take(pa.array(dropped))
        count = rejected.num_rows
        rejected = (rejected
                    .append_column(REJECT_COLUMNS[0], pa.repeat(REJECT_REASON, count))
                    .append_column(REJECT_COLUMNS[1], detail)
                    .append_column(REJECT_COLUMNS[2], pa.repeat(self.name, count)))
        return Split(batch.filter(pa.array(keep)), rejected)


# ---- reference classifier (driver) --------------------------------------------------
