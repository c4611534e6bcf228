"""partition: one dataset -> one dataset per value of a column (domains for the mixer).

The mixer samples from one dataset per domain; curated rows arrive as one dataset with a
domain column (`source`, `genre`, `lang`, ...). A global step: it streams the input once,
with one shard writer per value, and commits every part as its own dataset in a folder
under its output (`<output>/<value>`). Its own output is the index of the parts (value,
uri, rows), so a flow passes one pinned reference on and the runner reuses the whole
partition when the input and config are unchanged. Rows whose value is null go to the part
named by `missing`, so no row is lost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.config import FrozenModel
from gristmill.stages.base import StageInputError
from gristmill.stages.global_step import (
    DatasetRef,
    GlobalStep,
    StepSink,
    step_cache_key,
    step_code_version,
)
from gristmill.storage.fs import Location
from gristmill.storage.manifest import MANIFEST_NAME, REJECTED_DIR, Lineage, StageStats
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import SHARD_SUFFIX, DatasetWriter

SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
INDEX_SCHEMA = pa.schema([pa.field("value", pa.string()), pa.field("uri", pa.string()),
                          pa.field("rows", pa.int64())])
"""One row per part, in value order: the column's value, the part dataset, its rows."""


class PartitionConfig(FrozenModel):
    column: str = Field(default="source", description="Rows are grouped by this column")
    missing: str = Field(default="unknown", description="Part for rows whose value is null")
    max_parts: int = Field(default=64, ge=1, description="More distinct values is an error")


def part_name(value: object) -> str:
    """A folder-safe name for a value ('fortunes/de' -> 'fortunes_de'). The parts share the
    output folder with the index's own files, so a name that is one gets a suffix."""
    name = SAFE_NAME.sub("_", str(value)).strip("_") or "empty"
    clash = name in (MANIFEST_NAME, REJECTED_DIR) or name.endswith(SHARD_SUFFIX)
    return f"{name}_part" if clash else name


def _values(dataset: Dataset, config: PartitionConfig) -> list[str]:
    seen: set[str] = set()
    for batch in dataset.iter_batches(columns=[config.column]):
        column = batch.column(0).cast(pa.string()).fill_null(config.missing)
        seen.update(pc.unique(column).to_pylist())
        if len(seen) > config.max_parts:
            raise StageInputError(f"{Partition.name}: column {config.column!r} has more than "
                                  f"{config.max_parts} distinct values; raise max_parts or "
                                  "partition by a coarser column")
    names = {part_name(v) for v in seen}
    if len(names) != len(seen):
        raise StageInputError(f"{Partition.name}: values of {config.column!r} collide as "
                              "folder names")
    return sorted(seen)


def read_parts(ref: DatasetRef) -> dict[str, str]:
    """Value -> part dataset URI, from a partition's index (checked against its hash)."""
    index = ref.open().to_table(columns=["value", "uri"])
    return dict(zip(index.column("value").to_pylist(), index.column("uri").to_pylist(),
                    strict=True))


class Partition(GlobalStep[PartitionConfig]):
    """One committed dataset per value of `column`, and an index of them as the output."""

    name: ClassVar[str] = "partition"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        return INDEX_SCHEMA

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        dataset = inputs[0]
        if self.config.column not in dataset.schema.names:
            raise StageInputError(f"{self.name}: missing column {self.config.column!r} "
                                  f"(input columns: {dataset.schema.names})")
        values = _values(dataset, self.config)
        parts = {v: sink.location.join(part_name(v)) for v in values}
        counts = self._write_parts(dataset, parts, sink)
        sink.write(pa.table({"value": values, "uri": [parts[v].uri() for v in values],
                             "rows": [counts[v] for v in values]}, schema=INDEX_SCHEMA))
        return {"column": self.config.column, "parts": len(values), "rows_per_part": counts}

    def _write_parts(self, dataset: Dataset, parts: dict[str, Location],
                     sink: StepSink) -> dict[str, int]:
        """Stream the input once into one writer per value; commit each part with lineage."""
        column, storage = self.config.column, sink.runtime.storage
        counts = dict.fromkeys(parts, 0)
        lineage = self._part_lineage(dataset, sink)
        task = sink.progress.add_task(self.name, total=dataset.num_rows)
        with ExitStack() as stack:
            writers = {v: stack.enter_context(DatasetWriter(
                out, dataset.schema, max_rows=storage.max_rows_per_shard,
                max_bytes=storage.max_bytes_per_shard, checksum=storage.checksum,
                overwrite=True)) for v, out in parts.items()}
            for batch in dataset.iter_batches():
                table = pa.Table.from_batches([batch])
                keys = table.column(column).cast(pa.string()).fill_null(self.config.missing)
                for value in pc.unique(keys).to_pylist():
                    rows = table.filter(pc.equal(keys, value))
                    writers[value].write(rows)
                    counts[value] += rows.num_rows
                sink.progress.advance(task, table.num_rows)
            for value, writer in writers.items():
                writer.commit(stats=StageStats(rows_in=counts[value], rows_out=counts[value]),
                              lineage=lineage.model_copy(update={
                                  "config": {**lineage.config, "value": value}}))
        return counts

    def _part_lineage(self, dataset: Dataset, sink: StepSink) -> Lineage:
        """Where the parts came from, so each can be inspected on its own: this step's
        config (each part adds its value), the input, the code, and the index's cache key."""
        key, refs = step_cache_key(self, [dataset], sink.runtime)
        return Lineage(stage=self.name, config=self.config.model_dump(mode="json"),
                       inputs=refs, code_version=step_code_version(type(self)), cache_key=key)
