"""quality_score (map stage), step 1 of the quality filter: a pluggable scorer writes a
float64 score column; rows it cannot score (empty text, unreadable image) are rejected with
the reason. Scores are computed once; cuts and selections are cheap to redo on them.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from gristmill.inference import InferenceError
from gristmill.scoring.quality import (
    LinearHead,
    QualityError,
)
from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    reject_schema,
    require_columns,
    split_by_reasons,
)
from gristmill.stages.quality_scorers import (
    ClipScorerConfig,
    EmbeddingClassifierScorerConfig,
    HeuristicScorerConfig,
    Scorer,
    ScorerConfig,
    build_scorer,
)
from gristmill.storage.fs import read_bytes, resolve

SCORE_TYPES = (pa.float64(), pa.float32())
TOKEN_TYPES = (pa.int64(), pa.int32(), pa.int16(), pa.uint32(), pa.uint64())
BudgetUnit = Literal["samples", "tokens"]


class QualityFilterError(ValueError):
    """A scored dataset, cut or law that cannot yield a selection (said on the driver)."""


# ---- 1. score -----------------------------------------------------------------------------


class QualityScoreConfig(StageConfig):
    """Which scorer, and the column its score goes to."""

    scorer: ScorerConfig = Field(default_factory=HeuristicScorerConfig)
    score_column: str = "quality_score"


def load_head(config: EmbeddingClassifierScorerConfig) -> LinearHead:
    """The classifier file, checked against the hash the config (and cache key) carries."""
    data = read_bytes(resolve(config.classifier))
    digest = hashlib.sha256(data).hexdigest()
    if digest != config.classifier_sha256:
        raise QualityError(f"classifier {config.classifier} has sha256 {digest}, the config "
                           f"says {config.classifier_sha256}: retrain or fix the config")
    return LinearHead.from_bytes(data)


def make_scorer(config: QualityScoreConfig) -> Scorer:
    scorer = config.scorer
    head = load_head(scorer) if isinstance(scorer, EmbeddingClassifierScorerConfig) else None
    return build_scorer(scorer, head)


class QualityScore(MapStage[QualityScoreConfig]):
    name: ClassVar[str] = "quality_score"

    def setup(self) -> None:
        self.scorer = make_scorer(self.config)
        self.scorer.load()

    def check_input(self, schema: pa.Schema) -> None:
        """Columns, model paths and the classifier's hash, before any worker starts."""
        try:
            scorer = make_scorer(self.config)
        except (QualityError, InferenceError, OSError) as err:
            raise StageInputError(f"{self.name}: {err}") from err
        columns = dict.fromkeys(scorer.columns(), STRING_TYPES)
        if isinstance(self.config.scorer, ClipScorerConfig):
            columns[self.config.scorer.image_column] = (*STRING_TYPES, pa.binary(),
                                                        pa.large_binary())
        require_columns(schema, self.name, columns)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        base = [f for f in input_schema if f.name != self.config.score_column]
        return pa.schema([*base, pa.field(self.config.score_column, pa.float64())])

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return reject_schema(self.output_schema(input_schema))

    def process(self, batch: pa.Table) -> Split:
        values, problems = self.scorer.score(batch)
        reasons = list(problems)
        details: list[str | None] = [None] * batch.num_rows
        for i, value in enumerate(values):
            if reasons[i] is None and not np.isfinite(value):
                reasons[i] = "unscorable"
            if reasons[i] is not None:
                values[i] = np.nan
                details[i] = f"{self.config.scorer.kind} scorer: {reasons[i]}"
        column = self.config.score_column
        if column in batch.column_names:
            batch = batch.drop_columns([column])
        scores = pa.array(values, pa.float64(), mask=np.isnan(values))
        return split_by_reasons(batch.append_column(pa.field(column, pa.float64()), scores),
                                reasons, details, self.name)


# ---- 2. cut and decide (global step) ----------------------------------------------------
