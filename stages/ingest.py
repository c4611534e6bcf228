"""ingest: raw JSONL / Parquet / text / fortune files, or named DATA.md sources, into a dataset.

Files are found, pinned and cut into units by stages/raw_inputs.py (local, s3://, gs://,
http(s)://, compressed by suffix). Each record gets two hashes. `id` names the row: a 128-bit
BLAKE2b of where it came from (source, the file's name relative to that source's root, where
the record starts: a JSONL line's byte offset, a Parquet row's number) and its text,
so it is unique within the dataset and the same on every rerun, machine, worker count and unit size.
`text_hash` names the content: a 128-bit BLAKE2b of the text alone, so identical texts share
it while keeping their own ids (exact dedup keys on content, every decision keys on `id`).
Records that cannot become rows (broken UTF-8, malformed JSON, no text field, text that is
not a string, empty or oversized text) are rejected with the reason and their raw bytes,
never dropped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from gristmill.stages.base import MapStage, Split, StageConfig, attach_reasons
from gristmill.stages.raw_inputs import RAW_SCHEMA

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


def text_hash(text: str) -> str:
    """The content hash: equal for identical texts, whatever their rows."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def row_id(record_key: str, text: str) -> str:
    """The row's identity: its place in the input (source, file name, record number) and its
    text, so two copies of one text stay two rows."""
    return hashlib.blake2b(f"{record_key}\n{text}".encode(), digest_size=16).hexdigest()


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
        """A UTF-8 character takes at most 4 bytes: only a text that could be too large is
        encoded to measure it."""
        if len(text) * 4 > self.config.max_text_bytes:
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
