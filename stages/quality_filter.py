"""quality_filter: score rows, cut quality buckets, keep the pool the scaling law picks.

Three steps, so scores are computed once and selections are cheap to redo:

1. `quality_score` (map stage): a pluggable scorer writes a float64 score column; rows it
   cannot score (empty text, unreadable image) are rejected with the reason.
2. `quality_cut` (global step): streams only the score column of the committed scored
   dataset to cut exact quantile buckets (top 0-10%, 10-20%, ...), counts each bucket's
   samples (or tokens), and asks the data-filtering scaling law how many top buckets to
   train on for the budget (Goyal et al., 2024). It writes one row per bucket (cut, size,
   selected) and keeps the law's decision in its manifest summary.
3. `quality_select` (map stage): its config pins the cut dataset by content, so the cuts
   and the choice sit in the output's lineage and cache key. Rows outside the chosen pool
   are rejected as `below_selected_quality_pool` with their bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, ValidationError, model_validator

from gristmill.config import FrozenModel
from gristmill.inference import Embedder, EmbedderConfig, InferenceError
from gristmill.scoring import scaling_laws as law
from gristmill.scoring.quality import (
    LinearHead,
    QualityError,
    assign_buckets,
    bucket_thresholds,
    roc_auc,
    train_linear_head,
)
from gristmill.stages.base import (
    REJECT_COLUMNS,
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    reject_schema,
    require_columns,
    split_by_reasons,
)
from gristmill.stages.global_step import DatasetRef, GlobalStep, StepSink
from gristmill.stages.quality_scorers import (
    ClipScorerConfig,
    EmbeddingClassifierScorerConfig,
    HeuristicScorerConfig,
    Scorer,
    ScorerConfig,
    build_scorer,
)
from gristmill.storage.fs import read_bytes, resolve, write_bytes_atomic
from gristmill.storage.reader import Dataset

SCORE_TYPES = (pa.float64(), pa.float32())
TOKEN_TYPES = (pa.int64(), pa.int32(), pa.int16(), pa.uint32(), pa.uint64())
REJECT_REASON = "below_selected_quality_pool"
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


class QualityCuts(FrozenModel):
    """Bucket cuts and what each bucket holds."""

    fractions: list[float]
    thresholds: list[float] = Field(description="Descending; bucket i: cut_i <= s < cut_i-1")
    rows: int
    bucket_rows: list[int]
    bucket_tokens: list[int] | None = None


def _score_chunks(dataset: Dataset, column: str) -> Iterator[np.ndarray]:
    for batch in dataset.iter_batches(columns=[column]):
        array = batch.column(0)
        if array.null_count:
            raise QualityFilterError(
                f"{array.null_count} rows of {dataset.uri} have no {column!r}: the score "
                "column must be complete (score those rows or drop them first)")
        yield array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def cut_buckets(dataset: Dataset, score_column: str, fractions: list[float],
                token_column: str | None = None) -> QualityCuts:
    """Exact quantile cuts over the whole scored dataset, streaming only the score (and
    token) column a batch at a time, then one more pass to count bucket sizes."""
    wanted = {score_column: SCORE_TYPES, **({token_column: TOKEN_TYPES} if token_column else {})}
    require_columns(dataset.schema, "quality cut", wanted)
    try:
        thresholds = bucket_thresholds(lambda: _score_chunks(dataset, score_column),
                                       dataset.num_rows, fractions)
    except QualityError as err:
        raise QualityFilterError(f"{dataset.uri}: {err}") from err
    rows = np.zeros(len(fractions) + 1, np.int64)
    tokens = np.zeros(len(fractions) + 1, np.int64)
    columns = [score_column, *([token_column] if token_column else [])]
    for batch in dataset.iter_batches(columns=columns):
        buckets = assign_buckets(batch.column(0).to_numpy(zero_copy_only=False), thresholds)
        rows += np.bincount(buckets, minlength=rows.size)
        if token_column:
            counts = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
            tokens += np.bincount(buckets, weights=counts, minlength=tokens.size).astype(np.int64)
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
        cuts = cut_buckets(inputs[0], cfg.score_column, cfg.fractions, cfg.token_column)
        decision = decide(cfg.law, cuts, cfg.budget, cfg.unit)
        sink.write(cut_table(cuts, decision.keep_buckets))
        return decision.model_dump(mode="json")


# ---- 3. select -------------------------------------------------------------------------


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


class ReferenceSets(FrozenModel):
    """Labelled reference texts for the embedding classifier: rows whose label is in
    `positive` are what good data looks like, rows in `negative` what to filter out. A
    stable hash of each row's id holds out a share to measure the classifier on."""

    uri: str = Field(title="Reference dataset", description="A dataset with text and labels")
    text_column: str = "text"
    label_column: str = "label"
    positive: list[str] = Field(default_factory=lambda: ["ham"], min_length=1)
    negative: list[str] = Field(default_factory=lambda: ["spam"], min_length=1)
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)
    max_rows_per_class: int | None = Field(
        default=None, ge=2, description="Cap per class and split (embedding costs CPU time)")
    c: float = Field(default=1.0, gt=0, description="Inverse L2 strength of the regression")
    seed: int = 0


class ClassifierReport(FrozenModel):
    train_positive: int
    train_negative: int
    holdout_positive: int
    holdout_negative: int
    holdout_auc: float | None


def _held_out(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    digests = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in ids]
    draws = np.array([int.from_bytes(d, "big") for d in digests], dtype=np.float64) / 2.0**64
    return draws < fraction


def reference_texts(refs: ReferenceSets) -> dict[tuple[str, bool], list[str]]:
    """(split, positive) -> texts, split being "train" or "holdout"."""
    dataset = Dataset.open(refs.uri)
    require_columns(dataset.schema, "reference classifier",
                    {refs.text_column: STRING_TYPES, refs.label_column: STRING_TYPES,
                     "id": STRING_TYPES})
    table = dataset.to_table(columns=["id", refs.text_column, refs.label_column])
    labels = table.column(refs.label_column).to_pylist()
    texts = table.column(refs.text_column).to_pylist()
    held = _held_out(table.column("id").to_pylist(), refs.holdout_fraction, refs.seed)
    groups: dict[tuple[str, bool], list[str]] = {(s, p): [] for s in ("train", "holdout")
                                                 for p in (True, False)}
    cap = refs.max_rows_per_class
    for i in np.random.default_rng(refs.seed).permutation(len(texts)):  # a cap takes a sample
        text, label = texts[i], labels[i]
        if label in refs.positive or label in refs.negative:
            group = groups[("holdout" if held[i] else "train", label in refs.positive)]
            if text and text.strip() and (cap is None or len(group) < cap):
                group.append(text)
    return groups


def train_reference_classifier(refs: ReferenceSets, embedder: EmbedderConfig,
                               output: str) -> tuple[EmbeddingClassifierScorerConfig,
                                                     ClassifierReport]:
    """Train the linear head on the reference split, write it to `output`, and measure ROC
    AUC on the held-out split: the scorer config that points at (and hashes) the head."""
    groups = reference_texts(refs)
    model = Embedder(embedder)
    head = train_linear_head(model.embed(groups[("train", True)]),
                             model.embed(groups[("train", False)]), c=refs.c)
    auc = None
    if groups[("holdout", True)] and groups[("holdout", False)]:
        held = groups[("holdout", True)] + groups[("holdout", False)]
        labels = np.array([True] * len(groups[("holdout", True)])
                          + [False] * len(groups[("holdout", False)]))
        auc = roc_auc(head.decision(model.embed(held)), labels)
    data = head.to_bytes()
    write_bytes_atomic(resolve(output), data)
    config = EmbeddingClassifierScorerConfig(
        text_column=refs.text_column, classifier=resolve(output).uri(),
        classifier_sha256=hashlib.sha256(data).hexdigest(), embedder=embedder)
    report = ClassifierReport(
        train_positive=len(groups[("train", True)]), train_negative=len(groups[("train", False)]),
        holdout_positive=len(groups[("holdout", True)]),
        holdout_negative=len(groups[("holdout", False)]), holdout_auc=auc)
    return config, report
