"""ingest: raw records become rows with stable ids, or rejected rows that say why."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill.config import RuntimeConfig
from gristmill.stages.ingest import Ingest, IngestConfig, row_id, text_hash
from gristmill.stages.raw_formats import UnknownFormatError, iter_records
from gristmill.stages.raw_inputs import RAW_SCHEMA, IngestInputError, RawFilesInput
from gristmill.stages.runner import run_stage
from gristmill.storage.fs import resolve
from gristmill.storage.reader import Dataset

QUIET = RuntimeConfig(progress=False)


def raw_batch(payloads: list[bytes], kind: str = "json", meta: dict | None = None,
              first_record: int = 1) -> pa.Table:
    count = len(payloads)
    numbers = range(first_record, first_record + count)
    return pa.table({
        "locator": [f"file:{n}" for n in numbers],
        "record_key": [f"unit-test\nfile\n{n}" for n in numbers],
        "payload": payloads,
        "payload_kind": [kind] * count,
        "source": ["unit-test"] * count,
        "text_field": ["text"] * count,
        "file_meta": [json.dumps(meta or {})] * count,
    }, schema=RAW_SCHEMA)


def reasons_of(split) -> list[str]:
    return split.rejected.column("reject_reason").to_pylist()


def test_each_kind_of_bad_record_is_rejected_with_its_reason() -> None:
    stage = Ingest(IngestConfig())
    payloads = [
        b'{"text": "a fine document", "genre": "news"}',
        b'{"text": "caf\xe9"}',
        b'{"text": "unterminated',
        b'["a", "list"]',
        b'{"body": "no text field"}',
        b'{"text": 42}',
        b'{"text": "   "}',
    ]
    split = stage.process(raw_batch(payloads))
    assert split.kept.column("text").to_pylist() == ["a fine document"]
    assert reasons_of(split) == ["invalid_utf8", "malformed_json", "malformed_json",
                                 "missing_text", "wrong_type", "empty_text"]
    assert split.rejected.column("payload").to_pylist() == payloads[1:]
    assert set(split.rejected.column("reject_stage").to_pylist()) == {"ingest"}
    assert "offset" in split.rejected.column("reject_detail")[0].as_py()


def test_oversized_text_is_rejected_not_loaded_downstream() -> None:
    stage = Ingest(IngestConfig())
    huge = "word " * (2 * 1024 * 1024)
    split = stage.process(raw_batch([huge.encode()], kind="text"))
    assert split.kept.num_rows == 0
    assert reasons_of(split) == ["too_large"]
    assert "10485760 bytes" in split.rejected.column("reject_detail")[0].as_py()


def test_copies_of_a_text_are_distinct_rows_with_one_content_hash() -> None:
    stage = Ingest(IngestConfig())
    split = stage.process(raw_batch([b'{"text": "same"}', b'{"text": "same"}',
                                     b'{"text": "other"}']))
    ids = split.kept.column("id").to_pylist()
    hashes = split.kept.column("text_hash").to_pylist()
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert hashes[0] == hashes[1] == text_hash("same") != hashes[2]
    assert ids[0] == row_id("unit-test\nfile\n1", "same")


def test_ids_depend_on_the_record_not_on_batching() -> None:
    stage = Ingest(IngestConfig())
    records = [b'{"text": "a"}', b'{"text": "b"}', b'{"text": "a"}']
    whole = stage.process(raw_batch(records)).kept.column("id").to_pylist()
    pieces = [stage.process(raw_batch(records[:2])).kept.column("id").to_pylist(),
              stage.process(raw_batch(records[2:], first_record=3)).kept.column("id").to_pylist()]
    assert whole == pieces[0] + pieces[1]


def test_ids_are_the_same_from_another_checkout(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A row's id names the file as it was given (here a relative folder), not where the
    checkout lies on disk."""
    def ingest_in(checkout: Path) -> list[str]:
        (checkout / "raw" / "sub").mkdir(parents=True)
        (checkout / "raw" / "sub" / "a.jsonl").write_text('{"text": "x"}\n{"text": "x"}\n')
        monkeypatch.chdir(checkout)
        source = RawFilesInput.from_args(["raw"])
        batch = next(source.read_unit(source.units()[0], 100))
        return Ingest(IngestConfig()).process(batch).kept.column("id").to_pylist()
    here, there = ingest_in(tmp_path / "here"), ingest_in(tmp_path / "there")
    assert here == there and len(set(here)) == 2


def test_a_file_named_twice_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "a.jsonl"
    raw.write_text('{"text": "x"}\n')
    with pytest.raises(IngestInputError, match="name each file once"):
        RawFilesInput.from_args([str(raw), str(raw)])
    with pytest.raises(IngestInputError, match="name each file once"):
        RawFilesInput.from_args([str(tmp_path), str(raw)])


def test_spellings_of_one_folder_are_one_source(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    keys = set()
    for spelling in ("raw", "raw/", "./raw", "raw/../raw"):
        source = RawFilesInput.from_args([spelling])
        keys.add(next(source.read_unit(source.units()[0], 10)).column("record_key")[0].as_py())
    assert keys == {"raw\na.jsonl\n0"}


def test_metadata_is_kept_as_json_and_promoted_fields_become_columns() -> None:
    stage = Ingest(IngestConfig(promote_fields=["genre", "lang", "missing"]))
    split = stage.process(raw_batch([b'{"text": "t", "genre": "news", "n": 3}'],
                                    meta={"lang": "de"}))
    row = split.kept.to_pylist()[0]
    assert json.loads(row["meta"]) == {"genre": "news", "n": 3, "lang": "de"}
    assert (row["genre"], row["lang"], row["missing"]) == ("news", "de", None)


def test_promoted_fields_cannot_shadow_the_base_columns() -> None:
    with pytest.raises(ValueError, match="promote_fields must be distinct"):
        IngestConfig(promote_fields=["text"])
    with pytest.raises(ValueError, match="promote_fields must be distinct"):
        IngestConfig(promote_fields=["genre", "genre"])


@pytest.mark.usefixtures("ray_local")
def test_reading_options_are_part_of_the_cache_key(tmp_path: Path) -> None:
    raw = tmp_path / "mail.jsonl"
    raw.write_text('{"body": "hello there"}\n')
    out = str(tmp_path / "out")
    first = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(raw)]), out, QUIET)
    assert first.stats.reject_reasons == {"missing_text": 1}
    second = run_stage(Ingest, IngestConfig(),
                       RawFilesInput.from_args([str(raw)], text_field="body"), out, QUIET)
    assert not second.reused and second.stats.rows_out == 1


def test_fortune_files_split_on_percent_lines_with_either_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "cookies"
    path.write_bytes(b"first\nrecord\n%\nsecond\r\n%\r\nthird")
    records = [payload for _, payload, _ in iter_records(resolve(str(path)), "fortune")]
    assert records == [b"first\nrecord", b"second", b"third"]


def test_unknown_file_endings_need_a_format(tmp_path: Path) -> None:
    (tmp_path / "data.xyz").write_text("x")
    with pytest.raises(UnknownFormatError, match="cannot tell the format"):
        RawFilesInput.from_args([str(tmp_path / "data.xyz")])


def test_a_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IngestInputError, match="not a known source, file, folder or glob"):
        RawFilesInput.from_args([str(tmp_path / "nothing-here*.jsonl")])


@pytest.mark.usefixtures("ray_local")
def test_ingest_run_accounts_for_every_record(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_bytes(b'{"text": "alpha"}\n{"text": "beta"}\nnot json\n')
    (raw / "b.txt").write_text("a whole text file is one document")
    pq.write_table(pa.table({"text": ["from parquet", None], "score": [1.5, 2.0]}),
                   raw / "c.parquet")
    result = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(raw)]),
                       str(tmp_path / "out"), QUIET)
    stats = result.stats
    assert (stats.rows_in, stats.rows_out, stats.rows_rejected) == (6, 4, 2)
    assert stats.rows_in == stats.rows_out + stats.rows_rejected
    assert stats.reject_reasons == {"malformed_json": 1, "wrong_type": 1}
    kept = Dataset.open(result.output).to_table()
    assert sorted(kept.column("text").to_pylist()) == [
        "a whole text file is one document", "alpha", "beta", "from parquet"]
    rejected = Dataset.open(result.output).rejected.to_table()
    assert rejected.num_rows == 2


@pytest.mark.usefixtures("ray_local")
def test_named_source_brown_ingests_all_documents_with_unique_ids(tmp_path: Path) -> None:
    result = run_stage(Ingest, IngestConfig(promote_fields=["genre"]),
                       RawFilesInput.from_args(["brown"]), str(tmp_path / "brown"), QUIET)
    table = Dataset.open(result.output).to_table()
    assert table.num_rows == 500
    assert len(set(table.column("id").to_pylist())) == 500
    assert set(table.column("source").to_pylist()) == {"brown"}
    assert len(set(table.column("genre").to_pylist())) == 15


def test_max_records_reads_only_the_head_of_each_file_and_changes_the_key(tmp_path: Path) -> None:
    raw = tmp_path / "rows.jsonl"
    raw.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(10)))
    head = RawFilesInput.from_args([str(raw)], max_records=3)
    rows = [t for unit in head.units() for t in head.read_unit(unit, 2)]
    assert sum(t.num_rows for t in rows) == 3
    assert head.refs() != RawFilesInput.from_args([str(raw)]).refs()


def ingest_locally(source: RawFilesInput, config: IngestConfig) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected) of every unit, through the stage in this process."""
    stage = Ingest(config)
    splits = [stage.process(t) for u in source.units() for t in source.read_unit(u, 3)]
    return (pa.concat_tables([s.kept for s in splits]),
            pa.concat_tables([s.rejected for s in splits]))


def test_promoted_parquet_columns_keep_their_parquet_types(tmp_path: Path) -> None:
    stamps = [datetime(2024, 1, 1, 12, 30, tzinfo=UTC), None, datetime(1999, 12, 31, tzinfo=UTC)]
    stored = pa.table({
        "text": ["first row", "second row", "third row"],
        "score": pa.array([0.25, None, 1e-9], pa.float64()),
        "year": pa.array([2024, 2023, 1999], pa.int16()),
        "seen": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
        "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
        "blob": pa.array([b"\x00\xff", b"", None], pa.binary()),
    })
    pq.write_table(stored, tmp_path / "rows.parquet", row_group_size=2)
    promoted = ["score", "year", "seen", "tags", "blob"]
    kept, rejected = ingest_locally(RawFilesInput.from_args([str(tmp_path / "rows.parquet")],
                                                           unit_bytes=1),
                                    IngestConfig(promote_fields=promoted))
    assert rejected.num_rows == 0
    assert kept.column("text").to_pylist() == ["first row", "second row", "third row"]
    for name in promoted:
        assert kept.schema.field(name).type == stored.schema.field(name).type
        assert kept.column(name).to_pylist() == stored.column(name).to_pylist()
    assert json.loads(kept.column("meta")[0].as_py())["year"] == 2024


def test_parquet_files_with_different_columns_unify_and_a_conflict_is_refused(
        tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a"], "n": pa.array([1], pa.int32())}),
                   tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["b"], "n": pa.array([2**40], pa.int64()),
                             "lang": ["en"]}), tmp_path / "b.parquet")
    (tmp_path / "c.jsonl").write_text('{"text": "c", "n": 3}\n')
    kept, _ = ingest_locally(RawFilesInput.from_args([str(tmp_path)]),
                             IngestConfig(promote_fields=["n", "lang"]))
    assert kept.schema.field("n").type == pa.int64()
    assert sorted(zip(kept.column("text").to_pylist(), kept.column("n").to_pylist(),
                      kept.column("lang").to_pylist(), strict=True)) == [
        ("a", 1, None), ("b", 2**40, "en"), ("c", 3, None)]
    pq.write_table(pa.table({"text": ["d"], "n": ["three"]}), tmp_path / "d.parquet")
    with pytest.raises(IngestInputError, match="types that do not agree"):
        RawFilesInput.from_args([str(tmp_path)]).schema()


def test_declared_column_types_convert_json_values_and_reject_what_does_not_convert(
        tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(
        '{"text": "one", "score": 0.5, "day": "2024-02-29"}\n'
        '{"text": "two", "score": "high", "day": "2024-03-01"}\n'
        '{"text": "three", "score": 7, "day": "not a date"}\n'
        '{"text": "four", "score": null, "day": null}\n')
    source = RawFilesInput.from_args([str(tmp_path / "rows.jsonl")])
    config = IngestConfig(promote_fields=["score", "day"],
                          column_types={"score": "float64", "day": "date32"})
    kept, rejected = ingest_locally(source, config)
    assert kept.schema.field("score").type == pa.float64()
    assert kept.schema.field("day").type == pa.date32()
    assert kept.column("text").to_pylist() == ["one", "four"]
    assert kept.column("score").to_pylist() == [0.5, None]
    assert kept.column("day").to_pylist() == [date(2024, 2, 29), None]
    assert rejected.column("reject_reason").to_pylist() == ["wrong_type", "wrong_type"]
    details = rejected.column("reject_detail").to_pylist()
    assert "'score'" in details[0] and "'high'" in details[0]
    assert "'day'" in details[1] and "not a date" in details[1]


def test_column_types_must_name_promoted_fields_and_known_types() -> None:
    with pytest.raises(ValueError, match="not in promote_fields"):
        IngestConfig(column_types={"score": "float64"})
    with pytest.raises(ValueError, match="column_types"):
        IngestConfig(promote_fields=["score"], column_types={"score": "floaty"})


def test_hostile_json_lines_are_rejected_rows_with_reasons_and_the_rest_is_kept(
        tmp_path: Path) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    lines = [
        b'\xef\xbb\xbf{"text": "a file that starts with a byte order mark"}',
        f'{{"text": "deep", "nested": {deep}}}'.encode(),
        b'{"text": "jury \\ud800 election"}',
        b'{"text": "a good emoji pair \\ud83d\\ude00"}',
        b'{"text": "not a number", "score": NaN}',
        b'{"text": "overflow", "score": 1e400}',
        b'{"text": "minus infinity", "score": -Infinity}',
        b'{"text": "big ints are fine", "score": 100000000000000000000000000000}',
        b'{"text": "half a pair in a promoted field", "tag": "x\\udc00"}',
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    kept, rejected = ingest_locally(RawFilesInput.from_args([str(tmp_path / "bad.jsonl")]),
                                    IngestConfig(promote_fields=["tag"]))
    assert kept.num_rows + rejected.num_rows == len(lines)
    assert kept.column("text").to_pylist() == [
        "a file that starts with a byte order mark", "a good emoji pair \U0001F600",
        "big ints are fine"]
    for meta in kept.column("meta").to_pylist():
        json.loads(meta)
    found = dict(zip(rejected.column("locator").to_pylist(),
                     zip(rejected.column("reject_reason").to_pylist(),
                         rejected.column("reject_detail").to_pylist(), strict=True),
                     strict=True))
    by_line = {int(locator.rsplit(":", 1)[1]): why for locator, why in found.items()}
    starts = [sum(len(line) + 1 for line in lines[:i]) for i in range(len(lines))]
    assert by_line[starts[1]][0] == "malformed_json" and "nested" in by_line[starts[1]][1]
    assert by_line[starts[2]][0] == "invalid_unicode" and "U+D800" in by_line[starts[2]][1]
    assert [by_line[starts[i]] for i in (4, 5, 6)] == [
        ("malformed_json", "NaN is not a finite number (JSON has none)"),
        ("malformed_json", "1e400 is not a finite number (JSON has none)"),
        ("malformed_json", "-Infinity is not a finite number (JSON has none)")]
    assert by_line[starts[8]][0] == "wrong_type" and "'tag'" in by_line[starts[8]][1]
