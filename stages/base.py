"""The stage contract: a config, a pure batch transform, and the inputs it reads.

A map stage is a small class: `__init__` takes its config, `setup()` loads anything heavy
(models) once per worker, and `process(batch)` turns one Arrow table into a `Split` of
kept and rejected rows. Everything about Ray, resume and commits lives in the runner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

import pyarrow as pa
from pydantic import BaseModel, Field

from gristmill.config import FrozenModel
from gristmill.inference.identity import identity_payload
from gristmill.storage.manifest import InputRef, content_sha256
from gristmill.storage.reader import Dataset

STRING_TYPES = (pa.string(), pa.large_string())
ColumnTypes = dict[str, tuple[pa.DataType, ...]]
"""Column name -> the types a stage accepts there."""

REJECT_COLUMNS = (
    pa.field("reject_reason", pa.string()),
    pa.field("reject_detail", pa.string()),
    pa.field("reject_stage", pa.string()),
)


class Resources(FrozenModel):
    """Where and how wide a stage runs; the runner turns this into a Ray actor pool."""

    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    concurrency: int | None = Field(
        default=None, ge=1, description="Workers in the pool; None = as many as CPUs allow")
    batch_rows: int = Field(default=1024, ge=1, description="Rows per process() call")


class StageConfig(FrozenModel):
    """Base of every stage config. `resources` says where a stage runs, not what it computes,
    so it is left out of the config hash."""

    resources: Resources = Resources()

    def hash_payload(self) -> dict:
        """What the output depends on: the config less `resources`, with each model path
        replaced by the model's content identity."""
        return identity_payload(self, exclude={"resources"})


ConfigT = TypeVar("ConfigT", bound=StageConfig)


class Split(NamedTuple):
    """What one batch became: rows to keep, and rows dropped with their reasons."""

    kept: pa.Table
    rejected: pa.Table


class StageInputError(ValueError):
    """The input cannot feed this stage (missing column, wrong type): said before any work."""


class StageContractError(RuntimeError):
    """A stage broke the contract (rows lost or invented): a bug in the stage, not the data."""


def reject_schema(schema: pa.Schema) -> pa.Schema:
    """The rejected sub-dataset keeps every input column plus why and where it was dropped."""
    base = [f for f in schema if f.name not in {c.name for c in REJECT_COLUMNS}]
    return pa.schema([*base, *REJECT_COLUMNS])


def split_by_reasons(batch: pa.Table, reasons: Sequence[str | None],
                     details: Sequence[str | None], stage: str) -> Split:
    """Rows whose reason is None are kept; the others go to rejected with reason and detail."""
    keep = pa.array([r is None for r in reasons], pa.bool_())
    kept = batch.filter(keep)
    dropped = [i for i, r in enumerate(reasons) if r is not None]
    rejected = batch.take(pa.array(dropped, pa.int64()))
    rejected = attach_reasons(rejected, [reasons[i] for i in dropped],
                              [details[i] for i in dropped], stage)
    return Split(kept, rejected)


class Rejections:
    """Why each row of one batch is dropped (None: kept), filled in as a stage finds out."""

    def __init__(self, rows: int) -> None:
        self.reasons: list[str | None] = [None] * rows
        self.details: list[str | None] = [None] * rows

    def __setitem__(self, row: int, why: tuple[str | None, str | None]) -> None:
        self.reasons[row], self.details[row] = why

    def split(self, table: pa.Table, stage: str) -> Split:
        return split_by_reasons(table, self.reasons, self.details, stage)


def attach_reasons(table: pa.Table, reasons: Sequence[str], details: Sequence[str | None],
                   stage: str) -> pa.Table:
    for field in REJECT_COLUMNS:
        if field.name in table.column_names:
            table = table.drop_columns([field.name])
    return (table
            .append_column(REJECT_COLUMNS[0], pa.array(reasons, pa.string()))
            .append_column(REJECT_COLUMNS[1], pa.array(details, pa.string()))
            .append_column(REJECT_COLUMNS[2], pa.array([stage] * len(reasons), pa.string())))


class WorkUnit(BaseModel):
    """The unit of work and of resume: one input shard, or one raw file or part of one."""

    index: int
    uri: str
    rows: int | None = None
    part: tuple[int, int] | None = Field(
        default=None, description="[start, end) of the file: bytes for JSONL, row groups "
                                  "for Parquet; None = all of it")


class Digest(Protocol):
    """What a unit's reader feeds with what it read (xxhash and hashlib objects fit)."""

    def update(self, data: bytes, /) -> None: ...


class StageInput(Protocol):
    """Where a stage's rows come from. Must pickle: workers call `read_unit` themselves."""

    def units(self) -> list[WorkUnit]: ...

    def refs(self) -> list[InputRef]: ...

    def schema(self) -> pa.Schema: ...

    def read_unit(self, unit: WorkUnit, batch_rows: int,
                  digest: Digest | None = None) -> Iterator[pa.Table]:
        """The unit's rows in batches; `digest` is fed what was read, for the lineage."""
        ...


class DatasetInput:
    """A committed gristmill dataset as stage input: one work unit per shard."""

    def __init__(self, uri: str, *, verify: bool = True) -> None:
        self.dataset = Dataset.open(uri)
        self.verify = verify

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(index=i, uri=self.dataset.shard_location(i).uri(), rows=s.rows)
                for i, s in enumerate(self.dataset.shards)]

    def refs(self) -> list[InputRef]:
        return [InputRef(uri=self.dataset.uri,
                         content_sha256=content_sha256(self.dataset.manifest))]

    def schema(self) -> pa.Schema:
        return self.dataset.schema

    def read_unit(self, unit: WorkUnit, batch_rows: int,
                  digest: Digest | None = None) -> Iterator[pa.Table]:
        if digest is not None:
            digest.update(self.dataset.shards[unit.index].checksum.encode())
        table = self.dataset.read_shard(unit.index, verify=self.verify)
        for offset in range(0, table.num_rows, batch_rows):
            yield table.slice(offset, batch_rows)


class MapStage(ABC, Generic[ConfigT]):
    """A stage that maps every input batch to kept + rejected rows, one worker at a time."""

    name: ClassVar[str]
    fan_out: ClassVar[bool] = False
    """True when a row may yield several output rows (generation, chunking)."""

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    def setup(self) -> None:
        """Load models or other heavy state; called once per worker before any batch."""

    def check_input(self, schema: pa.Schema) -> None:
        """Raise StageInputError if `schema` cannot feed this stage."""

    @abstractmethod
    def output_schema(self, input_schema: pa.Schema) -> pa.Schema: ...

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return reject_schema(input_schema)

    @abstractmethod
    def process(self, batch: pa.Table) -> Split: ...


class AddColumnsStage(MapStage[ConfigT]):
    """A stage that appends (or replaces) the `added()` columns. Rejected rows keep them as
    far as they were filled, so a reject shows what the stage made of the row."""

    ADDED: ClassVar[list[pa.Field]] = []

    def added(self) -> list[pa.Field]:
        """The appended columns; a stage whose column names come from its config overrides it."""
        return self.ADDED

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        names = {f.name for f in self.added()}
        return pa.schema([*(f for f in input_schema if f.name not in names), *self.added()])

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return reject_schema(self.output_schema(input_schema))

    def with_added(self, batch: pa.Table, values: dict[str, Any]) -> pa.Table:
        """`batch` with the added columns, each built from a list or taken as an array."""
        added = self.added()
        batch = batch.drop_columns([f.name for f in added if f.name in batch.column_names])
        for field in added:
            column = values[field.name]
            if not isinstance(column, pa.Array | pa.ChunkedArray):
                column = pa.array(column, field.type)
            batch = batch.append_column(field, column)
        return batch


def require_columns(schema: pa.Schema, stage: str, columns: ColumnTypes) -> None:
    """Name every missing or mistyped column at once, with what the stage accepts."""
    problems = []
    for name, types in columns.items():
        if name not in schema.names:
            problems.append(f"missing column {name!r}")
        elif schema.field(name).type not in types:
            wanted = " or ".join(str(t) for t in types)
            problems.append(f"column {name!r} is {schema.field(name).type}, needs {wanted}")
    if problems:
        raise StageInputError(f"{stage} cannot read this input: " + "; ".join(problems)
                              + f" (input columns: {schema.names})")
