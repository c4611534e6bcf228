"""Quality filter logic: heuristic scores on real text, exact streaming bucket cuts, the
law's decision, the select stage's accounting, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.config import RuntimeConfig
from gristmill.scoring import scaling_laws as law
from gristmill.scoring.quality import (
    LinearHead,
    QualityError,
    assign_buckets,
    bucket_ranks,
    bucket_thresholds,
    heuristic_features,
    order_statistics,
    radix_counts,
)
from gristmill.sources import resolve
from gristmill.stages.base import DatasetInput, StageInputError
from gristmill.stages.global_step import DatasetRef, run_global_step
from gristmill.stages.quality_cut import (
    CUT_SCHEMA,
    LawChoice,
    PilotRun,
    PoolDecision,
    QualityCut,
    QualityCutConfig,
    QualityCuts,
    cut_buckets,
    cut_table,
    decide,
)
from gristmill.stages.quality_score import QualityFilterError, QualityScore, QualityScoreConfig
from gristmill.stages.quality_scorers import (
    ClipScorerConfig,
    EmbeddingClassifierScorerConfig,
    HeuristicScorerConfig,
)
from gristmill.stages.quality_select import REJECT_REASON, QualitySelect, QualitySelectConfig
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

QUIET = RuntimeConfig(progress=False)


def real_texts(source: str, count: int) -> list[str]:
    lines = resolve(source).files[0].read_text().splitlines()[:count]
    return [json.loads(line)["text"] for line in lines]


def scored_dataset(path: Path, scores: np.ndarray, rows_per_shard: int = 1000) -> str:
    table = pa.table({"id": [f"r{i}" for i in range(scores.size)],
                      "quality_score": pa.array(scores, pa.float64()),
                      "tokens": pa.array(np.arange(scores.size) % 7 + 1, pa.int64())})
    uri = str(path)
    write_table(uri, table, max_rows=rows_per_shard)
    return uri


def test_heuristics_rank_real_prose_above_repetitive_or_broken_text() -> None:
    scorer = QualityScore(QualityScoreConfig())
    scorer.setup()
    prose = real_texts("brown", 20)
    junk = ["buy now " * 80, "\x00\x01\x02 ###### $$$$ %%%% " * 10, "ok",
            "\n".join(["same line here"] * 40)]
    batch = pa.table({"text": prose + junk})
    split = scorer.process(batch)
    scores = split.kept.column("quality_score").to_numpy()
    assert split.rejected.num_rows == 0
    assert scores[: len(prose)].min() > scores[len(prose):].max()
    features = heuristic_features(prose[0])
    assert set(features) == set(HeuristicScorerConfig().weights)
    assert all(0.0 <= v <= 1.0 for v in features.values())


def test_scoring_rejects_rows_it_cannot_score_and_keeps_the_count() -> None:
    stage = QualityScore(QualityScoreConfig(score_column="q"))
    stage.setup()
    batch = pa.table({"id": ["a", "b", "c"], "text": ["A real sentence with words.", "  ", None]})
    split = stage.process(batch)
    assert split.kept.column("id").to_pylist() == ["a"]
    assert split.kept.schema.field("q").type == pa.float64()
    assert split.rejected.column("reject_reason").to_pylist() == ["empty_text", "empty_text"]
    assert split.kept.num_rows + split.rejected.num_rows == batch.num_rows


def test_scorer_problems_are_said_before_any_work(tmp_path: Path) -> None:
    schema = pa.schema([("text", pa.string()), ("image_path", pa.string())])
    clip = QualityScore(QualityScoreConfig(scorer=ClipScorerConfig(model=str(tmp_path / "no"))))
    with pytest.raises(StageInputError, match="no CLIP model ships with gristmill"):
        clip.check_input(schema)
    head = tmp_path / "head.npz"
    head.write_bytes(LinearHead(np.ones(384), 0.0).to_bytes())
    wrong = EmbeddingClassifierScorerConfig(classifier=str(head), classifier_sha256="0" * 64)
    with pytest.raises(StageInputError, match="has sha256"):
        QualityScore(QualityScoreConfig(scorer=wrong)).check_input(schema)
    with pytest.raises(StageInputError, match="missing column 'body'"):
        QualityScore(QualityScoreConfig(scorer=HeuristicScorerConfig(text_column="body"))
                     ).check_input(schema)
    with pytest.raises(ValueError, match="unknown heuristic features"):
        HeuristicScorerConfig(weights={"sparkle": 1.0})


def chunked_pass(values: np.ndarray, cuts: list[int]):
    """A radix pass that adds up the shares of `values` split at `cuts`, as workers would."""
    def count_pass(level: int, prefixes: list[int]) -> np.ndarray:
        return sum(radix_counts(chunk, level, prefixes) for chunk in np.split(values, cuts))
    return count_pass


def test_order_statistics_are_exact_for_any_floats_and_ties() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(50_000) * 1e-3, np.full(5_000, -0.0),
                             np.full(5_000, 2.5), [-np.inf, np.inf, 1e300, -1e-300]])
    rng.shuffle(values)
    positions = [0, 1, 17, 30_000, 52_000, values.size - 2, values.size - 1]
    count_pass = chunked_pass(values, list(range(4096, values.size, 4096)))
    assert order_statistics(count_pass, values.size, positions) == \
        np.sort(values)[positions].tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False), min_size=1, max_size=300), st.data())
def test_order_statistics_do_not_depend_on_how_the_scores_are_split(
        values: list[float], data: st.DataObject) -> None:
    scores = np.array(values, np.float64)
    cuts = sorted(data.draw(st.lists(st.integers(0, scores.size), max_size=6)))
    positions = data.draw(st.lists(st.integers(0, scores.size - 1), min_size=1, max_size=5))
    found = order_statistics(chunked_pass(scores, cuts), scores.size, positions)
    assert found == np.sort(scores + 0.0)[positions].tolist()


def test_bucket_cuts_stream_the_score_column_and_match_a_full_sort(tmp_path: Path) -> None:
    scores = np.random.default_rng(0).random(12_345)
    uri = scored_dataset(tmp_path / "scored", scores)
    cuts = cut_buckets(Dataset.open(uri), "quality_score", [0.1, 0.1, 0.1, 0.1],
                       token_column="tokens")
    ranked = np.sort(scores)[::-1]
    ranks = bucket_ranks(scores.size, [0.1] * 4)
    assert cuts.thresholds == [ranked[r - 1] for r in ranks]
    assert cuts.bucket_rows == np.diff([0, *ranks]).tolist()
    buckets = assign_buckets(scores, cuts.thresholds)
    tokens = np.arange(scores.size) % 7 + 1
    assert cuts.bucket_tokens == [int(tokens[buckets == b].sum()) for b in range(4)]


def test_nan_or_missing_scores_are_refused_with_counts(tmp_path: Path) -> None:
    scores = np.random.default_rng(1).random(500)
    scores[[3, 99]] = np.nan
    with pytest.raises(QualityFilterError, match="2 NaN scores in 'quality_score'"):
        cut_buckets(Dataset.open(scored_dataset(tmp_path / "nan", scores)), "quality_score",
                    [0.1] * 4)
    table = pa.table({"quality_score": pa.array([0.1, None, 0.3] * 10, pa.float64())})
    write_table(str(tmp_path / "null"), table)
    with pytest.raises(QualityFilterError, match=r"10 rows .* have no 'quality_score'"):
        cut_buckets(Dataset.open(str(tmp_path / "null")), "quality_score", [0.1] * 4)


def test_missing_token_counts_are_refused_with_their_count(tmp_path: Path) -> None:
    scores = np.random.default_rng(2).random(300)
    table = pa.table({"quality_score": pa.array(scores, pa.float64()),
                      "tokens": pa.array([None if i % 50 == 0 else 10 for i in range(300)],
                                         pa.int64())})
    write_table(str(tmp_path / "tokens"), table)
    with pytest.raises(QualityFilterError, match=r"6 rows .* have no 'tokens'"):
        cut_buckets(Dataset.open(str(tmp_path / "tokens")), "quality_score", [0.1] * 4,
                    token_column="tokens")


def test_fewer_rows_than_buckets_and_tied_scores_are_refused(tmp_path: Path) -> None:
    with pytest.raises(QualityFilterError, match="3 scored rows cannot fill 4 quality buckets"):
        cut_buckets(Dataset.open(scored_dataset(tmp_path / "few", np.array([0.3, 0.2, 0.1]))),
                    "quality_score", [0.1] * 4)
    with pytest.raises(QualityError, match="cannot fill"):
        bucket_thresholds(chunked_pass(np.ones(5), []), 5, [0.1] * 4)
    ties = np.concatenate([np.ones(900), np.linspace(0, 0.5, 100)])
    with pytest.raises(QualityFilterError, match=r"buckets \[1, 2, 3\] are empty"):
        cut_buckets(Dataset.open(scored_dataset(tmp_path / "ties", ties)), "quality_score",
                    [0.1] * 4)


def test_the_cut_step_writes_one_row_per_bucket_and_the_decision_and_is_reused(
        tmp_path: Path) -> None:
    scores = np.random.default_rng(0).random(2_000)
    uri = scored_dataset(tmp_path / "scored", scores)
    config = QualityCutConfig(token_column="tokens", law=LawChoice(rescale=True), budget=2e4)

    def cut(config: QualityCutConfig) -> tuple[bool, pa.Table, dict]:
        result = run_global_step(QualityCut(config), [uri], str(tmp_path / "cuts"), QUIET)
        return result.reused, result.ref.open().to_table(), result.summary

    reused, table, summary = cut(config)
    cuts = cut_buckets(Dataset.open(uri), "quality_score", [0.1] * 4, token_column="tokens")
    decision = decide(config.law, cuts, config.budget)
    assert not reused and table.schema.equals(CUT_SCHEMA)
    assert table.to_pylist() == [
        {"bucket": b, "threshold": cuts.thresholds[b], "rows": cuts.bucket_rows[b],
         "tokens": cuts.bucket_tokens[b], "selected": b < decision.keep_buckets}
        for b in range(4)]
    assert PoolDecision.model_validate(summary) == decision
    assert cut(config)[0], "same scores and config: reused"
    bigger = config.with_(budget=2e7)
    reused, table, summary = cut(bigger)
    assert not reused and summary["budget"] == 2e7
    assert table.column("selected").to_pylist().count(True) == summary["keep_buckets"]


def cuts_of(sizes: list[int]) -> QualityCuts:
    return QualityCuts(fractions=[0.1] * len(sizes), thresholds=[0.9, 0.8, 0.7, 0.6][:len(sizes)],
                       rows=10 * sum(sizes), bucket_rows=sizes)


def test_the_decision_follows_the_law_and_records_its_inputs() -> None:
    size = law.DATACOMP_MEDIUM_BUCKET_SAMPLES
    for budget in (32e6, 128e6, 2e9):
        decision = decide(LawChoice(), cuts_of([size] * 4), budget)
        assert decision.keep_buckets == law.best_pool(law.PRESETS["datacomp_medium"], [budget],
                                                      size)[0]
        assert decision.law_source == "preset datacomp_medium"
        assert np.argmin(decision.predicted_error) + 1 == decision.keep_buckets
    small = decide(LawChoice(rescale=True), cuts_of([600] * 4), 600 * 50)
    assert small.keep_buckets == decide(LawChoice(), cuts_of([size] * 4), size * 50).keep_buckets
    with pytest.raises(QualityFilterError, match="bucket too small"):
        decide(LawChoice(), cuts_of([600] * 4), 600 * 50)
    one = law.LawParams(a=0.025, d=0.1, b=[-0.16], tau=[6.73])
    for budget in (5e6, 64e6, 5e9):  # below one epoch, a few, very many: one bucket is all
        assert decide(LawChoice(params=one), cuts_of([size]), budget).keep_buckets == 1
    with pytest.raises(QualityFilterError, match="the law has 4 buckets, the cuts 3"):
        decide(LawChoice(), cuts_of([size] * 3), 64e6)
    with pytest.raises(QualityFilterError, match="needs a token column"):
        decide(LawChoice(), cuts_of([size] * 4), 64e6, unit="tokens")


def test_the_decision_can_come_from_pilot_runs() -> None:
    size = law.DATACOMP_MEDIUM_BUCKET_SAMPLES
    truth = law.LawParams(a=0.03, d=0.1, b=[-0.2, -0.1], tau=[3.0, 6.0])
    pilots = []
    for bucket in range(2):
        budgets = np.geomspace(5e6, 15 * size, 8)
        errors = law.repetition_error(law.bucket_pool(truth, bucket, size), budgets, 0.03, 0.1)
        pilots += [PilotRun(bucket=bucket, samples_seen=n, error=e)
                   for n, e in zip(budgets, errors, strict=True)]
    cuts = QualityCuts(fractions=[0.1, 0.1], thresholds=[0.9, 0.8], rows=10 * size,
                       bucket_rows=[size, size])
    decision = decide(LawChoice(pilots=pilots), cuts, 1e9)
    assert decision.law_source.startswith("fitted to 16 pilot runs")
    assert decision.keep_buckets == law.best_pool(truth, [1e9], size)[0]
    backwards = [p.model_copy(update={"error": 1 / p.error}) for p in pilots]
    with pytest.raises(QualityFilterError, match="not monotone"):
        decide(LawChoice(pilots=backwards), cuts, 1e9)


def write_cut(path: Path, thresholds: list[float], keep_buckets: int) -> DatasetRef:
    """A cut dataset as the `quality_cut` step writes it, for the select stage to pin."""
    cuts = QualityCuts(fractions=[0.1] * len(thresholds), thresholds=thresholds, rows=100,
                       bucket_rows=[10] * len(thresholds))
    write_table(str(path), cut_table(cuts, keep_buckets), overwrite=True)
    return DatasetRef.of(str(path))


def test_select_keeps_the_chosen_buckets_and_rejects_the_rest_with_their_bucket(
        tmp_path: Path) -> None:
    cuts = write_cut(tmp_path / "cuts", [0.9, 0.8, 0.7, 0.6], keep_buckets=2)
    stage = QualitySelect(QualitySelectConfig(cuts=cuts))
    stage.setup()
    scores = [0.95, 0.9, 0.85, 0.75, 0.65, 0.2, 0.8]
    split = stage.process(pa.table({"id": list("abcdefg"), "quality_score": scores}))
    assert split.kept.column("id").to_pylist() == ["a", "b", "c", "g"]
    assert split.kept.column("quality_bucket").to_pylist() == [0, 0, 1, 1]
    assert split.rejected.column("id").to_pylist() == ["d", "e", "f"]
    assert set(split.rejected.column("reject_reason").to_pylist()) == {REJECT_REASON}
    details = split.rejected.column("reject_detail").to_pylist()
    assert details[0].startswith("quality bucket 2 ") and details[1].startswith("quality bucket 3")
    assert details[2].startswith("below all 4 quality buckets")
    holes = stage.process(pa.table({"id": ["x", "y"],
                                    "quality_score": pa.array([None, 0.99], pa.float64())}))
    assert holes.kept.column("id").to_pylist() == ["y"]
    assert holes.rejected.column("reject_reason").to_pylist() == ["missing_score"]


def test_select_refuses_an_incoherent_or_changed_cut_before_any_work(tmp_path: Path) -> None:
    schema = pa.schema([("quality_score", pa.float64())])

    def check(cuts: DatasetRef) -> None:
        QualitySelect(QualitySelectConfig(cuts=cuts)).check_input(schema)

    with pytest.raises(StageInputError, match="descending"):
        check(write_cut(tmp_path / "ascending", [0.1, 0.5], keep_buckets=1))
    with pytest.raises(StageInputError, match="keep_buckets"):
        check(write_cut(tmp_path / "none", [0.5, 0.1], keep_buckets=0))
    gap = cut_table(QualityCuts(fractions=[0.1] * 3, thresholds=[0.9, 0.5, 0.1], rows=30,
                                bucket_rows=[10] * 3), 3)
    write_table(str(tmp_path / "gap"), gap.set_column(
        4, "selected", pa.array([True, False, True])))
    with pytest.raises(StageInputError, match="is not a quality cut"):
        check(DatasetRef.of(str(tmp_path / "gap")))
    pinned = write_cut(tmp_path / "moved", [0.9, 0.8], keep_buckets=1)
    write_cut(tmp_path / "moved", [0.9, 0.8], keep_buckets=2)
    with pytest.raises(StageInputError, match="the config pins"):
        check(pinned)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_score_cut_decide_select_through_ray_keeps_lineage_and_accounts_rows(
        tmp_path: Path) -> None:
    texts = real_texts("brown", 120) + ["spam spam spam " * 30] * 5 + [""]
    source = tmp_path / "input"
    write_table(str(source), pa.table({"id": [f"d{i}" for i in range(len(texts))],
                                       "text": texts}), max_rows=40)
    scored = run_stage(QualityScore, QualityScoreConfig(), DatasetInput(str(source)),
                       str(tmp_path / "scored"), QUIET)
    assert scored.stats.reject_reasons == {"empty_text": 1}
    budget = cut_buckets(Dataset.open(scored.output), "quality_score", [0.1] * 4
                         ).bucket_rows[0] * 60
    cut = run_global_step(QualityCut(QualityCutConfig(law=LawChoice(rescale=True),
                                                      budget=budget)),
                          [scored.output], str(tmp_path / "cuts"), QUIET)
    buckets = cut.ref.open().to_table().to_pylist()
    decision = PoolDecision.model_validate(cut.summary)
    selected = run_stage(QualitySelect, QualitySelectConfig(cuts=cut.ref),
                         DatasetInput(scored.output), str(tmp_path / "selected"), QUIET)
    stats = selected.stats
    assert stats.rows_in == 125 == stats.rows_out + stats.rows_rejected
    assert stats.rows_out == sum(b["rows"] for b in buckets[:decision.keep_buckets])
    assert stats.reject_reasons == {REJECT_REASON: stats.rows_rejected}
    lineage = Dataset.open(selected.output).manifest.lineage
    assert lineage.config["cuts"] == cut.ref.model_dump()
    pinned = Dataset.open(lineage.config["cuts"]["uri"]).manifest
    assert pinned.summary["keep_buckets"] == decision.keep_buckets
    assert pinned.summary["budget"] == budget
    assert pinned.lineage.inputs[0].uri == scored.output
    kept = Dataset.open(selected.output).to_table()
    assert "spam spam spam" not in " ".join(kept.column("text").to_pylist())
