"""chunk: passages of N words, tail merging, stable ids and shards, titles, rejects."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from gristmill.sources import resolve
from gristmill.stages.base import DatasetInput, StageInputError
from gristmill.stages.chunk import Chunk, ChunkConfig, shard_of, split_words
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def docs(texts: list[str], **extra: list) -> pa.Table:
    return pa.table({"id": [f"doc{i}" for i in range(len(texts))], "text": texts,
                     "source": ["test"] * len(texts), **extra})


def test_each_passage_carries_the_content_hash_of_its_own_text() -> None:
    document = words(300)
    split = Chunk(ChunkConfig(words_per_passage=100, merge_tail_below=0)).process(
        docs([document, document], text_hash=["whole-document-hash"] * 2))
    hashes = split.kept.column("text_hash").to_pylist()
    texts = split.kept.column("text").to_pylist()
    assert len(set(hashes)) == 3 and "whole-document-hash" not in hashes
    assert all((a == b) == (s == t) for a, s in zip(hashes, texts, strict=True)
               for b, t in zip(hashes, texts, strict=True))


def test_split_words_merges_short_tail_only() -> None:
    assert [len(p) for p in split_words(words(600), 256, 128)] == [256, 344]
    assert [len(p) for p in split_words(words(700), 256, 128)] == [256, 256, 188]
    assert [len(p) for p in split_words(words(600), 256, 0)] == [256, 256, 88]
    assert [len(p) for p in split_words(words(40), 256, 128)] == [40]
    assert split_words("  \n ", 256, 128) == []


def test_passages_cover_the_document_in_order_with_metadata() -> None:
    stage = Chunk(ChunkConfig(words_per_passage=100, merge_tail_below=60, num_shards=4))
    text = "\n\n".join(words(50, i * 50) for i in range(7))  # 350 words over paragraphs
    split = stage.process(docs([text, words(20)]))
    rows = split.kept.to_pylist()
    first = [r for r in rows if r["parent_id"] == "doc0"]
    assert [r["word_count"] for r in first] == [100, 100, 150]
    assert " ".join(r["text"] for r in first).split() == text.split()
    assert [r["passage_index"] for r in first] == [0, 1, 2]
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["source"] == "test" for r in rows)
    assert {r["shard_id"] for r in first} == {shard_of("doc0", 4)}
    assert split.rejected.num_rows == 0
    assert split.kept.schema == stage.output_schema(docs(["x"]).schema)


def test_ids_and_shards_are_stable_and_spread() -> None:
    stage = Chunk(ChunkConfig(num_shards=8))
    table = docs([words(300)] * 200)
    a, b = stage.process(table).kept, stage.process(table).kept
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    counts = [a.column("shard_id").to_pylist().count(s) for s in range(8)]
    assert min(counts) > 0


def test_title_is_prepended_and_not_counted() -> None:
    stage = Chunk(ChunkConfig(words_per_passage=10, merge_tail_below=0))
    split = stage.process(docs([words(25), words(5)], title=["Moon landing", None]))
    rows = split.kept.to_pylist()
    titled = [r for r in rows if r["parent_id"] == "doc0"]
    assert all(r["text"].startswith("Moon landing\n") for r in titled)
    assert [r["word_count"] for r in titled] == [10, 10, 5]
    assert rows[-1]["text"] == words(5)


def test_empty_documents_are_rejected_with_reason() -> None:
    split = Chunk(ChunkConfig()).process(docs(["", "   ", words(3)]))
    assert split.kept.num_rows == 1
    assert split.rejected.column("reject_reason").to_pylist() == ["empty_text", "empty_text"]
    assert split.rejected.column("id").to_pylist() == ["doc0", "doc1"]


def test_missing_text_column_is_a_clear_input_error() -> None:
    with pytest.raises(StageInputError, match="missing column 'text'"):
        Chunk(ChunkConfig()).check_input(pa.schema([("id", pa.string())]))


def test_brown_documents_chunk_to_256_words() -> None:
    path = resolve("brown").files[0]
    records = [json.loads(line) for line in path.read_text().splitlines()[:20]]
    table = docs([r["text"] for r in records])
    kept = Chunk(ChunkConfig()).process(table).kept
    counts = kept.column("word_count").to_pylist()
    assert all(c >= 128 for c in counts)
    assert sum(counts) == sum(len(r["text"].split()) for r in records)
    assert counts.count(256) >= len(counts) - len(records)


@pytest.mark.slow
def test_chunk_runs_as_a_stage(ray_local: None, tmp_path) -> None:
    source = tmp_path / "docs"
    write_table(str(source), docs([words(600), "", words(100)]))
    result = run_stage(Chunk, ChunkConfig(), DatasetInput(str(source)), str(tmp_path / "out"))
    assert (result.stats.rows_in, result.stats.rows_out, result.stats.rows_rejected) == (3, 3, 1)
    passages = Dataset.open(result.output).to_table()
    assert sorted(passages.column("word_count").to_pylist()) == [100, 256, 344]
