"""Ray Data adapters: read a dataset as `ray.data.Dataset`, write one back with one commit.

Reading makes one read task per shard. Writing lets every write task stream its blocks
through `ShardSetWriter` into its own shards (`part-<task>-<n>.arrow`); the driver then
commits a single manifest, so readers see all of the write or none of it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import pyarrow as pa
import ray.data
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask, WriteResult

from gristmill.storage.checksum import DEFAULT_CHECKSUM, ChecksumAlgorithm
from gristmill.storage.errors import SchemaMismatchError
from gristmill.storage.fs import Location, remove_tree, resolve
from gristmill.storage.manifest import (
    Lineage,
    Manifest,
    ShardInfo,
    decode_schema,
    encode_schema,
    load_manifest,
)
from gristmill.storage.reader import Dataset, read_shard_file
from gristmill.storage.writer import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    ShardSetWriter,
    commit_dataset,
    conform,
    prepare_output,
    remove_unlisted_shards,
)


def _read_shard(loc: Location, shard: ShardInfo, schema: pa.Schema,
                columns: list[str] | None, verify: bool) -> list[pa.Table]:
    return [read_shard_file(loc, shard, schema, columns=columns, verify=verify)]


class ShardDatasource(Datasource):
    """One Ray read task per shard of a committed dataset."""

    def __init__(self, dataset: Dataset, *, columns: list[str] | None = None,
                 verify: bool = False) -> None:
        super().__init__()
        self.dataset = dataset
        self.columns = columns
        self.verify = verify

    def estimate_inmemory_data_size(self) -> int:
        return self.dataset.manifest.total_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object | None = None) -> list[ReadTask]:
        tasks = []
        for index, shard in enumerate(self.dataset.shards):
            metadata = BlockMetadata(
                num_rows=shard.rows, size_bytes=shard.bytes, exec_stats=None,
                input_files=[self.dataset.shard_location(index).uri()],
            )
            read = functools.partial(_read_shard, self.dataset.shard_location(index), shard,
                                     self.dataset.schema, self.columns, self.verify)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "GristmillShards"


def configure_ray_data() -> None:
    """gristmill draws its own progress bars, and keeps row order deterministic. Set where
    Ray Data is used, not when Ray starts: importing Ray Data costs a second and a half, and
    the runner's map stages run without it."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    context.print_on_execution_start = False


def read_ray(source: str | Location | Dataset, *, columns: list[str] | None = None,
             verify: bool = False) -> ray.data.Dataset:
    """Open a committed dataset lazily as a Ray Dataset (one block per shard)."""
    configure_ray_data()
    dataset = source if isinstance(source, Dataset) else Dataset.open(source)
    if not dataset.shards:
        empty = dataset.schema.empty_table()
        return ray.data.from_arrow(empty.select(columns) if columns is not None else empty)
    return ray.data.read_datasource(ShardDatasource(dataset, columns=columns, verify=verify),
                                    override_num_blocks=len(dataset.shards))


class ShardDatasink(Datasink[dict]):
    """Each write task writes its own shards; `on_write_complete` commits one manifest."""

    def __init__(self, out: Location, *, max_rows: int, max_bytes: int,
                 checksum: ChecksumAlgorithm, schema: pa.Schema | None,
                 lineage: Lineage | None) -> None:
        self.out = out
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.checksum = checksum
        self.lineage = lineage
        self.schema = schema

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        if self.schema is None and isinstance(schema, pa.Schema):
            self.schema = schema

    def write(self, blocks: Iterable[Block], ctx: object) -> dict:
        writer: ShardSetWriter | None = None
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue  # an empty input's block may carry no columns at all
            if writer is None:
                schema = self.schema or table.schema
                writer = ShardSetWriter(self.out, schema, prefix=f"part-{ctx.task_idx:05d}",
                                        max_rows=self.max_rows, max_bytes=self.max_bytes,
                                        checksum=self.checksum)
            writer.write(conform(table, writer.schema))
        if writer is None:
            return {"schema": None, "shards": []}
        return {"schema": encode_schema(writer.schema),
                "shards": [shard.model_dump() for shard in writer.close()]}

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        parts = [part for part in write_result.write_returns if part["schema"] is not None]
        schemas = {part["schema"] for part in parts}
        if len(schemas) > 1:
            raise SchemaMismatchError(f"write tasks produced {len(schemas)} different schemas; "
                                      "cast the dataset to one schema before writing")
        schema = self.schema or (decode_schema(schemas.pop()) if schemas else pa.schema([]))
        shards = sorted((ShardInfo(**s) for part in parts for s in part["shards"]),
                        key=lambda s: s.file)
        remove_unlisted_shards(self.out, {s.file for s in shards})
        commit_dataset(self.out, schema, shards, lineage=self.lineage)

    def on_write_failed(self, error: Exception) -> None:
        remove_tree(self.out)

    def get_name(self) -> str:
        return "GristmillShards"


def write_ray(
    ds: ray.data.Dataset,
    uri: str | Location,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    checksum: ChecksumAlgorithm = DEFAULT_CHECKSUM,
    schema: pa.Schema | None = None,
    lineage: Lineage | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write a Ray Dataset from all its workers as one committed gristmill dataset.

    Pass `schema` when blocks may differ (an all-null block infers a null column): every
    block is then cast to it, and a block that cannot be is a SchemaMismatchError.
    """
    configure_ray_data()
    out = resolve(uri)
    prepare_output(out, overwrite=overwrite)
    sink = ShardDatasink(out, max_rows=max_rows, max_bytes=max_bytes, checksum=checksum,
                         schema=schema, lineage=lineage)
    ds.write_datasink(sink)
    return load_manifest(out)
