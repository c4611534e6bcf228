"""Read a committed dataset: by shard, by batch, or whole, with optional checksum checks.

Every failure names the shard and what is wrong with it: a folder without a manifest is
refused, a shard whose size or row count disagrees with the manifest is corrupt, and a
checksum mismatch is reported when verification is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import pyarrow as pa
import pyarrow.fs as pafs

from gristmill.storage.checksum import algorithm_of, file_checksum
from gristmill.storage.errors import ChecksumMismatchError, CorruptShardError
from gristmill.storage.fs import Location, resolve
from gristmill.storage.manifest import (
    Lineage,
    Manifest,
    ShardInfo,
    is_committed,
    load_manifest,
)


class Dataset:
    """A committed gristmill dataset: a folder of Arrow IPC stream shards plus its manifest."""

    def __init__(self, location: Location, manifest: Manifest) -> None:
        self.location = location
        self.manifest = manifest

    @classmethod
    def open(cls, uri: str | Location, *, verify: bool = False) -> Dataset:
        location = resolve(uri)
        dataset = cls(location, load_manifest(location))
        if verify:
            dataset.verify()
        return dataset

    @property
    def uri(self) -> str:
        return self.location.uri()

    @cached_property
    def schema(self) -> pa.Schema:
        return self.manifest.schema

    @property
    def num_rows(self) -> int:
        return self.manifest.total_rows

    @property
    def shards(self) -> list[ShardInfo]:
        return self.manifest.shards

    def shard_location(self, index: int) -> Location:
        return self.location.join(self.shards[index].file)

    def read_shard(self, index: int, *, verify: bool = False,
                   columns: list[str] | None = None) -> pa.Table:
        """Read one whole shard; a truncated or unreadable file raises CorruptShardError."""
        return read_shard_file(self.shard_location(index), self.shards[index], self.schema,
                               verify=verify, columns=columns)

    def iter_shard_batches(self, index: int, *, verify: bool = False,
                           columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        return iter_shard_file(self.shard_location(index), self.shards[index],
                               verify=verify, columns=columns)

    def iter_batches(self, *, verify: bool = False,
                     columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Every record batch of every shard, in manifest order."""
        for index in range(len(self.shards)):
            yield from self.iter_shard_batches(index, verify=verify, columns=columns)

    def to_table(self, *, columns: list[str] | None = None) -> pa.Table:
        schema = self.schema if columns is None else pa.schema(
            [self.schema.field(c) for c in columns])
        return pa.Table.from_batches(list(self.iter_batches(columns=columns)), schema=schema)

    def verify(self) -> None:
        """Check every shard's size and checksum against the manifest."""
        for index, shard in enumerate(self.shards):
            loc = self.shard_location(index)
            _check_size(loc, shard)
            _check_checksum(loc, shard)

    @cached_property
    def rejected(self) -> Dataset | None:
        """The rows the producing stage dropped, with `reject_reason`, if it recorded any."""
        if self.manifest.rejected is None:
            return None
        loc = self.location.join(self.manifest.rejected)
        return Dataset.open(loc) if is_committed(loc) else None

    def lineage_chain(self) -> list[tuple[str, Lineage | None]]:
        """This dataset's lineage, then its first input's, back to the raw sources."""
        chain: list[tuple[str, Lineage | None]] = []
        current: Dataset | None = self
        seen: set[str] = set()
        while current is not None and current.uri not in seen:
            seen.add(current.uri)
            lineage = current.manifest.lineage
            chain.append((current.uri, lineage))
            current = _first_dataset_input(lineage)
        return chain


def _check_size(loc: Location, shard: ShardInfo) -> None:
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise CorruptShardError(f"shard {loc.uri()} is listed in the manifest but missing")
    if info.size != shard.bytes:
        raise CorruptShardError(f"shard {loc.uri()} is {info.size} bytes on disk, the "
                                f"manifest says {shard.bytes} (truncated or overwritten)")


def _check_checksum(loc: Location, shard: ShardInfo) -> None:
    actual = file_checksum(loc, algorithm_of(shard.checksum))
    if actual != shard.checksum:
        raise ChecksumMismatchError(f"shard {loc.uri()} has checksum {actual}, "
                                    f"the manifest says {shard.checksum}")


def iter_shard_file(loc: Location, shard: ShardInfo, *, verify: bool = False,
                    columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The batches of one shard file, checked against its manifest entry as they are read."""
    _check_size(loc, shard)
    if verify:
        _check_checksum(loc, shard)
    rows = 0
    try:
        with _open_stream(loc) as source:
            for batch in pa.ipc.open_stream(source):
                rows += batch.num_rows
                yield batch.select(columns) if columns is not None else batch
    except (pa.ArrowInvalid, OSError) as err:
        raise CorruptShardError(f"shard {loc.uri()} cannot be read: {err}") from err
    if rows != shard.rows:
        raise CorruptShardError(f"shard {loc.uri()} holds {rows} rows, "
                                f"the manifest says {shard.rows}")


def read_shard_file(loc: Location, shard: ShardInfo, schema: pa.Schema, *,
                    verify: bool = False, columns: list[str] | None = None) -> pa.Table:
    batches = list(iter_shard_file(loc, shard, verify=verify, columns=columns))
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return pa.Table.from_batches(batches, schema=schema)


def _open_stream(loc: Location) -> pa.NativeFile:
    if loc.is_local:
        return pa.memory_map(loc.path, "r")
    return loc.fs.open_input_stream(loc.path)


def _first_dataset_input(lineage: Lineage | None) -> Dataset | None:
    if lineage is None:
        return None
    for ref in lineage.inputs:
        loc = resolve(ref.uri)
        if is_committed(loc):
            return Dataset.open(loc)
    return None
