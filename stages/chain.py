"""A chain of map stages run in one pass per unit: read once, every batch through every link.

Only what is asked for is written. Under the chain's output folder, the last link's kept
rows are the output itself and its rejects go to `rejected/`, exactly as for a single stage
(a chain of one link); an earlier link's rejects go to `rejected-<stage>/`, and its kept
rows to `kept-<stage>/` only when the caller asks to keep them. Each is a dataset of its
own with its stage's schema, so no row is lost and every reject says why and where. With
`storage.rejected_rows: ids`, the first link over a committed dataset records its rejects
by id alone: the rows stay in that input.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import pyarrow as pa
import xxhash
from pydantic import BaseModel, Field

from gristmill.config import StorageConfig
from gristmill.stages.base import (
    AddColumnsStage,
    MapStage,
    Split,
    StageConfig,
    StageContractError,
    StageInput,
    StageInputError,
    WorkUnit,
)
from gristmill.storage.fs import Location, write_bytes_atomic
from gristmill.storage.manifest import PROGRESS_DIR, REJECTED_DIR, ShardInfo
from gristmill.storage.writer import ShardSetWriter

OUTPUT = ""
"""The folder key of the chain's own output (its last link's kept rows)."""


class Link(NamedTuple):
    """One stage of a chain: its class and its config."""

    stage_cls: type[MapStage]
    config: StageConfig


class LinkCounts(BaseModel):
    """What one link did to the rows that reached it."""

    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    reject_reasons: dict[str, int] = Field(default_factory=dict)

    def add(self, batch_rows: int, split: Split) -> None:
        self.rows_in += batch_rows
        self.rows_out += split.kept.num_rows
        self.rows_rejected += split.rejected.num_rows
        if split.rejected.num_rows:
            reasons = Counter(self.reject_reasons)
            reasons.update(split.rejected.column("reject_reason").to_pylist())
            self.reject_reasons = dict(reasons)


class UnitRecord(BaseModel):
    """What one finished unit wrote: the durable proof that it need not run again."""

    index: int
    shards: dict[str, list[ShardInfo]] = Field(
        description="Folder under the output ('' = the output itself) -> shards written")
    links: list[LinkCounts]
    input_digest: str = Field(default="", description="xxh3_128 of what the unit read")
    worker: str = Field(default="", description="host:pid of the worker that ran it")
    node: str = Field(default="", description="Ray node id of that worker ('' outside Ray)")
    seconds: float
    finished: datetime


class ChainPlan:
    """Where each link's kept and rejected rows go, and their schemas, checked up front."""

    def __init__(self, stages: Sequence[MapStage], input_schema: pa.Schema,
                 keep: Sequence[str] = (), *, first_rejects_by_id: bool = False) -> None:
        names = [stage.name for stage in stages]
        if not stages or len(set(names)) != len(names):
            raise StageInputError(f"a chain needs one or more distinct stages, got {names}")
        unknown = set(keep) - set(names[:-1])
        if unknown:
            raise StageInputError(f"keep names {sorted(unknown)}, which are not earlier "
                                  f"stages of the chain {names}")
        self.rejects_by_id = first_rejects_by_id
        self.kept: list[str | None] = []
        self.rejected: list[str] = []
        self.schemas: dict[str, pa.Schema] = {}
        schema = input_schema
        for index, stage in enumerate(stages):
            stage.check_input(schema)
            last = index == len(stages) - 1
            kept = OUTPUT if last else (f"kept-{stage.name}" if stage.name in keep else None)
            rejected = REJECTED_DIR if last else f"rejected-{stage.name}"
            output_schema = stage.output_schema(schema)
            self.schemas[rejected] = stage.rejected_schema(schema)
            if index == 0 and first_rejects_by_id:
                self.schemas[rejected] = _ids_only(stage, schema)
            if kept is not None:
                self.schemas[kept] = output_schema
            self.kept.append(kept)
            self.rejected.append(rejected)
            schema = output_schema

    @property
    def folders(self) -> list[str]:
        return list(self.schemas)


BY_ID = {b"gristmill.rejects": b"by_id"}
"""Schema metadata of a rejected dataset written by reference (stages/rejected.py)."""


def _ids_only(stage: MapStage, schema: pa.Schema) -> pa.Schema:
    """Rejects by reference: the id, what the stage found (its own columns, such as a score
    or `duplicate_of`) and why; the input's columns stay in the input."""
    if "id" not in schema.names:
        raise StageInputError(f"{stage.name}: storage.rejected_rows 'ids' needs an 'id' "
                              f"column in the input (columns: {schema.names})")
    written = {f.name for f in stage.added()} if isinstance(stage, AddColumnsStage) else set()
    found = [f for f in stage.rejected_schema(schema)
             if f.name != "id" and (f.name in written or f.name not in schema.names)]
    return pa.schema([schema.field("id"), *found], metadata=BY_ID)


def _through(stage: MapStage, table: pa.Table) -> Split:
    """One link over a batch, in slices of the link's own batch size."""
    size = stage.config.resources.batch_rows
    if table.num_rows <= size:
        split = stage.process(table)
    else:
        parts = [stage.process(table.slice(start, size))
                 for start in range(0, table.num_rows, size)]
        split = Split(pa.concat_tables([p.kept for p in parts]),
                      pa.concat_tables([p.rejected for p in parts]))
    accounted = split.kept.num_rows + split.rejected.num_rows
    if not stage.fan_out and accounted != table.num_rows:
        raise StageContractError(
            f"{stage.name} returned {split.kept.num_rows} kept + {split.rejected.num_rows} "
            f"rejected rows for a batch of {table.num_rows}")
    return split


def _ray_node() -> str:
    """The Ray node this process runs on, so a run shows which machines did its work."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def record_location(out: Location, index: int) -> Location:
    return out.join(PROGRESS_DIR, f"unit-{index:05d}.json")


def process_unit(stages: Sequence[MapStage], plan: ChainPlan, source: StageInput,
                 unit: WorkUnit, out: Location, storage: StorageConfig,
                 generation: str) -> UnitRecord:
    """Run one unit through the whole chain and record it; on failure delete what it
    wrote."""
    started = time.perf_counter()
    options = {"prefix": f"part-{generation}-{unit.index:05d}",
               "max_rows": storage.max_rows_per_shard,
               "max_bytes": storage.max_bytes_per_shard, "checksum": storage.checksum}
    writers = {folder: ShardSetWriter(out.join(folder) if folder else out, schema, **options)
               for folder, schema in plan.schemas.items()}
    counts = [LinkCounts() for _ in stages]
    digest = xxhash.xxh3_128()
    try:
        for batch in source.read_unit(unit, stages[0].config.resources.batch_rows, digest):
            current = batch
            for index, stage in enumerate(stages):
                if current.num_rows == 0:
                    break
                split = _through(stage, current)
                counts[index].add(current.num_rows, split)
                rejects = split.rejected
                if index == 0 and plan.rejects_by_id:
                    rejects = rejects.select(plan.schemas[plan.rejected[0]].names)
                writers[plan.rejected[index]].write(rejects)
                kept = plan.kept[index]
                if kept is not None:
                    writers[kept].write(split.kept)
                current = split.kept
        record = UnitRecord(
            index=unit.index, shards={f: w.close() for f, w in writers.items()}, links=counts,
            input_digest=digest.hexdigest(), worker=f"{socket.gethostname()}:{os.getpid()}",
            node=_ray_node(),
            seconds=time.perf_counter() - started, finished=datetime.now(UTC))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    write_bytes_atomic(record_location(out, unit.index), record.model_dump_json().encode())
    return record
