"""Question dedup and decontamination (ScaleQuest step 5, ours).

Three passes, so the global part is an explicit barrier:
1. `QuestionDedupScore` (map) writes each question's exact key, MinHash signature, and its
   closeness to a benchmark's test questions (GSM8K test by default): word n-gram overlap
   (the larger containment either way) and embedding cosine similarity.
2. `QuestionDedupPlan` (global step) reads keys and signatures of the whole scored dataset
   and decides which rows are exact or near duplicates with scoring/duplicates.py (the one
   dedup every stage uses: each group keeps one row, by its survivor rule); its output
   dataset holds one row per dropped question, and the runner gives it a cache key,
   lineage and reuse like any stage.
3. `QuestionDedupSelect` (map) drops anything over the decontamination thresholds and the
   planned duplicates (its config pins the plan by content, a `DatasetRef`), each naming
   the question its group keeps in `duplicate_of`, each with its reason. Contaminated
   questions are left out of the grouping, so a kept copy is never one this step rejects;
   a plan made with other thresholds is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.config import FrozenModel
from gristmill.inference import Embedder, EmbedderConfig
from gristmill.scoring.duplicates import Duplicate
from gristmill.scoring.near_dup import MinHasher, exact_key, normalize_text, word_ngrams
from gristmill.sources.catalog import resolve as resolve_source
from gristmill.stages.base import (
    STRING_TYPES,
    ColumnTypes,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    reject_schema,
    require_columns,
    split_by_reasons,
)
from gristmill.stages.dedup import DedupConfig, read_decisions, text_pass
from gristmill.stages.global_step import DatasetRef, GlobalStep, StepSink
from gristmill.stages.question_columns import QuestionConfig, QuestionStage
from gristmill.storage.reader import Dataset


class BenchmarkSet(FrozenModel):
    """Test questions to keep out: a registered source (default: GSM8K test) or a dataset."""

    source: str | None = Field(default="gsm8k", description="A gristmill.sources name")
    uri: str | None = Field(default=None, description="A gristmill dataset instead of a source")
    column: str = "text"

    @model_validator(mode="after")
    def _one_origin(self) -> BenchmarkSet:
        if (self.source is None) == (self.uri is None):
            raise ValueError("set exactly one of benchmark.source and benchmark.uri")
        return self

    def questions(self) -> list[str]:
        if self.uri is not None:
            table = Dataset.open(self.uri).to_table(columns=[self.column])
            return [t for t in table.column(self.column).to_pylist() if t]
        texts = []
        for path in resolve_source(self.source or "").files:
            with Path(path).open(encoding="utf-8") as lines:
                texts += [json.loads(line)[self.column] for line in lines if line.strip()]
        return [t for t in texts if t]


class NgramIndex:
    """Benchmark n-grams -> benchmark rows, for the overlap of one text with its closest row."""

    def __init__(self, texts: list[str], n: int) -> None:
        self.n = n
        self.sizes = [len(word_ngrams(t, n)) for t in texts]
        self.rows: dict[tuple[str, ...], list[int]] = {}
        for row, text in enumerate(texts):
            for gram in word_ngrams(text, n):
                self.rows.setdefault(gram, []).append(row)

    def closest(self, text: str) -> tuple[float, int | None]:
        """Max over benchmark rows of the larger containment (text in row, row in text)."""
        grams = word_ngrams(text, self.n)
        shared = Counter(row for g in grams for row in self.rows.get(g, ()))
        if not shared:
            return 0.0, None
        best = max(shared, key=lambda r: (max(shared[r] / len(grams),
                                              shared[r] / max(self.sizes[r], 1)), -r))
        return max(shared[best] / len(grams), shared[best] / max(self.sizes[best], 1)), best


class QuestionDedupScoreConfig(QuestionConfig):
    num_perm: int = Field(default=128, ge=8)
    shingle_words: int = Field(default=5, ge=1, description="MinHash word n-gram size")
    minhash_seed: int = 1
    benchmark: BenchmarkSet | None = BenchmarkSet()
    benchmark_ngram: int = Field(default=5, ge=1, description="n of the overlap n-grams")
    embed: bool = Field(default=True, description="Also score embedding similarity")
    embedder: EmbedderConfig = EmbedderConfig()


class QuestionDedupScore(QuestionStage[QuestionDedupScoreConfig]):
    name: ClassVar[str] = "question_dedup_score"

    NEEDS: ClassVar[ColumnTypes] = {"id": STRING_TYPES}

    ADDED: ClassVar[list[pa.Field]] = [
        pa.field("dedup_key", pa.string()), pa.field("minhash", pa.list_(pa.uint64())),
        pa.field("bench_ngram_overlap", pa.float32()), pa.field("bench_embed_sim", pa.float32()),
        pa.field("bench_ngram_nearest", pa.string()),
        pa.field("bench_embed_nearest", pa.string())]

    def setup(self) -> None:
        cfg = self.config
        self.hasher = MinHasher(cfg.num_perm, cfg.shingle_words, cfg.minhash_seed)
        self.bench = cfg.benchmark.questions() if cfg.benchmark else []
        self.index = NgramIndex(self.bench, cfg.benchmark_ngram)
        self.embedder = Embedder(cfg.embedder) if cfg.embed and self.bench else None
        self.bench_vectors = self.embedder.embed(self.bench) if self.embedder else None

    def process(self, batch: pa.Table) -> Split:
        questions = batch.column(self.config.question_column).to_pylist()
        n = batch.num_rows
        empty = [not (q and normalize_text(q)) for q in questions]
        texts = ["" if e else q for q, e in zip(questions, empty, strict=True)]
        closest = [self.index.closest(t) for t in texts]
        sims: list[float | None] = [None] * n
        embed_nearest: list[str | None] = [None] * n
        if self.bench_vectors is not None and self.embedder is not None:
            vectors = self.embedder.embed(texts)
            scores = vectors @ self.bench_vectors.T
            best = scores.argmax(axis=1)
            for i in range(n):
                sims[i] = float(scores[i, best[i]])
                embed_nearest[i] = self.bench[int(best[i])]
        values = {"dedup_key": [exact_key(t) for t in texts],
                  "minhash": pa.array(list(self.hasher.signatures(texts)),
                                      pa.list_(pa.uint64())),
                  "bench_ngram_overlap": [c[0] for c in closest],
                  "bench_ngram_nearest": [None if row is None else self.bench[row]
                                          for _, row in closest],
                  "bench_embed_sim": sims, "bench_embed_nearest": embed_nearest}
        reasons = ["empty_question" if e else None for e in empty]
        details = ["nothing left after normalizing" if e else None for e in empty]
        return split_by_reasons(self.with_added(batch, values), reasons, details, self.name)


class Decontamination(FrozenModel):
    """The decontamination thresholds; None switches one off. The plan and the select step
    must share them: the plan leaves out of the grouping exactly what the select step
    rejects, so no group keeps a copy that is then dropped."""

    max_bench_ngram_overlap: float | None = Field(default=0.5, ge=0, le=1)
    max_bench_embed_sim: float | None = Field(default=0.9, ge=-1, le=1)

    def thresholds(self) -> dict[str, float | None]:
        return {"max_bench_ngram_overlap": self.max_bench_ngram_overlap,
                "max_bench_embed_sim": self.max_bench_embed_sim}

    def contamination(self, overlap: float | None, sim: float | None) -> str | None:
        """The reject reason for a question this close to the benchmark, or None."""
        if self.max_bench_ngram_overlap is not None and overlap is not None \
                and overlap > self.max_bench_ngram_overlap:
            return "benchmark_ngram"
        if self.max_bench_embed_sim is not None and sim is not None \
                and sim > self.max_bench_embed_sim:
            return "benchmark_embedding"
        return None


class QuestionDedupSelectConfig(StageConfig, Decontamination):
    """Carries the global decision (the plan's output, pinned by content) and the
    decontamination thresholds."""

    drops: DatasetRef | None = Field(
        default=None, description="A question_dedup_plan output: one row per dropped "
                                  "question; None drops no duplicates")


class QuestionDedupSelect(MapStage[QuestionDedupSelectConfig]):
    name: ClassVar[str] = "question_dedup"

    def setup(self) -> None:
        self.drops = planned_drops(self.config)

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {"id": STRING_TYPES,
                                            "bench_ngram_overlap": (pa.float32(),),
                                            "bench_embed_sim": (pa.float32(),),
                                            "bench_ngram_nearest": STRING_TYPES,
                                            "bench_embed_nearest": STRING_TYPES})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return reject_schema(pa.schema([*input_schema, pa.field("duplicate_of", pa.string())]))

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        reasons: list[str | None] = []
        details: list[str | None] = []
        survivors: list[str | None] = []
        for row_id, overlap, sim, ngram_near, embed_near in zip(
                *(batch.column(name).to_pylist() for name in (
                    "id", "bench_ngram_overlap", "bench_embed_sim", "bench_ngram_nearest",
                    "bench_embed_nearest")), strict=True):
            survivors.append(None)
            contamination = cfg.contamination(overlap, sim)
            if contamination == "benchmark_ngram":
                reasons.append(contamination)
                details.append(f"n-gram overlap {overlap:.2f} with: {(ngram_near or '')[:120]}")
            elif contamination == "benchmark_embedding":
                reasons.append(contamination)
                details.append(f"cosine {sim:.3f} with: {(embed_near or '')[:120]}")
            elif row_id in self.drops:
                reason, survivors[-1], detail = self.drops[row_id]
                reasons.append(reason)
                details.append(detail)
            else:
                reasons.append(None)
                details.append(None)
        split = split_by_reasons(batch.append_column("duplicate_of",
                                                     pa.array(survivors, pa.string())),
                                 reasons, details, self.name)
        return Split(split.kept.drop_columns(["duplicate_of"]), split.rejected)


def drop_entry(found: Duplicate) -> list[str]:
    """[reason, kept id, detail] of one duplicate question, for the drop list."""
    detail = f"duplicate of {found.duplicate_of}"
    if found.reason == "near_duplicate":
        detail = f"jaccard {found.score:.3f} to {found.matched or found.duplicate_of}" + (
            f", itself a duplicate of {found.duplicate_of}" if found.matched else "")
    return [found.reason, found.duplicate_of, detail]


DROPS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("reason", pa.string()),
                          pa.field("duplicate_of", pa.string()),
                          pa.field("detail", pa.string())])


class QuestionDedupPlanConfig(Decontamination):
    """What the drop list depends on: the near-duplicate threshold, and the decontamination
    thresholds, since contaminated questions are left out of the grouping."""

    near_duplicate_threshold: float = Field(default=0.7, gt=0, le=1,
                                            description="MinHash Jaccard for near duplicates")


class QuestionDedupPlan(GlobalStep[QuestionDedupPlanConfig]):
    """The barrier: streams ids, keys, signatures and benchmark scores of the whole scored
    dataset and writes one row per duplicate, named by id (sorted, so the output does not
    depend on how the input was sharded)."""

    name: ClassVar[str] = "question_dedup_plan"

    NEEDS: ClassVar[ColumnTypes] = {"id": STRING_TYPES, "dedup_key": STRING_TYPES,
                                    "minhash": (pa.list_(pa.uint64()),),
                                    "bench_ngram_overlap": (pa.float32(),),
                                    "bench_embed_sim": (pa.float32(),)}

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        if len(inputs) != 1:
            raise StageInputError(f"{self.name} reads one scored dataset, got {len(inputs)}")
        require_columns(inputs[0].schema, self.name, self.NEEDS)
        return DROPS_SCHEMA

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        clean = self.clean_rows(inputs[0], sink)
        dedup = DedupConfig(minhash_threshold=self.config.near_duplicate_threshold,
                            semantic=False)
        decided = text_pass(clean, dedup, id_column="id", key_column="dedup_key",
                            signature_column="minhash", work=sink.work.join("text"),
                            runtime=sink.runtime)
        removed = read_decisions(decided, len(clean.shards))
        drops = {row_id: drop_entry(found) for row_id, found in removed.items()}
        sink.write(drops_table(drops))
        return {"questions": inputs[0].num_rows,
                "contaminated": inputs[0].num_rows - clean.num_rows,
                **Counter(reason for reason, _, _ in drops.values())}

    def clean_rows(self, scored: Dataset, sink: StepSink) -> Dataset:
        """The rows the select step will not reject as contaminated (so no `duplicate_of`
        names a question that step drops), filtered on the workers into the step's work
        folder."""
        from gristmill.runtime import ensure_ray
        from gristmill.storage.ray_io import read_ray, write_ray

        ensure_ray(sink.runtime.ray)
        columns = ["id", "dedup_key", "minhash", "bench_ngram_overlap", "bench_embed_sim"]
        uri = sink.work.join("clean").uri()
        rows = read_ray(scored, columns=columns, verify=sink.runtime.storage.verify_inputs)
        write_ray(rows.map_batches(partial(_clean, self.config), batch_format="pyarrow"), uri,
                  schema=pa.schema([scored.schema.field(c) for c in columns[:3]]),
                  overwrite=True)
        return Dataset.open(uri)


def _clean(config: QuestionDedupPlanConfig, batch: pa.Table) -> pa.Table:
    clean = [config.contamination(overlap, sim) is None for overlap, sim in zip(
        batch.column("bench_ngram_overlap").to_pylist(),
        batch.column("bench_embed_sim").to_pylist(), strict=True)]
    return batch.filter(pa.array(clean, pa.bool_())).select(["id", "dedup_key", "minhash"])


def drops_table(drops: dict[str, list[str]]) -> pa.Table:
    """`duplicate_drops` as the plan's rows, in id order."""
    order = sorted(drops)
    return pa.table({"id": order, **{column: [drops[i][k] for i in order] for k, column in
                                     enumerate(("reason", "duplicate_of", "detail"))}},
                    schema=DROPS_SCHEMA)


def planned_drops(config: QuestionDedupSelectConfig) -> dict[str, tuple[str, str, str]]:
    """{dropped id: (reason, kept id, detail)} from the pinned plan. `DatasetRef.open`
    refuses a plan whose content changed since it was pinned; a plan made with other
    decontamination thresholds is refused too, since its groups may keep a copy this step
    rejects as contaminated."""
    if config.drops is None:
        return {}
    plan = config.drops.open()
    lineage = plan.manifest.lineage
    if lineage is None or lineage.stage != QuestionDedupPlan.name:
        raise StageInputError(f"{plan.uri} is not a {QuestionDedupPlan.name} output: plan "
                              "again with QuestionDedupPlan")
    planned = QuestionDedupPlanConfig.model_validate(lineage.config).thresholds()
    if planned != config.thresholds():
        raise StageInputError(f"the drop list {plan.uri} was planned with thresholds "
                              f"{planned}, this step has {config.thresholds()}: plan again, "
                              "so no kept copy is a question this step rejects")
    return {row["id"]: (row["reason"], row["duplicate_of"], row["detail"])
            for row in plan.to_table().to_pylist()}
