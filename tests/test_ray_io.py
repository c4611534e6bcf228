"""Ray Data adapters: one read task per shard in, many write tasks and a single commit out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pytest
import ray
import ray.cloudpickle

from gristmill.config import RuntimeConfig
from gristmill.stages.worker_pass import map_shards
from gristmill.storage.errors import DatasetExistsError, NotADatasetError
from gristmill.storage.manifest import Manifest
from gristmill.storage.ray_io import read_ray, write_ray
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = pytest.mark.usefixtures("ray_local")
# Ray workers cannot import this test module, so its functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])
ROWS = 10_000
BLOCKS = 8


def make_table(rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(rows), pa.int64()),
                     "text": [f"row {i}" for i in range(rows)]}, schema=SCHEMA)


def with_text(batch: dict[str, np.ndarray]) -> pa.Table:
    ids = batch["id"].astype(np.int64)
    return pa.table({"id": ids, "text": [f"row {i}" for i in ids]}, schema=SCHEMA)


def source(rows: int = ROWS, blocks: int = BLOCKS) -> ray.data.Dataset:
    """A Ray dataset of id/text rows spread over several blocks, hence several write tasks."""
    return ray.data.range(rows, override_num_blocks=blocks).map_batches(
        with_text, batch_format="numpy")


def ids_on_disk(folder: Path) -> list[int]:
    dataset = Dataset.open(str(folder))
    return [i for batch in dataset.iter_batches(columns=["id"])
            for i in batch.column("id").to_pylist()]


@pytest.fixture(scope="module")
def written_from_ray(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """The 10 000-row, 8-block source written once with write_ray."""
    folder = tmp_path_factory.mktemp("ray") / "out"
    return folder, write_ray(source(), str(folder), max_rows=700)


# --- read_ray ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_rows", [1000, 500, 300, 100])
def test_read_ray_makes_one_block_per_shard(tmp_path: Path, max_rows: int) -> None:
    folder = tmp_path / "ds"
    manifest = write_table(str(folder), make_table(1000), max_rows=max_rows)
    blocks = ray.get(read_ray(str(folder)).to_arrow_refs())
    assert [b.num_rows for b in blocks] == [s.rows for s in manifest.shards]


def test_read_ray_returns_the_rows_written(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    table = make_table(1000)
    write_table(str(folder), table, max_rows=300)
    assert read_ray(str(folder)).take_all() == table.to_pylist()


def test_read_ray_selects_columns(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    table = make_table(1000)
    write_table(str(folder), table, max_rows=300)
    ds = read_ray(str(folder), columns=["text"])
    assert ds.columns() == ["text"]
    assert [row["text"] for row in ds.take_all()] == table.column("text").to_pylist()


def test_read_ray_of_an_empty_dataset_selects_columns(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    write_table(str(folder), SCHEMA.empty_table())
    ds = read_ray(str(folder), columns=["id"])
    assert ds.count() == 0
    assert ds.columns() == ["id"]


def keep_none(table: pa.Table) -> pa.Table:
    return table.slice(0, 0)


def test_an_empty_input_mapped_and_written_commits_an_empty_dataset(tmp_path: Path) -> None:
    """An empty dataset's block reaches a map with no columns; the write must still commit
    the declared schema, not fail deep inside Ray (found by a ScaleQuest run where every
    question was rejected before dedup)."""
    write_table(str(tmp_path / "empty"), SCHEMA.empty_table())
    mapped = read_ray(str(tmp_path / "empty"), columns=["id"]).map_batches(
        keep_none, batch_format="pyarrow")
    write_ray(mapped, str(tmp_path / "out"), schema=pa.schema([SCHEMA.field("id")]))
    written = Dataset.open(str(tmp_path / "out"))
    assert written.num_rows == 0 and written.schema.names == ["id"]


def test_read_ray_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(NotADatasetError):
        read_ray(str(tmp_path))


# --- write_ray --------------------------------------------------------------------------------


def test_write_ray_writes_from_several_tasks(written_from_ray: tuple[Path, Manifest]) -> None:
    _, manifest = written_from_ray
    prefixes = {shard.file.rsplit("-", 1)[0] for shard in manifest.shards}
    assert len(prefixes) > 1
    assert all(p.startswith("part-000") for p in prefixes)


def test_write_ray_commits_exactly_one_manifest(written_from_ray: tuple[Path, Manifest]) -> None:
    folder, manifest = written_from_ray
    assert [p.name for p in folder.rglob("manifest.json")] == ["manifest.json"]
    assert manifest.total_rows == ROWS
    listed = sorted(s.file for s in manifest.shards)
    assert sorted(p.name for p in folder.glob("*.arrow")) == listed


def test_write_ray_keeps_every_row_once(written_from_ray: tuple[Path, Manifest]) -> None:
    folder, _ = written_from_ray
    assert sorted(ids_on_disk(folder)) == list(range(ROWS))


def test_write_ray_respects_max_rows(written_from_ray: tuple[Path, Manifest]) -> None:
    _, manifest = written_from_ray
    assert max(s.rows for s in manifest.shards) <= 700


def test_write_ray_commits_the_data_schema(written_from_ray: tuple[Path, Manifest]) -> None:
    folder, manifest = written_from_ray
    assert manifest.schema.equals(SCHEMA)
    assert Dataset.open(str(folder)).to_table().num_rows == ROWS


def test_write_ray_refuses_a_committed_output(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    write_table(str(folder), make_table(5))
    with pytest.raises(DatasetExistsError):
        write_ray(source(100, 2), str(folder))
    assert Dataset.open(str(folder)).num_rows == 5


def test_write_ray_overwrites_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    write_table(str(folder), make_table(5))
    manifest = write_ray(source(100, 2), str(folder), overwrite=True)
    assert manifest.total_rows == 100
    assert sorted(ids_on_disk(folder)) == list(range(100))


def test_a_failing_map_makes_write_ray_raise_and_commit_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "out"

    def fail_on_one_block(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if 5_000 in batch["id"]:
            raise RuntimeError("bad block")
        return batch

    ds = ray.data.range(ROWS, override_num_blocks=BLOCKS).map_batches(fail_on_one_block)
    with pytest.raises(Exception, match="bad block"):
        write_ray(ds, str(folder))
    assert not (folder / "manifest.json").exists()
    with pytest.raises(NotADatasetError):
        Dataset.open(str(folder))


def test_write_ray_then_read_ray_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    write_ray(source(1000, 4), str(folder), max_rows=300)
    rows = read_ray(str(folder)).take_all()
    assert sorted(row["id"] for row in rows) == list(range(1000))
    assert all(row["text"] == f"row {row['id']}" for row in rows)


def shard_summary(table: pa.Table) -> pa.Table:
    return pa.table({"rows": [table.num_rows], "id_sum": [pa.compute.sum(table["id"]).as_py()],
                     "pid": [os.getpid()], "columns": [table.column_names]})


def test_a_worker_pass_sends_back_one_summary_per_shard_from_the_workers(
        tmp_path: Path) -> None:
    write_table(str(tmp_path / "ds"), make_table(ROWS), max_rows=1_500)
    dataset = Dataset.open(str(tmp_path / "ds"))
    summaries = pa.concat_tables(map_shards(dataset, shard_summary, ["id"],
                                            RuntimeConfig(progress=False)))
    assert sorted(summaries["rows"].to_pylist()) == sorted(s.rows for s in dataset.shards)
    assert sum(summaries["id_sum"].to_pylist()) == ROWS * (ROWS - 1) // 2
    assert set(summaries["columns"].to_pylist()[0]) == {"id"}
    assert os.getpid() not in summaries["pid"].to_pylist()
