"""Write tables as bounded Arrow IPC stream shards and commit them with a manifest.

`ShardSetWriter` is the one place bytes reach a shard file: it rolls to a new shard at
`max_rows` (hard) or `max_bytes` (a table is split so a shard stays under it, except a
single row larger than the limit), checksumming every byte as it is written so no second
read is needed. `DatasetWriter` pairs a kept and a rejected shard set and commits both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from gristmill.storage.checksum import (
    DEFAULT_CHECKSUM,
    ChecksumAlgorithm,
    format_checksum,
    new_hasher,
)
from gristmill.storage.errors import DatasetExistsError, SchemaMismatchError
from gristmill.storage.fs import Location, remove_file, remove_tree, resolve
from gristmill.storage.manifest import (
    MANIFEST_NAME,
    PROGRESS_DIR,
    REJECTED_DIR,
    Lineage,
    Manifest,
    ShardInfo,
    StageStats,
    commit_manifest,
    is_committed,
    manifest_location,
)

DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SHARD_SUFFIX = ".arrow"
_SHARD_NAME = re.compile(r"part(-[0-9a-f]{12})?(-\d{5})+\.arrow")
_TEMP_NAME = re.compile(r".+\.tmp-[0-9a-f]{32}")


class _HashingSink:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, raw: pa.NativeFile, algorithm: str) -> None:
        self._raw = raw
        self.digest = new_hasher(algorithm)
        self.size = 0
        self.closed = False

    def write(self, data: bytes | memoryview | pa.Buffer) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self._raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self.closed = True


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` in `schema`'s column order and types, or say which columns differ."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise SchemaMismatchError(f"columns differ from the dataset schema: missing {missing}, "
                                  f"unexpected {extra}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise SchemaMismatchError(f"column {field.name!r}: cannot cast {column.type} to "
                                      f"{field.type}: {err}") from err
    return pa.Table.from_arrays(columns, schema=schema)


_END_OF_STREAM_BYTES = 8


def _ipc_size(table: pa.Table) -> int:
    """Bytes the table's record batches take in an IPC stream, metadata and padding included."""
    return sum(pa.ipc.get_record_batch_size(batch) for batch in table.to_batches())


def _fit_chunk(table: pa.Table, offset: int, room_rows: int,
               room_bytes: int) -> tuple[pa.Table, int]:
    """The longest slice from `offset` within both budgets (at least one row), and its size."""
    rows = min(room_rows, table.num_rows - offset)
    chunk = table.slice(offset, rows)
    size = _ipc_size(chunk)
    while rows > 1 and size > room_bytes:
        rows = max(1, min(rows - 1, rows * room_bytes // max(1, size)))
        chunk = table.slice(offset, rows)
        size = _ipc_size(chunk)
    return chunk, size


class ShardSetWriter:
    """Writes a stream of tables into shards named `<prefix>-00000.arrow`, `-00001`, ..."""

    def __init__(
        self,
        folder: Location,
        schema: pa.Schema,
        *,
        prefix: str = "part",
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        checksum: ChecksumAlgorithm = DEFAULT_CHECKSUM,
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("max_rows and max_bytes must be positive")
        self.folder = folder
        self.schema = schema
        self.prefix = prefix
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.checksum = checksum
        new_hasher(checksum)
        self.shards: list[ShardInfo] = []
        self._sink: _HashingSink | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._rows = 0
        self._name = ""
        self._files_made: list[str] = []
        self._schema_bytes = schema.serialize().size
        folder.fs.create_dir(folder.path, recursive=True)

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = conform(table, self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open_next()
            used = max(self._sink.size, self._schema_bytes) + _END_OF_STREAM_BYTES
            room_bytes = max(0, self.max_bytes - used)
            chunk, size = _fit_chunk(table, offset, self.max_rows - self._rows, room_bytes)
            if size > room_bytes and self._rows:
                self._close_current()
                continue
            self._writer.write_table(chunk)
            self._rows += chunk.num_rows
            offset += chunk.num_rows
            if self._rows >= self.max_rows or self._sink.size >= self.max_bytes:
                self._close_current()

    def close(self) -> list[ShardInfo]:
        """Finish the open shard and return every shard written, in order."""
        self._close_current()
        return list(self.shards)

    def abort(self) -> None:
        """Delete every file this writer made: used when the caller fails before commit."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None
        for name in self._files_made:
            remove_file(self.folder.join(name))
        self._files_made = []
        self.shards = []

    def _open_next(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):05d}{SHARD_SUFFIX}"
        self._files_made.append(self._name)
        raw = self.folder.fs.open_output_stream(self.folder.join(self._name).path)
        self._sink = _HashingSink(raw, self.checksum)
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._rows = 0

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        self.shards.append(ShardInfo(
            file=self._name, rows=self._rows, bytes=self._sink.size,
            checksum=format_checksum(self.checksum, self._sink.digest),
        ))
        self._writer = None
        self._sink = None


def _is_gristmill_folder(out: Location, *, need_marker: bool = True) -> bool:
    """True for a folder a gristmill writer made (or an empty one): safe to clear.

    It must hold a manifest or a run's progress folder, and nothing but shards named like
    ours, temp files of atomic writes, rejected/ (and a chain's rejected-*/, kept-*/)
    folders of the same kind, and committed datasets of its own (a global step's parts,
    such as a partition's).
    """
    entries = out.fs.get_file_info(pafs.FileSelector(out.path))
    names = {entry.base_name for entry in entries}
    if entries and need_marker and not names & {MANIFEST_NAME, PROGRESS_DIR}:
        return False
    for entry in entries:
        name = entry.base_name
        if name in (MANIFEST_NAME, PROGRESS_DIR) or _SHARD_NAME.fullmatch(name) \
                or _TEMP_NAME.fullmatch(name):
            continue
        if _is_sub_dataset_name(name) and _is_gristmill_folder(out.join(name),
                                                                need_marker=False):
            continue
        if entry.type == pafs.FileType.Directory and _holds_datasets(out.join(name)):
            continue
        return False
    return True


def _is_sub_dataset_name(name: str) -> bool:
    """rejected/, and a chain's rejected-<stage>/ and kept-<stage>/ (stages/chain.py)."""
    return name == REJECTED_DIR or name.startswith(("rejected-", "kept-"))


def _holds_datasets(folder: Location) -> bool:
    """A committed dataset of ours, or a folder of nothing but such (a part named a/b)."""
    if is_committed(folder):
        return _is_gristmill_folder(folder)
    entries = folder.fs.get_file_info(pafs.FileSelector(folder.path))
    return bool(entries) and all(entry.type == pafs.FileType.Directory
                                 and _holds_datasets(folder.join(entry.base_name))
                                 for entry in entries)


def remove_unlisted_shards(folder: Location, listed: set[str]) -> None:
    """Delete shard files no record lists (left by a killed unit or a retried task), and
    the temp files of atomic writes a kill interrupted (a half-written manifest, say)."""
    if not folder.exists():
        return
    for info in folder.fs.get_file_info(pafs.FileSelector(folder.path)):
        name = info.base_name
        if (_SHARD_NAME.fullmatch(name) and name not in listed) or _TEMP_NAME.fullmatch(name):
            remove_file(folder.join(name))


def prepare_output(out: Location, *, overwrite: bool) -> None:
    """Make `out` ready for a new dataset: refuse or clear a committed one.

    A folder holding anything a gristmill writer would not have made is never cleared.
    """
    if out.exists() and not _is_gristmill_folder(out):
        raise DatasetExistsError(f"{out.uri()} exists and holds files that are not a gristmill "
                                 "dataset; choose an empty or new output folder")
    if is_committed(out):
        if not overwrite:
            raise DatasetExistsError(f"{out.uri()} already holds a committed dataset; "
                                     "pass overwrite=True to replace it")
        remove_file(manifest_location(out))
    remove_tree(out)
    out.fs.create_dir(out.path, recursive=True)


def commit_dataset(
    out: Location,
    schema: pa.Schema,
    shards: Iterable[ShardInfo],
    *,
    rejected: tuple[pa.Schema, Iterable[ShardInfo]] | None = None,
    parts: dict[str, Manifest] | None = None,
    lineage: Lineage | None = None,
    stats: StageStats | None = None,
    summary: dict[str, Any] | None = None,
) -> Manifest:
    """Commit a dataset and its parts (the rejected rows, other sub-folder datasets) in one
    atomic manifest write."""
    parts = dict(parts or {})
    if rejected is not None:
        rejected_schema, rejected_shards = rejected
        parts[REJECTED_DIR] = Manifest.build(rejected_schema, list(rejected_shards),
                                             lineage=lineage)
    manifest = Manifest.build(
        schema, list(shards), rejected=REJECTED_DIR if rejected is not None else None,
        lineage=lineage, stats=stats, summary=summary, parts=parts,
    )
    commit_manifest(out, manifest)
    return manifest


class DatasetWriter:
    """Single-process writer for one dataset and, optionally, its rejected rows.

    Use as a context manager: leaving the block without `commit()` (or with an exception)
    deletes what was written, so a failed write never leaves a half dataset behind.
    """

    def __init__(
        self,
        uri: str | Location,
        schema: pa.Schema,
        *,
        rejected_schema: pa.Schema | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        checksum: ChecksumAlgorithm = DEFAULT_CHECKSUM,
        overwrite: bool = False,
    ) -> None:
        self.out = resolve(uri)
        prepare_output(self.out, overwrite=overwrite)
        bounds = {"max_rows": max_rows, "max_bytes": max_bytes, "checksum": checksum}
        self.kept = ShardSetWriter(self.out, schema, **bounds)
        self.rejected = None
        if rejected_schema is not None:
            self.rejected = ShardSetWriter(self.out.join(REJECTED_DIR), rejected_schema, **bounds)
        self.adopted: list[ShardInfo] = []
        self.manifest: Manifest | None = None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        self.kept.write(table)

    def adopt(self, shards: Iterable[ShardInfo]) -> None:
        """Shards other processes wrote into this dataset's folder (with its schema and a
        name of their own), listed after this writer's at the commit."""
        self.adopted.extend(shards)

    def write_rejected(self, table: pa.Table | pa.RecordBatch) -> None:
        if self.rejected is None:
            raise ValueError("this writer was opened without a rejected_schema")
        self.rejected.write(table)

    def commit(self, *, lineage: Lineage | None = None, stats: StageStats | None = None,
               summary: dict[str, Any] | None = None) -> Manifest:
        rejected = None
        if self.rejected is not None:
            rejected = (self.rejected.schema, self.rejected.close())
        self.manifest = commit_dataset(self.out, self.kept.schema,
                                       [*self.kept.close(), *self.adopted],
                                       rejected=rejected, lineage=lineage, stats=stats,
                                       summary=summary)
        return self.manifest

    def abort(self) -> None:
        self.kept.abort()
        for shard in self.adopted:
            remove_file(self.out.join(shard.file))
        if self.rejected is not None:
            self.rejected.abort()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.manifest is None:
            self.abort()


def write_table(uri: str | Location, table: pa.Table, *, lineage: Lineage | None = None,
                **writer_options: int | bool | str) -> Manifest:
    """Write one in-memory table as a committed dataset (tests, small fixtures, benchmarks)."""
    with DatasetWriter(uri, table.schema, **writer_options) as writer:
        writer.write(table)
        return writer.commit(lineage=lineage)
