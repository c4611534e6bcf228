"""ingest: raw JSONL / Parquet / text / fortune files, or named DATA.md sources, into a dataset.

Each record gets two hashes. `id` names the row: a 128-bit BLAKE2b of where it came from
(source, the file's name relative to that source's root, the record number) and its text,
so it is unique within the dataset and the same on every rerun, machine and worker count.
`text_hash` names the content: a 128-bit BLAKE2b of the text alone, so identical texts share
it while keeping their own ids (exact dedup keys on content, every decision keys on `id`).
Records that cannot become rows (broken UTF-8, malformed JSON, no text field, text that is
not a string, empty or oversized text) are rejected with the reason and their raw bytes,
never dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from glob import glob, has_magic
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from gristmill.sources.catalog import list_sources, resolve
from gristmill.stages.base import MapStage, Split, StageConfig, WorkUnit, attach_reasons
from gristmill.stages.raw_formats import RawFormat, Record, guess_format, iter_records
from gristmill.storage.manifest import InputRef, canonical_json

RAW_SCHEMA = pa.schema([
    pa.field("locator", pa.string()),
    pa.field("record_key", pa.string()),
    pa.field("payload", pa.binary()),
    pa.field("payload_kind", pa.string()),
    pa.field("source", pa.string()),
    pa.field("text_field", pa.string()),
    pa.field("file_meta", pa.string()),
])


BASE_COLUMNS = ("id", "text_hash", "text", "source", "meta")


class IngestConfig(StageConfig):
    """Knobs for turning raw records into rows."""

    max_text_bytes: int = Field(default=8 * 1024 * 1024, ge=1,
                                description="Larger texts are rejected as too_large")
    promote_fields: list[str] = Field(
        default_factory=list,
        description="Metadata keys copied into their own string columns (e.g. genre, label)")

    @field_validator("promote_fields")
    @classmethod
    def _distinct_and_free(cls, fields: list[str]) -> list[str]:
        taken = [f for f in fields if f in BASE_COLUMNS]
        if taken or len(set(fields)) != len(fields):
            raise ValueError(f"promote_fields must be distinct and avoid {list(BASE_COLUMNS)}; "
                             f"got {fields}")
        return fields


class RawFile(BaseModel):
    """One raw file to ingest, with how to read it and what to say about its rows."""

    path: str
    name: str = Field(description="The file's path relative to its source's root: with the "
                                  "source it identifies the file on any machine")
    format: RawFormat
    source: str
    text_field: str = "text"
    meta: dict[str, str] = Field(default_factory=dict)
    max_records: int | None = Field(
        default=None, ge=1, description="Read only the first N records (demos, pilot runs)")


class IngestInputError(ValueError):
    """A source argument that names no file, folder, glob or known source."""


def text_hash(text: str) -> str:
    """The content hash: equal for identical texts, whatever their rows."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def row_id(record_key: str, text: str) -> str:
    """The row's identity: its place in the input (source, file name, record number) and its
    text, so two copies of one text stay two rows."""
    return hashlib.blake2b(f"{record_key}\n{text}".encode(), digest_size=16).hexdigest()


def _raw_file_sha256(raw: RawFile) -> str:
    """Pins a raw file: its bytes and how it is read (format, text field, source, metadata)."""
    options = raw.model_dump(exclude={"path"}, exclude_none=True)
    digest = hashlib.sha256(canonical_json(options).encode())
    with open(raw.path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class RawFilesInput:
    """Raw files as stage input: one work unit per file."""

    def __init__(self, files: list[RawFile]) -> None:
        if not files:
            raise IngestInputError("nothing to ingest: no files were found")
        seen: dict[tuple[str, str], str] = {}
        paths: set[str] = set()
        for raw in files:
            if (raw.source, raw.name) in seen or raw.path in paths:
                raise IngestInputError(
                    f"{raw.path} is named more than once (as {raw.name!r} of source "
                    f"{raw.source!r}): name each file once, so no record is ingested twice")
            seen[raw.source, raw.name] = raw.path
            paths.add(raw.path)
        self.files = files
        self._refs: list[InputRef] | None = None

    @classmethod
    def from_args(cls, sources: list[str], *, fmt: RawFormat | None = None,
                  text_field: str = "text", max_records: int | None = None) -> RawFilesInput:
        """Named sources (see `gristmill.sources`), files, folders or globs; `max_records`
        keeps only the first records of each file."""
        files: list[RawFile] = []
        for arg in sources:
            files.extend(f.model_copy(update={"max_records": max_records})
                         for f in _expand(arg, fmt, text_field))
        return cls(files)

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(index=i, uri=f.path) for i, f in enumerate(self.files)]

    def refs(self) -> list[InputRef]:
        """Raw files are pinned by a sha256 of their bytes and reading options (once)."""
        if self._refs is None:
            self._refs = [InputRef(uri=f.path, content_sha256=_raw_file_sha256(f))
                          for f in self.files]
        return self._refs

    def schema(self) -> pa.Schema:
        return RAW_SCHEMA

    def read_unit(self, unit: WorkUnit, batch_rows: int) -> Iterator[pa.Table]:
        raw = self.files[unit.index]
        meta = json.dumps(raw.meta, sort_keys=True)
        rows: list[Record] = []
        records = iter_records(raw.path, raw.format)
        for record in islice(records, raw.max_records):
            rows.append(record)
            if len(rows) >= batch_rows:
                yield _raw_table(rows, raw, meta)
                rows = []
        if rows:
            yield _raw_table(rows, raw, meta)


def _raw_table(rows: list[Record], raw: RawFile, meta: str) -> pa.Table:
    numbers, payloads, kinds = zip(*rows, strict=True)
    count = len(rows)
    return pa.table([
        pa.array([f"{raw.path}:{n}" for n in numbers], pa.string()),
        pa.array([f"{raw.source}\n{raw.name}\n{n}" for n in numbers], pa.string()),
        pa.array(payloads, pa.binary()),
        pa.array(kinds, pa.string()), pa.array([raw.source] * count, pa.string()),
        pa.array([raw.text_field] * count, pa.string()), pa.array([meta] * count, pa.string()),
    ], schema=RAW_SCHEMA)


def _expand(arg: str, fmt: RawFormat | None, text_field: str) -> list[RawFile]:
    if arg in {spec.name for spec in list_sources()}:
        resolved = resolve(arg)
        return [RawFile(path=str(path), name=path.relative_to(resolved.root).as_posix(),
                        format=resolved.spec.format, source=arg,
                        text_field=resolved.spec.text_field,
                        meta=resolved.spec.file_metadata(path))
                for path in resolved.files]
    arg = os.path.normpath(arg)  # "data/", "./data" and "data" are one source
    if os.path.isdir(arg):
        root = arg
        paths = sorted(str(p) for p in Path(arg).rglob("*") if p.is_file())
    elif os.path.isfile(arg):
        root = os.path.dirname(arg)
        paths = [arg]
    else:
        root = _glob_root(arg)
        paths = sorted(p for p in glob(arg, recursive=True) if os.path.isfile(p))
    if not paths:
        raise IngestInputError(f"{arg!r} is not a known source, file, folder or glob "
                               "matching any file")
    return [RawFile(path=os.path.abspath(p), name=Path(os.path.relpath(p, root or ".")).as_posix(),
                    format=fmt or guess_format(p), source=arg, text_field=text_field)
            for p in paths]


def _glob_root(pattern: str) -> str:
    """The folder a glob starts from: its path up to the first part with a wildcard."""
    parts = Path(pattern).parts
    first_magic = next((i for i, part in enumerate(parts) if has_magic(part)), len(parts))
    return str(Path(*parts[:first_magic])) if first_magic else ""


def _decode(payload: bytes, kind: str, text_field: str,
            file_meta: dict[str, Any]) -> tuple[str | None, dict[str, Any], str, str]:
    """(text, metadata, reason, detail); reason is '' when the record is good."""
    try:
        decoded = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, {}, "invalid_utf8", f"byte {payload[err.start]:#04x} at offset {err.start}"
    if kind == "text":
        return decoded, dict(file_meta), "", ""
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as err:
        return None, {}, "malformed_json", str(err)
    if not isinstance(record, dict):
        return None, {}, "malformed_json", f"a JSON {type(record).__name__}, not an object"
    if text_field not in record:
        return None, {}, "missing_text", f"no {text_field!r} field (keys: {sorted(record)})"
    text = record.pop(text_field)
    if not isinstance(text, str):
        return None, {}, "wrong_type", f"{text_field!r} is {type(text).__name__}, not a string"
    return text, {**file_meta, **record}, "", ""


class Ingest(MapStage[IngestConfig]):
    name: ClassVar[str] = "ingest"

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        promoted = [pa.field(name, pa.string()) for name in self.config.promote_fields]
        return pa.schema([*(pa.field(name, pa.string()) for name in BASE_COLUMNS), *promoted])

    def process(self, batch: pa.Table) -> Split:
        columns = {name: batch.column(name).to_pylist() for name in RAW_SCHEMA.names}
        kept: dict[str, list[Any]] = {f.name: [] for f in self.output_schema(RAW_SCHEMA)}
        dropped, reasons, details = [], [], []
        file_metas = {text: json.loads(text) for text in set(columns["file_meta"])}
        for i, payload in enumerate(columns["payload"]):
            file_meta = file_metas[columns["file_meta"][i]]
            text, meta, reason, detail = _decode(payload, columns["payload_kind"][i],
                                                 columns["text_field"][i], file_meta)
            if not reason:
                reason, detail = self._check_text(text)
            if reason:
                dropped.append(i)
                reasons.append(reason)
                details.append(detail)
                continue
            source = columns["source"][i]
            kept["id"].append(row_id(columns["record_key"][i], text))
            kept["text_hash"].append(text_hash(text))
            kept["text"].append(text)
            kept["source"].append(source)
            kept["meta"].append(json.dumps(meta, sort_keys=True, default=str))
            for name in self.config.promote_fields:
                kept[name].append(_as_string(meta.get(name)))
        rejected = attach_reasons(batch.take(pa.array(dropped, pa.int64())), reasons, details,
                                  self.name)
        return Split(pa.table(kept, schema=self.output_schema(RAW_SCHEMA)), rejected)

    def _check_text(self, text: str) -> tuple[str, str]:
        size = len(text.encode("utf-8"))
        if size > self.config.max_text_bytes:
            return "too_large", f"{size} bytes > max_text_bytes {self.config.max_text_bytes}"
        if not text.strip():
            return "empty_text", "text is empty or whitespace only"
        return "", ""


def _as_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)
