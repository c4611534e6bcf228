"""The shard store: bounded shards, a manifest committed last, and readers that refuse bad data.

Everything here runs without Ray, on tmp_path or on fsspec's in-process memory filesystem.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import xxhash

from gristmill.storage.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    DatasetExistsError,
    NotADatasetError,
    SchemaMismatchError,
    UnreadableManifestError,
)
from gristmill.storage.fs import Location, resolve, write_bytes_atomic
from gristmill.storage.manifest import InputRef, Lineage, content_sha256
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import DatasetWriter, prepare_output, write_table

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])
REJECTED_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()),
                             ("reject_reason", pa.string())])


def make_table(rows: int, *, start: int = 0, width: int = 10) -> pa.Table:
    ids = list(range(start, start + rows))
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "text": [f"row {i:06d} " + "x" * width for i in ids]}, schema=SCHEMA)


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".arrow")


def rewrite_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, pa.Table]:
    """A committed 1000-row dataset in four shards."""
    folder = tmp_path / "ds"
    table = make_table(1000)
    write_table(str(folder), table, max_rows=300)
    return folder, table


# --- writer: shard bounds ---------------------------------------------------------------------


def test_shards_never_exceed_max_rows(tmp_path: Path) -> None:
    manifest = write_table(str(tmp_path / "ds"), make_table(1000), max_rows=300)
    assert [s.rows for s in manifest.shards] == [300, 300, 300, 100]


def test_max_rows_holds_across_many_small_writes(tmp_path: Path) -> None:
    with DatasetWriter(str(tmp_path / "ds"), SCHEMA, max_rows=100) as writer:
        for start in range(0, 450, 45):
            writer.write(make_table(45, start=start))
        manifest = writer.commit()
    assert [s.rows for s in manifest.shards] == [100, 100, 100, 100, 50]


def test_shard_files_stay_under_max_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    max_bytes = 10_000
    manifest = write_table(str(folder), make_table(1000, width=80), max_bytes=max_bytes)
    assert len(manifest.shards) > 1
    sizes = {s.file: (folder / s.file).stat().st_size for s in manifest.shards}
    assert all(size <= max_bytes for size in sizes.values()), sizes


def test_a_row_larger_than_max_bytes_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    huge = "h" * 20_000
    texts = ["small"] * 5 + [huge] + ["small"] * 5
    table = pa.table({"id": pa.array(range(11), pa.int64()), "text": texts}, schema=SCHEMA)
    write_table(str(folder), table, max_bytes=4_000)
    dataset = Dataset.open(str(folder))
    holding_huge = [dataset.read_shard(i) for i in range(len(dataset.shards))
                    if huge in dataset.read_shard(i).column("text").to_pylist()]
    assert len(holding_huge) == 1
    assert holding_huge[0].num_rows == 1
    assert dataset.to_table().equals(table)


# --- writer: manifest -------------------------------------------------------------------------


def test_manifest_checksums_and_bytes_match_the_files(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    manifest = Dataset.open(str(folder)).manifest
    for shard in manifest.shards:
        data = (folder / shard.file).read_bytes()
        assert shard.checksum == "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()
        assert shard.bytes == len(data)


def test_sha256_checksums_are_available_and_verified(tmp_path: Path) -> None:
    table = pa.table({"id": [str(i) for i in range(100)]})
    manifest = write_table(str(tmp_path / "ds"), table, max_rows=40, checksum="sha256")
    for shard in manifest.shards:
        data = (tmp_path / "ds" / shard.file).read_bytes()
        assert shard.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    Dataset.open(str(tmp_path / "ds"), verify=True)


def test_manifest_totals_add_up(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    manifest = Dataset.open(str(folder)).manifest
    assert manifest.total_rows == table.num_rows == sum(s.rows for s in manifest.shards)
    assert manifest.total_bytes == sum(s.bytes for s in manifest.shards)


def test_manifest_appears_only_at_commit(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    with DatasetWriter(str(folder), SCHEMA, max_rows=100) as writer:
        writer.write(make_table(250))
        assert shard_files(folder)
        assert not (folder / "manifest.json").exists()
        writer.commit()
        assert (folder / "manifest.json").exists()


def test_an_exception_inside_the_writer_deletes_shards_and_commits_nothing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="stage crashed"), DatasetWriter(
        str(folder), SCHEMA, rejected_schema=REJECTED_SCHEMA, max_rows=100,
    ) as writer:
        writer.write(make_table(250))
        writer.write_rejected(make_table(5).append_column("reject_reason", pa.array(["x"] * 5)))
        raise RuntimeError("stage crashed")
    assert list(folder.rglob("*.arrow")) == []
    assert list(folder.rglob("manifest.json")) == []


def test_leaving_the_writer_without_commit_deletes_shards(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    with DatasetWriter(str(folder), SCHEMA, max_rows=100) as writer:
        writer.write(make_table(250))
    assert shard_files(folder) == []
    with pytest.raises(NotADatasetError):
        Dataset.open(str(folder))


# --- writer: schema ---------------------------------------------------------------------------


def test_a_missing_column_is_a_schema_mismatch_naming_it(tmp_path: Path) -> None:
    with DatasetWriter(str(tmp_path / "ds"), SCHEMA) as writer, pytest.raises(
        SchemaMismatchError, match=r"missing \['text'\]",
    ):
        writer.write(pa.table({"id": pa.array([1], pa.int64())}))


def test_an_extra_column_is_a_schema_mismatch_naming_it(tmp_path: Path) -> None:
    table = make_table(3).append_column("score", pa.array([0.1, 0.2, 0.3]))
    with DatasetWriter(str(tmp_path / "ds"), SCHEMA) as writer, pytest.raises(
        SchemaMismatchError, match=r"unexpected \['score'\]",
    ):
        writer.write(table)


def test_an_uncastable_column_is_a_schema_mismatch_naming_it(tmp_path: Path) -> None:
    table = pa.table({"id": ["one", "two"], "text": ["a", "b"]})
    with DatasetWriter(str(tmp_path / "ds"), SCHEMA) as writer, pytest.raises(
        SchemaMismatchError,
    ) as caught:
        writer.write(table)
    assert "id" in re.findall(r"\w+", str(caught.value))


def test_castable_types_and_column_order_are_conformed(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    narrow = pa.table({"text": pa.array(["a", "b"], pa.large_string()),
                       "id": pa.array([1, 2], pa.int32())})
    with DatasetWriter(str(folder), SCHEMA) as writer:
        writer.write(narrow)
        writer.commit()
    back = Dataset.open(str(folder)).to_table()
    assert back.schema.equals(SCHEMA)
    assert back.to_pydict() == {"id": [1, 2], "text": ["a", "b"]}


# --- writer: output folder --------------------------------------------------------------------


def test_writing_over_a_committed_dataset_needs_overwrite(
    written: tuple[Path, pa.Table],
) -> None:
    folder, table = written
    with pytest.raises(DatasetExistsError, match="overwrite"):
        write_table(str(folder), make_table(5))
    assert Dataset.open(str(folder)).to_table().equals(table)


def test_overwrite_replaces_the_dataset_and_its_old_shards(
    written: tuple[Path, pa.Table],
) -> None:
    folder, _ = written
    replacement = make_table(5, start=7)
    write_table(str(folder), replacement, overwrite=True)
    assert shard_files(folder) == ["part-00000.arrow"]
    assert Dataset.open(str(folder)).to_table().equals(replacement)


def test_prepare_output_never_clears_a_folder_with_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetExistsError, match="not a gristmill dataset"):
        prepare_output(resolve(str(folder)), overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_prepare_output_never_clears_a_users_own_arrow_files(tmp_path: Path) -> None:
    folder = tmp_path / "hf-cache"
    folder.mkdir()
    (folder / "data-00000-of-00001.arrow").write_bytes(b"someone else's shard")
    with pytest.raises(DatasetExistsError, match="not a gristmill dataset"):
        prepare_output(resolve(str(folder)), overwrite=True)
    assert (folder / "data-00000-of-00001.arrow").exists()


def test_a_damaged_manifest_is_a_clear_dataset_error(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["shards"][0]["checksum"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnreadableManifestError, match=r"manifest\.json is not a gristmill"):
        Dataset.open(str(folder))


def test_a_manifest_from_a_newer_format_is_refused(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnreadableManifestError, match="format version 99"):
        Dataset.open(str(folder))


def test_an_empty_dataset_commits_its_schema_and_no_shards(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    with DatasetWriter(str(folder), SCHEMA) as writer:
        manifest = writer.commit()
    assert manifest.shards == []
    assert manifest.total_rows == 0
    back = Dataset.open(str(folder)).to_table()
    assert back.num_rows == 0
    assert back.schema.equals(SCHEMA)


# --- reader: round trip -----------------------------------------------------------------------


def test_to_table_returns_what_was_written(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    assert Dataset.open(str(folder)).to_table().equals(table)


def test_iter_batches_yields_every_row_in_order(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    batches = list(Dataset.open(str(folder)).iter_batches())
    assert pa.Table.from_batches(batches).equals(table)


def test_read_shard_returns_that_shards_rows(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    dataset = Dataset.open(str(folder))
    assert dataset.read_shard(1).equals(table.slice(300, 300))
    assert dataset.read_shard(3).equals(table.slice(900, 100))


def test_column_selection_reads_only_those_columns(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    dataset = Dataset.open(str(folder))
    assert dataset.to_table(columns=["text"]).equals(table.select(["text"]))
    assert dataset.read_shard(0, columns=["id"]).equals(table.select(["id"]).slice(0, 300))
    assert all(b.schema.names == ["id"] for b in dataset.iter_batches(columns=["id"]))


def test_shards_open_with_pyarrow_ipc_stream(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    dataset = Dataset.open(str(folder))
    parts = []
    for shard in dataset.shards:
        with pa.OSFile(str(folder / shard.file)) as source:
            parts.append(pa.ipc.open_stream(source).read_all())
    assert pa.concat_tables(parts).equals(table)


def test_shards_open_with_polars(written: tuple[Path, pa.Table]) -> None:
    import polars as pl

    folder, table = written
    frames = [pl.read_ipc_stream(folder / s.file) for s in Dataset.open(str(folder)).shards]
    assert pl.concat(frames).to_dict(as_series=False) == table.to_pydict()


def test_shards_open_with_huggingface_datasets(written: tuple[Path, pa.Table]) -> None:
    import datasets

    folder, table = written
    rows: list[dict] = []
    for shard in Dataset.open(str(folder)).shards:
        rows.extend(datasets.Dataset.from_file(str(folder / shard.file)).to_list())
    assert rows == table.to_pylist()


# --- reader: refusing bad data ----------------------------------------------------------------


def test_a_folder_without_manifest_is_not_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "never-committed"
    folder.mkdir()
    with pytest.raises(NotADatasetError, match=re.escape(str(folder))):
        Dataset.open(str(folder))


def test_a_truncated_shard_is_corrupt_without_verify(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    shard = folder / "part-00001.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShardError, match=re.escape("part-00001.arrow")):
        Dataset.open(str(folder)).to_table()


def test_a_truncated_shard_is_corrupt_even_if_the_manifest_agrees_on_size(
    written: tuple[Path, pa.Table],
) -> None:
    folder, _ = written
    shard = folder / "part-00001.arrow"
    cut = shard.read_bytes()[: shard.stat().st_size // 2]
    shard.write_bytes(cut)
    rewrite_manifest(folder, lambda m: m["shards"][1].update(bytes=len(cut)))
    with pytest.raises(CorruptShardError, match=re.escape("part-00001.arrow")):
        Dataset.open(str(folder)).to_table()


def flip_middle_bytes(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    shard.write_bytes(bytes(data))


def test_same_size_corruption_fails_open_with_verify(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    flip_middle_bytes(folder / "part-00002.arrow")
    with pytest.raises(ChecksumMismatchError, match=re.escape("part-00002.arrow")):
        Dataset.open(str(folder), verify=True)


def test_same_size_corruption_fails_verify(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    dataset = Dataset.open(str(folder))
    flip_middle_bytes(folder / "part-00002.arrow")
    with pytest.raises(ChecksumMismatchError, match=re.escape("part-00002.arrow")):
        dataset.verify()


def test_same_size_corruption_fails_read_shard_with_verify(
    written: tuple[Path, pa.Table],
) -> None:
    folder, _ = written
    flip_middle_bytes(folder / "part-00002.arrow")
    with pytest.raises(ChecksumMismatchError):
        Dataset.open(str(folder)).read_shard(2, verify=True)


def test_a_clean_dataset_passes_verify(written: tuple[Path, pa.Table]) -> None:
    folder, table = written
    assert Dataset.open(str(folder), verify=True).to_table().equals(table)


def test_a_deleted_shard_is_corrupt(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    (folder / "part-00003.arrow").unlink()
    with pytest.raises(CorruptShardError, match=r"part-00003\.arrow.*missing"):
        Dataset.open(str(folder)).to_table()


def test_a_row_count_that_disagrees_with_the_manifest_is_corrupt(
    written: tuple[Path, pa.Table],
) -> None:
    folder, _ = written
    rewrite_manifest(folder, lambda m: m["shards"][0].update(rows=301))
    with pytest.raises(CorruptShardError, match=r"part-00000\.arrow holds 300 rows.*301"):
        Dataset.open(str(folder)).to_table()


# --- reader: rejected rows and lineage --------------------------------------------------------


def test_rejected_returns_the_rejected_sub_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    rejects = make_table(3, start=100).append_column(
        "reject_reason", pa.array(["too_short", "too_short", "lang"]))
    with DatasetWriter(str(folder), SCHEMA, rejected_schema=REJECTED_SCHEMA) as writer:
        writer.write(make_table(10))
        writer.write_rejected(rejects)
        writer.commit()
    rejected = Dataset.open(str(folder)).rejected
    assert rejected is not None
    assert rejected.uri == str(folder / "rejected")
    assert rejected.to_table().equals(rejects)


def test_rejected_is_none_when_no_rows_were_rejected(written: tuple[Path, pa.Table]) -> None:
    folder, _ = written
    assert Dataset.open(str(folder)).rejected is None


def test_lineage_chain_follows_inputs_back_to_the_source(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_table(str(a), make_table(10), lineage=Lineage(stage="ingest"))
    pinned = InputRef(uri=str(a), content_sha256=content_sha256(Dataset.open(str(a)).manifest))
    write_table(str(b), make_table(5), lineage=Lineage(stage="filter", inputs=[pinned]))
    chain = Dataset.open(str(b)).lineage_chain()
    assert [(uri, lineage.stage) for uri, lineage in chain] == [
        (str(b), "filter"), (str(a), "ingest")]


# --- non-local filesystems --------------------------------------------------------------------


def test_a_dataset_round_trips_on_the_fsspec_memory_filesystem(memory_uri: str) -> None:
    table = make_table(1000)
    manifest = write_table(memory_uri, table, max_rows=300)
    dataset = Dataset.open(memory_uri, verify=True)
    assert len(manifest.shards) == 4
    assert dataset.to_table().equals(table)


def test_a_memory_dataset_uri_reopens_the_same_dataset(memory_uri: str) -> None:
    write_table(memory_uri, make_table(10))
    dataset = Dataset.open(memory_uri)
    assert Dataset.open(dataset.uri).to_table().equals(dataset.to_table())


# --- atomic small files -----------------------------------------------------------------------


def test_write_bytes_atomic_leaves_only_the_target_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    write_bytes_atomic(resolve(str(target)), b"first")
    write_bytes_atomic(resolve(str(target)), b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_write_bytes_atomic_on_fsspec_leaves_only_the_target_file() -> None:
    memory = fsspec.filesystem("memory")
    folder = f"/gristmill-tests/{uuid.uuid4().hex}"
    location = Location(pafs.PyFileSystem(pafs.FSSpecHandler(memory)), f"{folder}/state.json")
    try:
        write_bytes_atomic(location, b"first")
        write_bytes_atomic(location, b"second")
        assert memory.cat_file(f"{folder}/state.json") == b"second"
        assert [p.rsplit("/", 1)[-1] for p in memory.ls(folder, detail=False)] == ["state.json"]
    finally:
        memory.rm(folder, recursive=True)
