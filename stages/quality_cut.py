"""quality_cut (global step), step 2 of the quality filter: cuts the committed scored dataset
into exact quantile buckets (top 0-10%, 10-20%, ...) with a radix select whose histograms the
Ray workers count shard by shard, counts each bucket's samples (or tokens) the same way,
and asks the data-filtering scaling law how many top buckets to train on for the budget
(Goyal et al., 2024). It writes one row per bucket (cut,
size, selected) and keeps the law's decision in its manifest summary.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.scoring import scaling_laws as law
from gristmill.scoring.quality import (
    KEY_BITS,
    QualityError,
    RadixPass,
    assign_buckets,
    bucket_thresholds,
    radix_counts,
)
from gristmill.stages.base import (
    require_columns,
)
from gristmill.stages.global_step import GlobalStep, StepSink
from gristmill.stages.quality_score import SCORE_TYPES, TOKEN_TYPES, BudgetUnit, QualityFilterError
from gristmill.stages.worker_pass import map_shards
from gristmill.storage.reader import Dataset


class QualityCuts(FrozenModel):
    """Bucket cuts and what each bucket holds."""

    fractions: list[float]
    thresholds: list[float] = Field(description="Descending; bucket i: cut_i <= s < cut_i-1")
    rows: int
    bucket_rows: list[int]
    bucket_tokens: list[int] | None = None


class _ColumnProblems(FrozenModel):
    """Rows the cut cannot rank, counted by the workers so the driver can say how many."""

    nulls: int = 0
    nans: int = 0


def _radix_share(table: pa.Table, *, level: int, prefixes: list[int]) -> pa.Table:
    """One shard's digit counts for one radix pass, sent back sparse (nonzero only)."""
    array = table.column(0)
    scores = array.drop_null().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    nans = int(np.isnan(scores).sum())
    counts = radix_counts(scores[~np.isnan(scores)], level, prefixes)
    rows, digits = np.nonzero(counts)
    return pa.table({"nulls": [array.null_count], "nans": [nans],
                     "rows": [rows.astype(np.int32)], "digits": [digits.astype(np.int32)],
                     "counts": [counts[rows, digits]]})


def _worker_radix_pass(dataset: Dataset, column: str, runtime: RuntimeConfig) -> RadixPass:
    """A radix pass whose counting runs on the workers, one task per shard; the first pass
    also refuses null and NaN scores, with their counts."""
    def count_pass(level: int, prefixes: list[int]) -> np.ndarray:
        total = np.zeros((len(prefixes), 1 << KEY_BITS), np.int64)
        found = _ColumnProblems()
        share = functools.partial(_radix_share, level=level, prefixes=prefixes)
        for part in map_shards(dataset, share, [column], runtime):
            for row in part.to_pylist():
                np.add.at(total, (np.asarray(row["rows"], np.intp),
                                  np.asarray(row["digits"], np.intp)), row["counts"])
                found = _ColumnProblems(nulls=found.nulls + row["nulls"],
                                        nans=found.nans + row["nans"])
        if level == 0:
            _refuse_unranked(dataset, column, found)
        return total
    return count_pass


def _refuse_unranked(dataset: Dataset, column: str, found: _ColumnProblems) -> None:
    if found.nulls:
        raise QualityFilterError(
            f"{found.nulls} rows of {dataset.uri} have no {column!r}: the score column must "
            "be complete (score those rows or drop them first)")
    if found.nans:
        raise QualityFilterError(f"{found.nans} NaN scores in {column!r} of {dataset.uri}: "
                                 "rescore those rows or drop them first")


def _bucket_share(table: pa.Table, *, thresholds: list[float], buckets: int) -> pa.Table:
    """One shard's rows (and tokens) per bucket, and how many token counts are missing."""
    assigned = assign_buckets(table.column(0).to_numpy(zero_copy_only=False), thresholds)
    rows = np.bincount(assigned, minlength=buckets)
    tokens = np.zeros(buckets, np.int64)
    missing = 0
    if table.num_columns > 1:
        column = table.column(1)
        missing = column.null_count
        counts = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        tokens = np.bincount(assigned, weights=counts, minlength=buckets).astype(np.int64)
    return pa.table({"rows": [rows], "tokens": [tokens], "missing_tokens": [missing]})


def cut_buckets(dataset: Dataset, score_column: str, fractions: list[float],
                token_column: str | None = None,
                runtime: RuntimeConfig | None = None) -> QualityCuts:
    """Exact quantile cuts over the whole scored dataset: four radix passes, then one pass
    to count bucket sizes, each run on the Ray workers shard by shard. The driver adds up
    histograms and never reads the score column."""
    runtime = runtime or RuntimeConfig(progress=False)
    wanted = {score_column: SCORE_TYPES, **({token_column: TOKEN_TYPES} if token_column else {})}
    require_columns(dataset.schema, "quality cut", wanted)
    try:
        thresholds = bucket_thresholds(
            _worker_radix_pass(dataset, score_column, runtime), dataset.num_rows, fractions)
    except QualityError as err:
        raise QualityFilterError(f"{dataset.uri}: {err}") from err
    rows = np.zeros(len(fractions) + 1, np.int64)
    tokens = np.zeros(len(fractions) + 1, np.int64)
    columns = [score_column, *([token_column] if token_column else [])]
    share = functools.partial(_bucket_share, thresholds=thresholds, buckets=rows.size)
    missing = 0
    for part in map_shards(dataset, share, columns, runtime):
        for row in part.to_pylist():
            rows += np.asarray(row["rows"], np.int64)
            tokens += np.asarray(row["tokens"], np.int64)
            missing += row["missing_tokens"]
    if missing:
        raise QualityFilterError(f"{missing} rows of {dataset.uri} have no {token_column!r}: "
                                 "a budget in tokens needs every row's token count")
    empty = [i for i in range(len(fractions)) if rows[i] == 0]
    if empty:
        raise QualityFilterError(f"quality buckets {empty} are empty: scores tie across the "
                                 f"cuts {thresholds}; use a finer scorer or fewer buckets")
    return QualityCuts(fractions=fractions, thresholds=thresholds, rows=dataset.num_rows,
                       bucket_rows=rows[:-1].tolist(),
                       bucket_tokens=tokens[:-1].tolist() if token_column else None)


class PilotRun(FrozenModel):
    """One pilot training run on one bucket alone."""

    bucket: int = Field(ge=0, description="0 = the best bucket")
    samples_seen: float = Field(gt=0, description="Samples (or tokens) seen in training")
    error: float = Field(gt=0, description="Measured error (e.g. 1 - accuracy)")


class LawChoice(FrozenModel):
    """Where the law's parameters come from: given, fitted to pilot runs, or a preset."""

    preset: str = Field(default="datacomp_medium", title="Preset",
                        description=f"Published fit to use: {', '.join(law.PRESETS)}")
    params: law.LawParams | None = Field(
        default=None, title="Parameters", description="Explicit a, d, b, tau (beats preset)")
    pilots: list[PilotRun] | None = Field(
        default=None, title="Pilot runs",
        description="Fit the law to these runs (beats params and preset)")
    pilot_bucket_samples: float | None = Field(
        default=None, gt=0, title="Pilot bucket size",
        description="Samples per bucket in the pilot runs; None = this data's bucket sizes")
    fit_d: bool = Field(default=False, title="Fit d",
                        description="Fit the irreducible error d too (paper: fixed)")
    d: float = Field(default=0.1, ge=0, title="Fixed d", description="d when not fitted")
    pilot_tolerance: float = Field(
        default=0.0, ge=0, title="Pilot noise tolerance",
        description="How much a bucket's error may rise with samples before the table is "
                    "refused as non-monotone")
    rescale: bool = Field(
        default=False, title="Rescale to these buckets",
        description="Scale a so one epoch of the best bucket here counts as one epoch of a "
                    "12.8M-sample DataComp bucket (for a preset on a pool of another size)")
    variant: law.Variant = Field(
        default="repetition", title="Law variant",
        description="repetition: decaying exponent per epoch (paper); effective: repeats "
                    "counted as discounted fresh samples")


class PoolDecision(FrozenModel):
    """The law's choice and everything it was made from (kept in the manifest lineage)."""

    budget: float
    unit: BudgetUnit
    keep_buckets: int
    bucket_sizes: list[float]
    law: law.LawParams
    law_source: str
    variant: law.Variant
    predicted_error: list[float] = Field(description="Per pool size k = 1..K at the budget")


def resolve_law(choice: LawChoice, bucket_sizes: list[float]) -> tuple[law.LawParams, str]:
    """The parameters to decide with, and a line saying where they came from."""
    try:
        if choice.pilots is not None:
            table = law.PilotTable.of([p.bucket for p in choice.pilots],
                                      [p.samples_seen for p in choice.pilots],
                                      [p.error for p in choice.pilots],
                                      tolerance=choice.pilot_tolerance)
            sizes = choice.pilot_bucket_samples or bucket_sizes
            fit = law.fit_law(table, sizes, d=None if choice.fit_d else choice.d)
            params = fit.params
            source = f"fitted to {len(choice.pilots)} pilot runs (rmse {fit.rmse:.4g})"
        elif choice.params is not None:
            params, source = choice.params, "given parameters"
        else:
            params, source = law.preset(choice.preset), f"preset {choice.preset}"
        if choice.rescale:
            params = law.rescaled(params, bucket_sizes[0])
            source += f", a rescaled to {bucket_sizes[0]:,.0f} per bucket"
    except law.ScalingLawError as err:
        raise QualityFilterError(str(err)) from err
    return params, source


def decide(choice: LawChoice, cuts: QualityCuts, budget: float,
           unit: BudgetUnit = "samples") -> PoolDecision:
    """How many top buckets to keep for `budget` samples (or tokens) seen."""
    sizes = cuts.bucket_rows if unit == "samples" else cuts.bucket_tokens
    if sizes is None:
        raise QualityFilterError("a budget in tokens needs a token column to size buckets")
    params, source = resolve_law(choice, [float(s) for s in sizes])
    if params.buckets != len(sizes):
        raise QualityFilterError(f"the law has {params.buckets} buckets, the cuts "
                                 f"{len(sizes)}: cut as many buckets as the law describes")
    try:
        errors = law.error_table(params, [budget], sizes, choice.variant)[:, 0]
        keep = int(law.best_pool(params, [budget], sizes, choice.variant)[0])
    except law.ScalingLawError as err:
        raise QualityFilterError(str(err)) from err
    return PoolDecision(budget=budget, unit=unit, keep_buckets=keep,
                        bucket_sizes=[float(s) for s in sizes], law=params, law_source=source,
                        variant=choice.variant, predicted_error=errors.tolist())


class QualityCutConfig(FrozenModel):
    """What the cut and the pool depend on: the score (and token) column, the bucket
    fractions, the law, and the budget it is asked about."""

    score_column: str = "quality_score"
    fractions: list[float] = Field(default_factory=lambda: [0.1, 0.1, 0.1, 0.1],
                                   description="Share of rows per bucket, best first")
    token_column: str | None = Field(
        default=None, description="Per-row token counts: bucket sizes for a token budget")
    law: LawChoice = Field(default_factory=LawChoice)
    budget: float = Field(gt=0, description="Samples (or tokens) the training run will see")
    unit: BudgetUnit = "samples"


CUT_SCHEMA = pa.schema([
    pa.field("bucket", pa.int16()),
    pa.field("threshold", pa.float64()),
    pa.field("rows", pa.int64()),
    pa.field("tokens", pa.int64()),
    pa.field("selected", pa.bool_()),
])
"""One row per bucket, 0 = best: its lowest score (bucket b holds threshold_b <= s <
threshold_b-1), its rows (and tokens, null without a token column), and whether the law's
pool keeps it."""


def cut_table(cuts: QualityCuts, keep_buckets: int) -> pa.Table:
    """The step's output rows; also how a cut made by hand is written for the select
    stage to pin (tests, benchmarks)."""
    buckets = range(len(cuts.thresholds))
    return pa.table({
        "bucket": list(buckets), "threshold": cuts.thresholds, "rows": cuts.bucket_rows,
        "tokens": cuts.bucket_tokens or [None] * len(buckets),
        "selected": [b < keep_buckets for b in buckets],
    }, schema=CUT_SCHEMA)


class QualityCut(GlobalStep[QualityCutConfig]):
    """Cut the scored dataset into buckets and pick the pool: the bucket table is the output,
    the law's `PoolDecision` the summary (so the report can show why)."""

    name: ClassVar[str] = "quality_cut"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        return CUT_SCHEMA

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        cfg = self.config
        cuts = cut_buckets(inputs[0], cfg.score_column, cfg.fractions, cfg.token_column,
                           sink.runtime)
        decision = decide(cfg.law, cuts, cfg.budget, cfg.unit)
        sink.write(cut_table(cuts, decision.keep_buckets))
        return decision.model_dump(mode="json")


# ---- 3. select -------------------------------------------------------------------------
