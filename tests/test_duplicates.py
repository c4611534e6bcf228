"""Row identity and the one dedup: every copy of a text is its own row, and every duplicate
group keeps exactly one of them, whatever the layout of the input."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.retrieval.postprocess import Passage, SearchOptions, select
from gristmill.scoring.duplicates import (
    RepeatedIdError,
    minhash_duplicates,
    semantic_duplicates,
    text_duplicates,
)
from gristmill.scoring.near_dup import MinHasher, exact_key
from gristmill.sources import resolve as resolve_source
from gristmill.stages.global_step import run_global_step
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.question_dedup import (
    QuestionDedupPlan,
    QuestionDedupPlanConfig,
    QuestionDedupScore,
    QuestionDedupScoreConfig,
    QuestionDedupSelect,
    QuestionDedupSelectConfig,
)
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

THRESHOLD = 0.8
HASHER = MinHasher(num_perm=128, ngram=5)


def _first_words(text: str, count: int) -> str:
    return " ".join(text.split()[:count])


@cache
def owt_pool() -> tuple[str, ...]:
    """Real OpenWebText passages of 150+ words (cut to 150), no two of them alike."""
    path = resolve_source("owt").files[0]
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()[:200]]
    long = [_first_words(t, 150) for t in texts if len(t.split()) >= 150][:40]
    signatures = HASHER.signatures(long)
    similar = (signatures[:, None, :] == signatures[None, :, :]).mean(axis=2)
    np.fill_diagonal(similar, 0)
    assert similar.max() < 0.3, "the pool must hold distinct passages"
    return tuple(long)


def brown_passages(count: int, words: int = 200) -> list[str]:
    path = resolve_source("brown").files[0]
    lines = path.read_text().splitlines()[:count]
    return [_first_words(json.loads(line)["text"], words) for line in lines]


def appended(text: str) -> str:
    """One word added at the end: a copy with one new 5-gram (Jaccard ~0.99, which the LSH
    at 0.8 misses with probability ~1e-7)."""
    return text + " zebra"


def write_files(folder: Path, rows: list[str], files: list[int]) -> None:
    """Rows into JSONL files, row i into file files[i], in the given order."""
    for file in sorted(set(files)):
        lines = [json.dumps({"text": t}) for t, f in zip(rows, files, strict=True) if f == file]
        (folder / f"part-{file}.jsonl").write_text("\n".join(lines) + "\n")


def ingest_in_process(folder: Path, batch_rows: int) -> pa.Table:
    """The ingest stage's own batch code over every file, cut into batches of batch_rows."""
    source = RawFilesInput.from_args([str(folder)])
    stage = Ingest(IngestConfig())
    tables = [stage.process(batch).kept for unit in source.units()
              for batch in source.read_unit(unit, batch_rows)]
    return pa.concat_tables(tables)


def dedup(table: pa.Table) -> dict:
    texts = table.column("text").to_pylist()
    return text_duplicates(table.column("id").to_pylist(), [exact_key(t) for t in texts],
                           HASHER.signatures(texts), THRESHOLD)


@st.composite
def corpora(draw: st.DrawFn) -> tuple[list[str], list[int], list[int], int]:
    """(rows, their base passage, their file, batch size): real passages, each with 0-2 exact
    copies and 0-1 near copies (a word appended), shuffled over 1-3 input files."""
    pool = owt_pool()
    bases = draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=12,
                          unique=True))
    rows, groups = [], []
    for base in bases:
        exact, edits = draw(st.integers(0, 2)), draw(st.integers(0, 1))
        copies = [pool[base]] * (1 + exact) + [appended(pool[base])] * edits
        rows += copies
        groups += [base] * len(copies)
    order = draw(st.permutations(range(len(rows))))
    files = draw(st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows)))
    return ([rows[i] for i in order], [groups[i] for i in order], files,
            draw(st.integers(1, 8)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpora(), other_batch=st.integers(1, 64))
def test_every_group_keeps_exactly_one_row_and_no_unique_row_is_lost(
        corpus: tuple[list[str], list[int], list[int], int], other_batch: int) -> None:
    rows, groups, files, batch_rows = corpus
    with tempfile.TemporaryDirectory() as folder:
        write_files(Path(folder), rows, files)
        table = ingest_in_process(Path(folder), batch_rows)
        rebatched = ingest_in_process(Path(folder), other_batch)
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids) == len(rows), "every copy is its own row"
    texts = dict(zip(ids, table.column("text").to_pylist(), strict=True))
    group_of = {i: groups[rows.index(text)] for i, text in texts.items()}
    removed = dedup(table)
    kept = [i for i in ids if i not in removed]
    assert len(kept) + len(removed) == len(ids) and set(removed) <= set(ids)
    for group in set(groups):
        assert sum(group_of[i] == group for i in kept) == 1, f"group {group}"
    for row, found in removed.items():
        assert found.duplicate_of in kept and group_of[found.duplicate_of] == group_of[row]
    assert rebatched.column("id").to_pylist() == ids
    shuffled = table.take(pa.array(np.random.default_rng(len(ids)).permutation(len(ids))))
    assert dedup(shuffled) == removed


def test_repeated_ids_are_refused_not_merged() -> None:
    """Rows sharing an id (content-hash ids, or a wrong id column) would share one
    decision: the dedup refuses them instead of dropping or keeping both silently."""
    with pytest.raises(RepeatedIdError, match="'a' is on more than one row"):
        text_duplicates(["a", "b", "a"], ["k", "k", "k"], None, 0.8)
    with pytest.raises(RepeatedIdError):
        semantic_duplicates(["a", "a"], np.eye(2, dtype=np.float32), np.zeros(2), 0.1)


def test_exact_copies_and_chains_point_at_the_final_survivor() -> None:
    ids = ["d", "c", "b", "a"]
    keys = ["k1", "k1", "k2", "k3"]
    same = np.array([1, 2, 3, 4], np.uint64)
    signatures = np.stack([same, same, same, np.array([7, 7, 7, 7], np.uint64)])
    removed = text_duplicates(ids, keys, signatures, 0.5)
    assert {i: (d.reason, d.duplicate_of) for i, d in removed.items()} == {
        "d": ("exact_duplicate", "b"), "c": ("near_duplicate", "b")}
    assert removed["d"].matched == "c", "d matched c, which MinHash then removed"


def test_a_rank_picks_the_survivor_before_the_id() -> None:
    signatures = np.ones((3, 8), np.uint64)
    removed = minhash_duplicates(["a", "b", "c"], signatures, 0.5, rank=[2, 0, 1])
    assert {i: d.duplicate_of for i, d in removed.items()} == {"a": "b", "c": "b"}


def test_question_dedup_keeps_one_copy_of_each_repeated_question(tmp_path: Path) -> None:
    """The issue's scenario in ScaleQuest's dedup: 32 rows, two texts twice: 30 kept."""
    table = _scenario_ingest(tmp_path)
    scorer = QuestionDedupScore(QuestionDedupScoreConfig(question_column="text",
                                                         benchmark=None, embed=False))
    scorer.setup()
    write_table(str(tmp_path / "scored"), scorer.process(table).kept)
    stage = QuestionDedupSelect(planned_select(tmp_path))
    stage.setup()
    split = stage.process(Dataset.open(str(tmp_path / "scored")).to_table())
    assert (split.kept.num_rows, split.rejected.num_rows) == (30, 2)
    kept_ids = set(split.kept.column("id").to_pylist())
    kept_texts = split.kept.column("text").to_pylist()
    assert len(set(kept_texts)) == 30, "one copy of each repeated passage stays"
    for row in split.rejected.to_pylist():
        assert row["reject_reason"] == "exact_duplicate"
        assert row["duplicate_of"] in kept_ids and row["duplicate_of"] != row["id"]


def planned_select(tmp_path: Path) -> QuestionDedupSelectConfig:
    """Plan the drops over `tmp_path/scored` (default thresholds on both sides) and pin the
    plan in the select config, as the flow does."""
    plan = run_global_step(QuestionDedupPlan(QuestionDedupPlanConfig()),
                           [str(tmp_path / "scored")], str(tmp_path / "plan"),
                           RuntimeConfig(progress=False))
    return QuestionDedupSelectConfig(drops=plan.ref)


def _scenario_ingest(tmp_path: Path) -> pa.Table:
    passages = brown_passages(30)
    rows = [*passages, passages[3], passages[17]]
    (tmp_path / "raw").mkdir()
    write_files(tmp_path / "raw", rows, [0] * len(rows))
    return ingest_in_process(tmp_path / "raw", 1024)


def test_datastore_results_keep_the_best_ranked_copy() -> None:
    pool = owt_pool()
    candidates = [pool[0], pool[1], pool[0], appended(pool[1]), pool[2], pool[3], appended(pool[0])]

    def fetch(_: int, row: int) -> Passage:
        return Passage(id=f"p{row}", text=candidates[row], parent_id=None, word_count=150)

    scores = np.linspace(1.0, 0.5, len(candidates))
    rows = np.arange(len(candidates))
    hits = select(scores, np.zeros_like(rows), rows, fetch,
                  SearchOptions(k=4, minhash_ngram=5), evals=[])
    assert [h.id for h in hits] == ["p0", "p1", "p4", "p5"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_kept_ids_are_the_same_for_any_shard_size_and_worker_count(tmp_path: Path) -> None:
    pool = owt_pool()
    rows = [*pool[:20], pool[2], pool[2], appended(pool[5]), pool[11], appended(pool[11])]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_files(raw, rows, [i % 3 for i in range(len(rows))])
    results = []
    for shard_rows, workers in ((2, 1), (1000, 2)):
        out = str(tmp_path / f"ingest-{shard_rows}-{workers}")
        runtime = RuntimeConfig(progress=False,
                                storage=StorageConfig(max_rows_per_shard=shard_rows))
        config = IngestConfig().with_(resources={"concurrency": workers, "batch_rows": 3})
        run_stage(Ingest, config, RawFilesInput.from_args([str(raw)]), out, runtime)
        table = Dataset.open(out).to_table()
        assert len(Dataset.open(out).manifest.shards) > (1 if shard_rows == 2 else 0)
        removed = dedup(table)
        results.append((sorted(table.column("id").to_pylist()),
                        sorted(i for i in table.column("id").to_pylist() if i not in removed)))
    assert results[0] == results[1]
    assert len(results[0][0]) == 25 and len(results[0][1]) == 20


def test_a_contaminated_question_is_never_the_copy_its_group_keeps(tmp_path: Path) -> None:
    """q0 and q1 are one question; q0 (the smaller id, so the survivor by id) is also too
    close to the benchmark, so the select step rejects it: the group must keep q1."""
    signature = HASHER.signatures(["Tom has 3 apples and buys 4 more."])[0]
    scored = pa.table({
        "id": ["q0", "q1", "q2"], "dedup_key": ["k", "k", "other"],
        "minhash": pa.array([signature, signature, signature[::-1].copy()],
                            pa.list_(pa.uint64())),
        "bench_ngram_overlap": pa.array([0.9, 0.1, 0.0], pa.float32()),
        "bench_embed_sim": pa.array([None, None, None], pa.float32()),
        "bench_ngram_nearest": ["a benchmark question", None, None],
        "bench_embed_nearest": pa.array([None, None, None], pa.string())})
    write_table(str(tmp_path / "scored"), scored)
    stage = QuestionDedupSelect(planned_select(tmp_path))
    stage.setup()
    split = stage.process(scored)
    assert split.kept.column("id").to_pylist() == ["q1", "q2"]
    assert split.rejected.column("reject_reason").to_pylist() == ["benchmark_ngram"]
