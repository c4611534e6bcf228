"""partition: one dataset -> one dataset per value of a column (domains for the mixer).

The mixer samples from one dataset per domain; curated rows arrive as one dataset with a
domain column (`source`, `genre`, `lang`, ...). This streams the input once, with one shard
writer per value, and commits every part with lineage. Rows whose value is null go to the
part named by `missing`, so no row is lost. Reused when the input and config are unchanged.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.stages.base import StageInputError
from gristmill.stages.code_version import code_version
from gristmill.stages.runner import cache_key, committed_with_key, config_hash
from gristmill.storage.fs import resolve
from gristmill.storage.manifest import InputRef, Lineage, StageStats, content_sha256
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import DatasetWriter

STAGE = "partition"
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class PartitionConfig(FrozenModel):
    column: str = Field(default="source", description="Rows are grouped by this column")
    missing: str = Field(default="unknown", description="Part for rows whose value is null")
    max_parts: int = Field(default=64, ge=1, description="More distinct values is an error")


def part_name(value: object) -> str:
    """A folder-safe name for a value: 'fortunes/de' -> 'fortunes_de'."""
    return SAFE_NAME.sub("_", str(value)).strip("_") or "empty"


def _values(dataset: Dataset, config: PartitionConfig) -> list[str]:
    seen: set[str] = set()
    for batch in dataset.iter_batches(columns=[config.column]):
        column = batch.column(0).cast(pa.string()).fill_null(config.missing)
        seen.update(pc.unique(column).to_pylist())
        if len(seen) > config.max_parts:
            raise StageInputError(f"{STAGE}: column {config.column!r} has more than "
                                  f"{config.max_parts} distinct values; raise max_parts or "
                                  "partition by a coarser column")
    names = {part_name(v) for v in seen}
    if len(names) != len(seen):
        raise StageInputError(f"{STAGE}: values of {config.column!r} collide as folder names")
    return sorted(seen)


def run_partition(input_uri: str, output: str, config: PartitionConfig | None = None,
                  runtime: RuntimeConfig | None = None) -> dict[str, str]:
    """Write `<output>/<value>` for every value of the column; return value -> dataset URI."""
    config, runtime = config or PartitionConfig(), runtime or RuntimeConfig()
    dataset = Dataset.open(input_uri)
    if config.column not in dataset.schema.names:
        raise StageInputError(f"{STAGE}: missing column {config.column!r} "
                              f"(input columns: {dataset.schema.names})")
    refs = [InputRef(uri=dataset.uri, content_sha256=content_sha256(dataset.manifest))]
    payload = config.model_dump(mode="json")
    code = code_version(sys.modules[__name__])
    key = cache_key(STAGE, payload, refs, code, runtime.storage)
    values = _values(dataset, config)
    parts = {v: resolve(output).join(part_name(v)).uri() for v in values}
    if all(committed_with_key(uri, key) for uri in parts.values()):
        return parts
    started, wall = datetime.now(UTC), time.perf_counter()
    storage = runtime.storage
    with ExitStack() as stack:
        writers = {v: stack.enter_context(DatasetWriter(
            uri, dataset.schema, max_rows=storage.max_rows_per_shard,
            max_bytes=storage.max_bytes_per_shard, checksum=storage.checksum, overwrite=True))
            for v, uri in parts.items()}
        counts = dict.fromkeys(values, 0)
        for batch in dataset.iter_batches():
            table = pa.Table.from_batches([batch])
            keys = table.column(config.column).cast(pa.string()).fill_null(config.missing)
            for value in pc.unique(keys).to_pylist():
                rows = table.filter(pc.equal(keys, value))
                writers[value].write(rows)
                counts[value] += rows.num_rows
        for value, writer in writers.items():
            writer.commit(stats=StageStats(rows_in=counts[value], rows_out=counts[value],
                                           seconds=time.perf_counter() - wall),
                          lineage=Lineage(stage=STAGE, config={**payload, "value": value},
                                          config_hash=config_hash(payload), inputs=refs,
                                          code_version=code, cache_key=key, started=started,
                                          finished=datetime.now(UTC)))
    return parts
