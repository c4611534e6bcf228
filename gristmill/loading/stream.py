"""Stream committed datasets into training: one seeded order, split by rank and worker.

`ShardStream` is a torch IterableDataset that yields whole batches. An epoch's sample
sequence is `SampleOrder` over every shard of every dataset (datasets concatenated in the
order given), cut into global batches of `batch_size`. Rank r of `world_size` owns global
batches r, r + world, ...; DataLoader worker w of W owns every W-th of the rank's local
batches. The DataLoader hands out worker results round-robin in worker order, so the
consumer sees local batches 0, 1, 2, ... whatever W is: the order never depends on the
worker count, and resuming is arithmetic (start at local batch k, nothing read to skip).

DataLoader workers iterate a pickled copy, so progress is counted where batches reach the
trainer: in `ShardStream.__iter__` when it runs in the trainer's process (num_workers=0), in
`StreamLoader` otherwise. Both write it into the stream, whose `state_dict()` is the resume
point. `to_hf_dataset` / `to_hf_iterable` open the same shards with Hugging Face `datasets`.

Reading: a reader (one worker of one rank) gathers, per shard and in ShardCache's read-ahead
thread, just the rows it will consume, in the order it consumes them (one `take`); its
batches are zero-copy slices of that. In storage order with a single reader nothing is
gathered: batches are slices of the memory-mapped shard. One cache serves all datasets and
holds 2 shards plus PREFETCH_SHARDS read ahead, so memory does not grow with the data.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gristmill.loading.sample_order import SampleOrder
from gristmill.loading.shard_cache import ShardCache
from gristmill.storage.errors import SchemaMismatchError
from gristmill.storage.fs import Location
from gristmill.storage.manifest import content_sha256
from gristmill.storage.reader import Dataset

StreamFormat = Literal["torch", "numpy", "arrow"]
DatasetRef = str | os.PathLike[str] | Location | Dataset
Batch = dict[str, Any] | pa.RecordBatch

PREFETCH_SHARDS = 2  # shards read ahead: slack for a read-ahead thread slowed by other work
_STATE_KEYS = ("epoch", "batches_consumed", "seed", "fingerprint", "batch_size",
               "world_size", "shuffle", "drop_last")


class StreamStateError(ValueError):
    """A state_dict that does not belong to this stream (other data or another layout)."""


class StreamConfig(BaseModel):
    """How a ShardStream cuts and delivers batches; validated so mistakes fail at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: PositiveInt
    columns: tuple[str, ...] | None = None
    seed: NonNegativeInt = 0
    shuffle: bool = True
    drop_last: bool = False
    format: StreamFormat = "torch"
    verify: bool = True


@dataclass(frozen=True)
class _Shard:
    """One shard of the concatenated shard list: which dataset, which of its shards."""

    dataset: int
    index: int


class _Reader:
    """One reader's share of one epoch: a worker of a rank, from local batch `first` on.

    Everything is arithmetic on the epoch's SampleOrder: which positions a local batch
    covers, which rows of a shard this reader will consume, which shard it needs next.
    """

    def __init__(self, order: SampleOrder, *, batch_size: int, rank: int, world_size: int,
                 drop_last: bool, worker: int, workers: int, first: int) -> None:
        self.order = order
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.local_batches = local_batch_count(order.total, batch_size, rank, world_size,
                                               drop_last)
        self.batches = range(first + worker, self.local_batches, workers)
        self._slot_of_shard = np.argsort(order.shards)
        self._offsets: list[int] = order.offsets.tolist()
        self._shards: list[int] = order.shards.tolist()

    def bounds(self, local: int) -> tuple[int, int]:
        """Epoch positions [start, stop) of this rank's local batch `local`."""
        start = (local * self.world_size + self.rank) * self.batch_size
        return start, min(start + self.batch_size, self.order.total)

    def slot(self, position: int) -> int:
        """Which shard slot of the epoch order holds `position` (skips empty shards)."""
        return bisect.bisect_right(self._offsets, position) - 1

    def runs(self, local: int) -> list[tuple[int, int]]:
        """Local batch `local` as (shard, row count) runs: SampleOrder.locate's runs,
        without the row arrays (a batch is sliced from rows gathered per shard)."""
        start, stop = self.bounds(local)
        runs = []
        while start < stop:
            slot = self.slot(start)
            end = min(stop, self._offsets[slot + 1])
            runs.append((self._shards[slot], end - start))
            start = end
        return runs

    def owned_rows(self, shard: int) -> np.ndarray:
        """The rows of `shard` this reader consumes, in the order it consumes them."""
        slot = int(self._slot_of_shard[shard])
        low, high = int(self.order.offsets[slot]), int(self.order.offsets[slot + 1])
        if high == low:
            return np.zeros(0, dtype=np.int64)
        (_, rows), = self.order.locate(low, high)
        if self.world_size == 1 and self.workers == 1:  # one reader: a contiguous range
            begin = self.batches.start * self.batch_size
            end = min(self.order.total, self.local_batches * self.batch_size)
            return rows[max(begin, low) - low:max(min(end, high), low) - low]
        batch = np.arange(low, high) // self.batch_size
        local = batch // self.world_size
        mine = (batch % self.world_size == self.rank) & (local < self.local_batches) \
            & (local >= self.batches.start) & ((local - self.batches.start) % self.workers == 0)
        return rows[mine]

    def upcoming_shards(self, local: int, count: int) -> list[int]:
        """The next `count` shards, after local batch `local`'s last, that this reader reads.

        Only a shard this worker really reads is worth prefetching: with many workers and
        ranks a small shard can fall entirely between the batches one worker owns.
        """
        last = self.slot(self.bounds(local)[1] - 1)
        found: list[int] = []
        for later in range(local + self.workers, self.local_batches, self.workers):
            start, stop = self.bounds(later)
            final = self.slot(stop - 1)
            for slot in range(max(self.slot(start), last + 1), final + 1):
                if self._offsets[slot + 1] > self._offsets[slot]:
                    found.append(self._shards[slot])
            last = max(last, final)
            if len(found) >= count:
                return found[:count]
        return found

    def slot_end(self, position: int) -> int:
        """Where the shard slot holding `position` ends."""
        return self._offsets[self.slot(position) + 1]


def local_batch_count(total: int, batch_size: int, rank: int, world_size: int,
                      drop_last: bool) -> int:
    """Batches rank `rank` yields in an epoch of `total` rows.

    drop_last gives every rank the same count of full batches, so DDP steps stay equal;
    otherwise the last, partial global batch goes to whichever rank owns it.
    """
    if drop_last:
        return total // (batch_size * world_size)
    global_batches = -(-total // batch_size)
    return len(range(rank, global_batches, world_size))


class _ShardList:
    """Every dataset's shards as one list, read by global index.

    What the stream's single ShardCache reads through (it needs `shard_location` and
    `read_shard` only): one LRU for all datasets keeps memory bounded however many there are.
    """

    def __init__(self, datasets: list[Dataset], shards: list[_Shard]) -> None:
        self.datasets = datasets
        self.shards = shards

    def shard_location(self, index: int) -> Location:
        shard = self.shards[index]
        return self.datasets[shard.dataset].shard_location(shard.index)

    def read_shard(self, index: int, *, verify: bool = False,
                   columns: list[str] | None = None) -> pa.Table:
        shard = self.shards[index]
        return self.datasets[shard.dataset].read_shard(shard.index, verify=verify,
                                                       columns=columns)


class _ReaderShardCache(ShardCache):
    """A ShardCache that keeps, per shard, only the rows its reader will consume, in order.

    One `take` per shard, in the read-ahead thread, gathers them; each batch is then a
    zero-copy slice. Taking per batch instead would concatenate a multi-chunk shard on every
    call (30x slower), and a worker would hold whole shards it reads a fraction of.
    """

    def __init__(self, shards: _ShardList, reader: _Reader, *, schema: pa.Schema,
                 columns: list[str] | None, verify: bool) -> None:
        super().__init__(shards, columns=columns, verify=verify)  # type: ignore[arg-type]
        self.reader = reader
        self.schema = schema

    def _read(self, index: int) -> pa.Table:
        table = super()._read(index)
        if not table.schema.equals(self.schema):
            table = pa.Table.from_arrays(table.columns, schema=self.schema)
        rows = self.reader.owned_rows(index)
        if len(rows) == table.num_rows and (rows[1:] > rows[:-1]).all():
            return table  # every row in storage order: slices of the mapped shard suffice
        return pc.take(table, _indices(rows)).combine_chunks()


class ShardStream(IterableDataset):
    """Batches of one or more committed datasets, in a seeded order shared by all readers.

    Use with `StreamLoader` (or a DataLoader with batch_size=None): it yields whole batches.
    Formats: "arrow" gives a pyarrow.RecordBatch (in the trainer's process a zero-copy view
    of the shard's gathered rows: copy it before keeping many); "numpy" a dict of numpy
    arrays (strings as object arrays); "torch" a dict of tensors for numeric and bool
    columns (a 2-D tensor for equal-length numeric lists, a list of tensors for ragged
    ones), python lists for strings, binary and anything else.
    """

    def __init__(self, datasets: DatasetRef | Sequence[DatasetRef], *, batch_size: int,
                 columns: Sequence[str] | None = None, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, format: StreamFormat = "torch",
                 rank: int | None = None, world_size: int | None = None,
                 verify: bool = True) -> None:
        self.config = StreamConfig(
            batch_size=batch_size, columns=tuple(columns) if columns is not None else None,
            seed=seed, shuffle=shuffle, drop_last=drop_last, format=format, verify=verify)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.datasets = _open_all(datasets)
        self.schema = _common_schema(self.datasets, self.config.columns)
        self.shards = [_Shard(d, i) for d, ds in enumerate(self.datasets)
                       for i in range(len(ds.shards))]
        self.shard_rows = [self.datasets[s.dataset].shards[s.index].rows for s in self.shards]
        self.fingerprint = _fingerprint(self.datasets)
        self.epoch = 0
        self.batches_consumed = 0

    # --- position -------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return sum(self.shard_rows)

    def __len__(self) -> int:
        """Batches this rank yields in a whole epoch (the same for every epoch)."""
        return local_batch_count(self.num_rows, self.config.batch_size, self.rank,
                                 self.world_size, self.config.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at its first batch; the current epoch keeps a resume point.

        So a loop that calls set_epoch(e) after load_state_dict of a mid-epoch state of
        epoch e resumes instead of replaying the epoch.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self.batches_consumed = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the next iteration starts, plus what identifies the data and the layout."""
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed,
                "seed": self.config.seed, "fingerprint": self.fingerprint,
                "batch_size": self.config.batch_size, "world_size": self.world_size,
                "shuffle": self.config.shuffle, "drop_last": self.config.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state`'s position; refuse a state taken on other data or layout."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise StreamStateError(f"not a ShardStream state_dict: missing {missing}")
        if state["fingerprint"] != self.fingerprint:
            raise StreamStateError(
                "this state_dict was taken on other data (shard list fingerprint "
                f"{state['fingerprint'][:12]}..., this stream has {self.fingerprint[:12]}...): "
                "resume with the same datasets, in the same order")
        mine = self.state_dict()
        differs = [f"{key}={state[key]!r} (stream has {mine[key]!r})"
                   for key in ("seed", "batch_size", "world_size", "shuffle", "drop_last")
                   if state[key] != mine[key]]
        if differs:
            raise StreamStateError("this state_dict was taken with another layout: "
                                   + ", ".join(differs) + "; build the stream with the same "
                                   "settings to resume exactly")
        epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
        if epoch < 0 or not 0 <= consumed <= len(self):
            raise StreamStateError(f"state position epoch={epoch}, batches_consumed={consumed} "
                                   f"is outside an epoch of {len(self)} batches")
        self.epoch, self.batches_consumed = epoch, consumed

    # --- iteration ------------------------------------------------------------------------

    def reader(self, epoch: int, *, worker: int = 0, workers: int = 1,
               first: int = 0) -> _Reader:
        order = SampleOrder(self.shard_rows, seed=self.config.seed, epoch=epoch,
                            shuffle=self.config.shuffle)
        return _Reader(order, batch_size=self.config.batch_size, rank=self.rank,
                       world_size=self.world_size, drop_last=self.config.drop_last,
                       worker=worker, workers=workers, first=first)

    def __iter__(self) -> Iterator[Batch]:
        """This worker's share of the rest of the epoch, in the configured format."""
        in_worker = get_worker_info() is not None
        for batch in self.record_batches():
            if in_worker and self.config.format == "arrow":
                batch = _compact(batch)  # a slice would pickle its whole shard
            yield self.format(batch)

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """This worker's batches as Arrow; in the trainer's process, it counts progress.

        In-process batches are zero-copy slices of the rows gathered per shard.
        """
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        reader = self.reader(epoch, worker=worker, workers=workers, first=self.batches_consumed)
        # Made here, in the iterating process: a read-ahead thread does not survive a fork.
        cache = _ReaderShardCache(_ShardList(self.datasets, self.shards), reader,
                                  schema=self.schema, columns=_list(self.config.columns),
                                  verify=self.config.verify)
        cursors: dict[int, int] = {}
        try:
            slot_end = -1
            for local in reader.batches:
                slot_end = self._prefetch(reader, cache, local, slot_end)
                batch = _to_record_batch(self._gather(reader, cache, cursors, local))
                if info is None:
                    self.batches_consumed = local + 1
                yield batch
            if info is None:
                self.epoch, self.batches_consumed = epoch + 1, 0
        finally:
            cache.close()

    @staticmethod
    def _prefetch(reader: _Reader, cache: ShardCache, local: int, slot_end: int) -> int:
        """On entering a new shard, start reading the next shard this worker will need.

        `slot_end` is where the shard entered last ends; the new one's end is returned.
        """
        stop = reader.bounds(local)[1]
        if stop <= slot_end:
            return slot_end
        for shard in reader.upcoming_shards(local, PREFETCH_SHARDS):
            cache.prefetch(shard)
        return reader.slot_end(stop - 1)

    @staticmethod
    def _gather(reader: _Reader, cache: ShardCache, cursors: dict[int, int],
                local: int) -> pa.Table:
        """The rows of one batch: consecutive slices of the shards' gathered rows."""
        parts = []
        for shard, count in reader.runs(local):
            offset = cursors.get(shard, 0)
            parts.append(cache.get(shard).slice(offset, count))
            cursors[shard] = offset + count
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()

    def format(self, batch: pa.RecordBatch) -> Batch:
        """The batch in the configured format (see the class docstring)."""
        return format_batch(batch, self.config.format)


def format_batch(batch: pa.RecordBatch, fmt: StreamFormat) -> Batch:
    """Arrow as is; numpy: a dict of arrays; torch: a dict of tensors (strings stay lists)."""
    if fmt == "arrow":
        return batch
    names = batch.schema.names
    if fmt == "numpy":
        return {name: column.to_numpy(zero_copy_only=False)
                for name, column in zip(names, batch.columns, strict=True)}
    return {name: _to_torch(name, column)
            for name, column in zip(names, batch.columns, strict=True)}


class _WorkerFeed(IterableDataset):
    """What StreamLoader's workers iterate: compact Arrow batches, formatted by the loader.

    Arrow crosses the worker pipe as a few buffers; numpy object arrays or python lists of
    strings would be pickled item by item and rebuilt in the trainer's process anyway.
    """

    def __init__(self, stream: ShardStream) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.stream.record_batches():
            yield _compact(batch)


def _keep_batch(batch: Batch) -> Batch:
    """DataLoader collate that leaves a ready batch alone (default_convert would turn numpy
    arrays into tensors and copy lists of strings)."""
    return batch


class StreamLoader(DataLoader):
    """A DataLoader over a ShardStream that knows exactly how many batches it handed out.

    Workers hold copies of the stream, so the count is kept here, in the trainer's process,
    and written into the stream: `state_dict()` after k batches resumes at batch k. Running
    an epoch to its end moves the state to the start of the next epoch. Workers send Arrow;
    the batch is put in the stream's format here, then given to `collate_fn` if one is set.
    persistent_workers is refused: kept workers would never see set_epoch or a resume point.
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0,
                 **dataloader_kwargs: Any) -> None:
        if dataloader_kwargs.pop("batch_size", None) is not None:
            raise ValueError("StreamLoader batches in the stream: set ShardStream(batch_size=)")
        if dataloader_kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers would keep the stream's epoch and resume point "
                             "frozen in the workers; StreamLoader starts workers per epoch")
        collate = dataloader_kwargs.pop("collate_fn", None) or _keep_batch
        # With workers, collate_fn runs here after formatting, so it always gets the
        # stream's format, never the Arrow that crosses the pipe.
        self._collate_here = collate if num_workers > 0 else None
        source = stream if num_workers == 0 else _WorkerFeed(stream)
        super().__init__(source, batch_size=None, num_workers=num_workers,
                         collate_fn=_keep_batch if num_workers > 0 else collate,
                         **dataloader_kwargs)
        self.stream = stream

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        stream, collate = self.stream, self._collate_here
        pin = collate is not None and self.pin_memory and torch.cuda.is_available()
        epoch, handed = stream.epoch, stream.batches_consumed
        for item in super().__iter__():
            batch = item if collate is None else collate(stream.format(item))
            handed += 1
            stream.epoch, stream.batches_consumed = epoch, handed
            yield _pinned(batch) if pin else batch
        stream.epoch, stream.batches_consumed = epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes effect at the next iter(): an iteration already running is not changed."""
        self.stream.load_state_dict(state)


# --- Hugging Face datasets ------------------------------------------------------------------

def to_hf_dataset(datasets_: DatasetRef | Sequence[DatasetRef]) -> Any:
    """The shards as one memory-mapped `datasets.Dataset` (no copy: from_file per shard)."""
    return _hf_concat(_open_all(datasets_))


def to_hf_iterable(datasets_: DatasetRef | Sequence[DatasetRef], rank: int = 0,
                   world_size: int = 1) -> Any:
    """A `datasets.IterableDataset` over the shards, split by node when world_size > 1."""
    from datasets.distributed import split_dataset_by_node

    opened = _open_all(datasets_)
    dataset = _hf_concat(opened)
    shards = sum(len(ds.shards) for ds in opened)
    iterable = dataset.to_iterable_dataset(num_shards=max(1, min(shards, len(dataset))))
    if world_size > 1:
        return split_dataset_by_node(iterable, rank=rank, world_size=world_size)
    return iterable


def _hf_concat(opened: list[Dataset]) -> Any:
    """Every shard memory-mapped by `datasets`, concatenated in shard-list order."""
    import datasets

    parts = [datasets.Dataset.from_file(_local_shard_path(ds, index))
             for ds in opened for index in range(len(ds.shards))]
    if not parts:
        from datasets.table import InMemoryTable

        return datasets.Dataset(InMemoryTable(opened[0].schema.empty_table()))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# --- helpers ----------------------------------------------------------------------------------

def _open_all(refs: DatasetRef | Sequence[DatasetRef]) -> list[Dataset]:
    """Open every dataset; one path or URI may be passed bare."""
    if isinstance(refs, str | os.PathLike | Location | Dataset):
        refs = [refs]
    refs = list(refs)
    if not refs:
        raise ValueError("no datasets given: pass one or more dataset URIs")
    return [ref if isinstance(ref, Dataset) else Dataset.open(ref) for ref in refs]


def _common_schema(datasets: list[Dataset], columns: tuple[str, ...] | None) -> pa.Schema:
    """The streamed columns, which every dataset must hold with the same types."""
    first = datasets[0].schema
    names = list(columns) if columns is not None else first.names
    for ds in datasets:
        unknown = [name for name in names if name not in ds.schema.names]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown} in {ds.uri}: it has "
                             f"{ds.schema.names}")
        for name in names:
            if ds.schema.field(name).type != first.field(name).type:
                raise SchemaMismatchError(
                    f"column {name!r} is {ds.schema.field(name).type} in {ds.uri} but "
                    f"{first.field(name).type} in {datasets[0].uri}: cannot stream them as one")
    return pa.schema([first.field(name) for name in names])


def _fingerprint(datasets: list[Dataset]) -> str:
    """What the shard list holds, in order, wherever it is stored."""
    digest = hashlib.sha256()
    for ds in datasets:
        digest.update(content_sha256(ds.manifest).encode())
    return digest.hexdigest()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's, when it is initialized."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    return rank, world_size


def _list(columns: tuple[str, ...] | None) -> list[str] | None:
    return list(columns) if columns is not None else None


def _local_shard_path(dataset: Dataset, index: int) -> str:
    location = dataset.shard_location(index)
    if not location.is_local:
        raise ValueError(f"{dataset.uri} is not on the local filesystem: datasets.Dataset."
                         "from_file memory-maps local files only; copy it locally or use "
                         "ShardStream, which reads remote shards")
    return location.path


def _indices(rows: np.ndarray) -> pa.Array:
    """Row indices as Arrow without a copy, and without pa.array's pandas probe, which
    imports pandas (~0.3 s) in every fresh DataLoader worker."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def _compact(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A copy holding just this batch's bytes: pickling a slice pickles its parent buffers."""
    return pa.ipc.read_record_batch(batch.serialize(), batch.schema)


def _pinned(batch: Any) -> Any:
    """Tensors in page-locked memory, as DataLoader(pin_memory=True) gives them."""
    if isinstance(batch, dict):
        return {name: value.pin_memory() if isinstance(value, torch.Tensor) else value
                for name, value in batch.items()}
    return batch


def _to_record_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_arrays([column.combine_chunks() for column in table.columns],
                                      schema=table.schema)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _to_torch(name: str, column: pa.Array) -> torch.Tensor | list[Any]:
    """A tensor for numbers (and lists of numbers), a python list for everything else."""
    kind = column.type
    if _is_number(kind):
        return torch.from_numpy(_numbers(name, column))
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) \
        or pa.types.is_fixed_size_list(kind)
    if is_list and _is_number(kind.value_type) and column.null_count == 0:
        values = torch.from_numpy(_numbers(name, column.flatten()))
        lengths = column.value_lengths().to_numpy()
        if len(lengths) and (lengths == lengths[0]).all():
            return values.reshape(len(lengths), int(lengths[0]))
        return list(torch.split(values, lengths.tolist()))
    return column.to_pylist()


def _numbers(name: str, column: pa.Array) -> np.ndarray:
    """A writable numpy copy (torch warns on read-only arrays); nulls only as float NaN."""
    if column.null_count and not pa.types.is_floating(column.type):
        raise ValueError(f"column {name!r} ({column.type}) has {column.null_count} nulls, "
                         "which a tensor cannot hold: fill them upstream or use "
                         "format='arrow' or 'numpy'")
    return column.to_numpy(zero_copy_only=False, writable=True)
