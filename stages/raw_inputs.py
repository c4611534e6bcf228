"""Raw files as stage input: find them, pin them, and cut them into units of work.

A source argument is a named DATA.md source, a local file, folder or glob, or a URI (`s3://`,
`gs://`, `http(s)://`, ...) to a file, a prefix or a glob. Each file is pinned by its size
and modification time (or ETag) and how it is read, never by reading its bytes on the
driver; the worker checksums what it reads, and the runner keeps that in the lineage.

Units: a JSONL file larger than `unit_bytes` becomes byte ranges of that size (each unit
reads the lines that start inside its range), a Parquet file runs of row groups of about
that size; compressed, text and fortune files, and files read for their first
`max_records`, are one unit each. Resume is per unit, as for any stage.

Parquet rows keep their types: when any input is Parquet, the raw rows gain a `fields`
struct column typed as the Parquet files' schemas unified (read from their footers on the
driver), which holds each Parquet row as it was stored (null for the other files' records).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from glob import glob, has_magic
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from gristmill.sources.catalog import list_sources, resolve
from gristmill.stages.base import Digest, WorkUnit
from gristmill.stages.raw_formats import (
    Compression,
    Part,
    RawFormat,
    Record,
    compression_of,
    guess_format,
    iter_records,
    parquet_batches,
    parquet_footer,
)
from gristmill.storage.fs import Location
from gristmill.storage.fs import resolve as resolve_uri
from gristmill.storage.manifest import InputRef, canonical_json

DEFAULT_UNIT_BYTES = 128 * 1024 * 1024
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
"""A batch of records ends at the first stage's batch_rows or at this many payload bytes,
whichever comes first: a worker's memory then follows this figure, not how long the
documents of a unit happen to be."""

RAW_SCHEMA = pa.schema([
    pa.field("locator", pa.string()),
    pa.field("record_key", pa.string()),
    pa.field("payload", pa.binary()),
    pa.field("payload_kind", pa.string()),
    pa.field("source", pa.string()),
    pa.field("text_field", pa.string()),
    pa.field("file_meta", pa.string()),
])
FIELDS = "fields"
"""The raw rows' column that holds Parquet rows typed (see the module doc)."""


class IngestInputError(ValueError):
    """A source argument that names no file, folder, glob or known source."""


class RawFile(BaseModel):
    """One raw file to ingest, with how to read it and what to say about its rows."""

    path: str = Field(description="A local path or a URI")
    name: str = Field(description="The file's path relative to its source's root: with the "
                                  "source it identifies the file on any machine")
    format: RawFormat
    compression: Compression | None = None
    source: str
    text_field: str = "text"
    meta: dict[str, str] = Field(default_factory=dict)
    max_records: int | None = Field(
        default=None, ge=1, description="Read only the first N records (demos, pilot runs)")
    size: int = Field(default=0, ge=0, description="Bytes, as listed")
    version: str = Field(default="", description="Modification time (ns) or ETag, as listed")


def _identity(raw: RawFile, unit_bytes: int) -> str:
    """Pins a raw file without reading it: size, version, how it is read and cut."""
    options = raw.model_dump(exclude={"path"}, exclude_none=True)
    payload = canonical_json({**options, "unit_bytes": unit_bytes})
    return hashlib.sha256(payload.encode()).hexdigest()


class RawFilesInput:
    """Raw files as stage input: one or more work units per file (see the module doc)."""

    def __init__(self, files: list[RawFile], *, unit_bytes: int = DEFAULT_UNIT_BYTES,
                 batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        if not files:
            raise IngestInputError("nothing to ingest: no files were found")
        if unit_bytes < 1 or batch_bytes < 1:
            raise IngestInputError(f"unit_bytes and batch_bytes must be positive, got "
                                   f"{unit_bytes} and {batch_bytes}")
        seen: set[tuple[str, str]] = set()
        paths: set[str] = set()
        for raw in files:
            if (raw.source, raw.name) in seen or raw.path in paths:
                raise IngestInputError(
                    f"{raw.path} is named more than once (as {raw.name!r} of source "
                    f"{raw.source!r}): name each file once, so no record is ingested twice")
            seen.add((raw.source, raw.name))
            paths.add(raw.path)
        self.files = files
        self.unit_bytes = unit_bytes
        self.batch_bytes = batch_bytes
        self._parts: list[tuple[int, Part | None]] | None = None
        self._schema: pa.Schema | None = None
        self._footers: dict[str, pq.FileMetaData] = {}

    @classmethod
    def from_args(cls, sources: list[str], *, fmt: RawFormat | None = None,
                  text_field: str = "text", max_records: int | None = None,
                  unit_bytes: int = DEFAULT_UNIT_BYTES,
                  batch_bytes: int = DEFAULT_BATCH_BYTES) -> RawFilesInput:
        """Named sources (see `gristmill.sources`), files, folders, globs or URIs;
        `max_records` keeps only the first records of each file."""
        files: list[RawFile] = []
        for arg in sources:
            files.extend(f.model_copy(update={"max_records": max_records})
                         for f in _expand(arg, fmt, text_field))
        return cls(files, unit_bytes=unit_bytes, batch_bytes=batch_bytes)

    def _file_parts(self) -> list[tuple[int, Part | None]]:
        """(file index, part) of every unit, in file order."""
        if self._parts is None:
            self._parts = [(i, part) for i, raw in enumerate(self.files)
                           for part in self._split(raw)]
        return self._parts

    def __getstate__(self) -> dict[str, Any]:
        """Workers get the units and the schema, not the footers they were made from."""
        return {**self.__dict__, "_footers": {}}

    def _footer(self, raw: RawFile) -> pq.FileMetaData:
        """A Parquet file's footer, read once on the driver for its units and its schema; a
        file that is not Parquet, or is cut short, is a clear error naming it."""
        if raw.path not in self._footers:
            try:
                self._footers[raw.path] = parquet_footer(resolve_uri(raw.path))
            except (pa.ArrowInvalid, OSError) as err:
                raise IngestInputError(f"{raw.path}: not a readable Parquet file ({err})") \
                    from err
        return self._footers[raw.path]

    def _split(self, raw: RawFile) -> list[Part | None]:
        """The parts one file is read in (None: the whole file)."""
        unit_bytes = self.unit_bytes
        whole = raw.size <= unit_bytes or raw.compression is not None or raw.max_records
        if whole or raw.format in ("text", "fortune"):
            return [None]
        if raw.format == "jsonl":
            return [(start, min(start + unit_bytes, raw.size))
                    for start in range(0, raw.size, unit_bytes)]
        parts: list[Part | None] = []
        start, held = 0, 0
        footer = self._footer(raw)
        for group in range(footer.num_row_groups):
            held += footer.row_group(group).total_byte_size
            if held >= unit_bytes or group == footer.num_row_groups - 1:
                parts.append((start, group + 1))
                start, held = group + 1, 0
        return parts or [None]

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(index=i, uri=self.files[f].path, part=part)
                for i, (f, part) in enumerate(self._file_parts())]

    def refs(self) -> list[InputRef]:
        return [InputRef(uri=f.path, content_sha256=_identity(f, self.unit_bytes))
                for f in self.files]

    def schema(self) -> pa.Schema:
        if self._schema is None:
            self._schema = _raw_schema([self._footer(f).schema.to_arrow_schema()
                                        for f in self.files if f.format == "parquet"])
        return self._schema

    def read_unit(self, unit: WorkUnit, batch_rows: int,
                  digest: Digest | None = None) -> Iterator[pa.Table]:
        file_index, part = self._file_parts()[unit.index]
        raw = self.files[file_index]
        meta = json.dumps(raw.meta, sort_keys=True)
        fields = self.schema().field(FIELDS).type if FIELDS in self.schema().names else None
        if raw.format == "parquet":
            yield from _parquet_tables(raw, part, batch_rows, digest, meta, fields)
            return
        rows: list[Record] = []
        held = 0
        records = iter_records(resolve_uri(raw.path), raw.format, raw.compression, part, digest)
        for record in islice(records, raw.max_records):
            rows.append(record)
            held += len(record[1])
            if len(rows) >= batch_rows or held >= self.batch_bytes:
                yield _raw_table(rows, raw, meta, fields)
                rows, held = [], 0
        if rows:
            yield _raw_table(rows, raw, meta, fields)


def _raw_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """RAW_SCHEMA, plus the `fields` struct when some inputs are Parquet (their schemas)."""
    if not schemas:
        return RAW_SCHEMA
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise IngestInputError(f"the Parquet inputs' columns have types that do not agree "
                               f"({err}): ingest them in separate runs") from err
    nullable = [pa.field(f.name, f.type) for f in unified]
    return RAW_SCHEMA.append(pa.field(FIELDS, pa.struct(nullable)))


def _parquet_tables(raw: RawFile, part: Part | None, batch_rows: int, digest: Digest | None,
                    meta: str, fields: pa.StructType) -> Iterator[pa.Table]:
    """A Parquet part as raw rows: the row number is the key, the row itself goes typed
    into `fields` (its columns cast to the unified types, absent ones null)."""
    left = raw.max_records
    for first_row, batch in parquet_batches(resolve_uri(raw.path), part, batch_rows, digest):
        if left is not None:
            batch = batch.slice(0, left)
            left -= batch.num_rows
        count = batch.num_rows
        children = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names
                    else pa.nulls(count, f.type) for f in fields]
        rows = [(key, b"", "row") for key in range(first_row, first_row + count)]
        table = _raw_table(rows, raw, meta, None)
        yield table.append_column(FIELDS, pa.StructArray.from_arrays(children, fields=list(fields)))
        if left == 0:
            return


def _raw_table(rows: list[Record], raw: RawFile, meta: str,
               fields: pa.StructType | None) -> pa.Table:
    """Records as raw rows; with `fields` (some inputs are Parquet), a null one for each."""
    keys, payloads, kinds = zip(*rows, strict=True)
    count = len(rows)
    table = pa.table([
        pa.array([f"{raw.path}:{k}" for k in keys], pa.string()),
        pa.array([f"{raw.source}\n{raw.name}\n{k}" for k in keys], pa.string()),
        pa.array(payloads, pa.binary()),
        pa.array(kinds, pa.string()), pa.array([raw.source] * count, pa.string()),
        pa.array([raw.text_field] * count, pa.string()), pa.array([meta] * count, pa.string()),
    ], schema=RAW_SCHEMA)
    if fields is None:
        return table
    return table.append_column(FIELDS, pa.nulls(count, fields))


def _expand(arg: str, fmt: RawFormat | None, text_field: str) -> list[RawFile]:
    if arg in {spec.name for spec in list_sources()}:
        resolved = resolve(arg)
        return [_raw_file(str(path), path.relative_to(resolved.root).as_posix(), arg,
                          resolved.spec.format, resolved.spec.text_field,
                          resolved.spec.file_metadata(path))
                for path in resolved.files]
    listed = _list_uri(arg) if "://" in arg else _list_local(arg)
    return [_raw_file(path, name, source, fmt, text_field) for path, name, source in listed]


def _raw_file(path: str, name: str, source: str, fmt: RawFormat | None, text_field: str,
              meta: dict[str, str] | None = None) -> RawFile:
    loc = resolve_uri(path)
    info = loc.fs.get_file_info(loc.path)
    format_ = fmt or guess_format(path)
    if format_ == "parquet" and compression_of(path):
        raise IngestInputError(f"{path}: Parquet compresses inside the file; a compressed "
                               "Parquet file cannot be read (decompress it first)")
    return RawFile(path=path if "://" in path else os.path.abspath(path), name=name,
                   format=format_, compression=compression_of(path),
                   source=source, text_field=text_field, meta=meta or {}, size=info.size or 0,
                   version=_version(loc, info))


def _version(loc: Location, info: pafs.FileInfo) -> str:
    """What changes when the file does: its modification time, else its ETag; a file that
    offers neither gets a fresh token, so it is read again rather than trusted."""
    if info.mtime_ns is not None:
        return f"mtime:{info.mtime_ns}"
    handler = getattr(loc.fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        details: dict[str, Any] = handler.fs.info(loc.path)
        for key, value in details.items():
            if key.lower() in ("etag", "last-modified", "last_modified") and value:
                return f"{key.lower()}:{value}"
    return f"unversioned:{uuid.uuid4().hex}"


def _list_local(arg: str) -> list[tuple[str, str, str]]:
    """(path, name relative to the source root, source) for a local file, folder or glob."""
    arg = os.path.normpath(arg)  # "data/", "./data" and "data" are one source
    if os.path.islink(arg) and not os.path.exists(arg):
        raise IngestInputError(f"{arg!r} is a symbolic link that leads nowhere (broken, or "
                               "a loop)")
    if os.path.isdir(arg):
        root = arg
        found = list(Path(arg).rglob("*"))
        dangling = sorted(str(p) for p in found if p.is_symlink() and not p.exists())
        if dangling:
            raise IngestInputError(f"{arg!r} holds symbolic links that lead nowhere (broken, "
                                   f"or loops): {dangling[:5]}; remove them or name the "
                                   "files to read")
        paths = sorted(str(p) for p in found if p.is_file())
    elif os.path.isfile(arg):
        root = os.path.dirname(arg)
        paths = [arg]
    else:
        root = _glob_root(arg)
        paths = sorted(p for p in glob(arg, recursive=True) if os.path.isfile(p))
    if not paths:
        raise IngestInputError(f"{arg!r} is not a known source, file, folder or glob "
                               "matching any file")
    return [(p, Path(os.path.relpath(p, root or ".")).as_posix(), arg) for p in paths]


def _list_uri(arg: str) -> list[tuple[str, str, str]]:
    """The same for a URI: one object, every object under a prefix, or a glob's matches."""
    source = arg.rstrip("/")
    scheme = source.split("://", 1)[0]
    pattern = _glob_regex(source.split("://", 1)[1]) if has_magic(source) else None
    base = resolve_uri(_glob_root_uri(source) if pattern else source)
    info = base.fs.get_file_info(base.path)
    if info.type == pafs.FileType.File and pattern is None:
        root, found = PurePosixPath(base.path).parent.as_posix(), [base.path]
    elif info.type == pafs.FileType.Directory:
        root = base.path
        listed = base.fs.get_file_info(pafs.FileSelector(base.path, recursive=True))
        found = sorted(i.path for i in listed if i.type == pafs.FileType.File
                       and (pattern is None or pattern.fullmatch(i.path)))
    else:
        found = []
    if not found:
        raise IngestInputError(f"{arg!r} names no object, prefix or glob matching any file")
    return [(f"{scheme}://{path}", PurePosixPath(path).relative_to(root).as_posix(), source)
            for path in found]


def _glob_root(pattern: str) -> str:
    """The folder a glob starts from: its path up to the first part with a wildcard."""
    parts = Path(pattern).parts
    first_magic = next((i for i, part in enumerate(parts) if has_magic(part)), len(parts))
    return str(Path(*parts[:first_magic])) if first_magic else ""


def _glob_root_uri(uri: str) -> str:
    scheme, path = uri.split("://", 1)
    parts = path.split("/")
    first_magic = next(i for i, part in enumerate(parts) if has_magic(part))
    return f"{scheme}://{'/'.join(parts[:first_magic])}"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over object paths: `**` spans folders, `*` and `?` do not."""
    out = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token == "**/":
            out.append("(?:.*/)?")
        elif token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))
