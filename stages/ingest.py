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

`promote_fields` copies metadata keys into columns of their own. A promoted Parquet column
keeps its Parquet type; `column_types` declares a type for any promoted field (JSON values
are converted to it), and a value that does not convert rejects its row as `wrong_type`.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from gristmill.stages.base import MapStage, Split, StageConfig, attach_reasons
from gristmill.stages.raw_inputs import FIELDS, RAW_SCHEMA

BASE_COLUMNS = ("id", "text_hash", "text", "source", "meta")


class IngestConfig(StageConfig):
    """Knobs for turning raw records into rows."""

    max_text_bytes: int = Field(default=8 * 1024 * 1024, ge=1,
                                description="Larger texts are rejected as too_large")
    promote_fields: list[str] = Field(
        default_factory=list,
        description="Metadata keys copied into their own string columns (e.g. genre, label)")

    column_types: dict[str, str] = Field(
        default_factory=dict,
        description="Arrow type of a promoted field (int64, float64, bool, date32, "
                    "timestamp[us], ...); undeclared: the Parquet column's type, else string")

    @field_validator("promote_fields")
    @classmethod
    def _distinct_and_free(cls, fields: list[str]) -> list[str]:
        taken = [f for f in fields if f in BASE_COLUMNS]
        if taken or len(set(fields)) != len(fields):
            raise ValueError(f"promote_fields must be distinct and avoid {list(BASE_COLUMNS)}; "
                             f"got {fields}")
        return fields

    @field_validator("column_types")
    @classmethod
    def _known_types(cls, types: dict[str, str]) -> dict[str, str]:
        for name, alias in types.items():
            try:
                pa.type_for_alias(alias)
            except ValueError as err:
                raise ValueError(f"column_types[{name!r}]: {err}") from err
        return types

    def model_post_init(self, context: Any, /) -> None:
        undeclared = set(self.column_types) - set(self.promote_fields)
        if undeclared:
            raise ValueError(f"column_types names {sorted(undeclared)}, which are not in "
                             f"promote_fields {self.promote_fields}")


def text_hash(text: str) -> str:
    """The content hash: equal for identical texts, whatever their rows."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def row_id(record_key: str, text: str) -> str:
    """The row's identity: its place in the input (source, file name, record number) and its
    text, so two copies of one text stay two rows."""
    return hashlib.blake2b(f"{record_key}\n{text}".encode(), digest_size=16).hexdigest()


def _decode(payload: bytes, kind: str, text_field: str, file_meta: dict[str, Any],
            row: dict[str, Any] | None) -> tuple[str | None, dict[str, Any], str, str]:
    """(text, metadata, reason, detail); reason is '' when the record is good."""
    if kind == "row":
        return _fields(dict(row or {}), text_field, file_meta)
    try:
        decoded = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, {}, "invalid_utf8", f"byte {payload[err.start]:#04x} at offset {err.start}"
    decoded = decoded.removeprefix("\ufeff")
    if kind == "text":
        return decoded, dict(file_meta), "", ""
    try:
        record = json.loads(decoded, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        return None, {}, "malformed_json", str(err)
    except _NonFiniteError as err:
        return None, {}, "malformed_json", f"{err} is not a finite number (JSON has none)"
    except RecursionError:
        return None, {}, "malformed_json", "nested more deeply than the parser allows"
    if not isinstance(record, dict):
        return None, {}, "malformed_json", f"a JSON {type(record).__name__}, not an object"
    return _fields(record, text_field, file_meta)


class _NonFiniteError(ValueError):
    """NaN, Infinity or a number too large for a float: meta could not be written as JSON."""


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFiniteError(literal)
    return value


def _no_constant(name: str) -> float:
    raise _NonFiniteError(name)


def _fields(record: dict[str, Any], text_field: str,
            file_meta: dict[str, Any]) -> tuple[str | None, dict[str, Any], str, str]:
    """The text and the other fields of a JSON object or a Parquet row."""
    if text_field not in record:
        return None, {}, "missing_text", f"no {text_field!r} field (keys: {sorted(record)})"
    text = record.pop(text_field)
    if not isinstance(text, str):
        return None, {}, "wrong_type", f"{text_field!r} is {type(text).__name__}, not a string"
    return text, {**file_meta, **record}, "", ""


class Ingest(MapStage[IngestConfig]):
    name: ClassVar[str] = "ingest"

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        promoted = [pa.field(name, self._promoted_type(name, input_schema))
                    for name in self.config.promote_fields]
        return pa.schema([*(pa.field(name, pa.string()) for name in BASE_COLUMNS), *promoted])

    def _promoted_type(self, name: str, input_schema: pa.Schema) -> pa.DataType:
        if name in self.config.column_types:
            return pa.type_for_alias(self.config.column_types[name])
        if FIELDS in input_schema.names:
            parquet = input_schema.field(FIELDS).type
            if parquet.get_field_index(name) >= 0:
                return parquet.field(name).type
        return pa.string()

    def process(self, batch: pa.Table) -> Split:
        schema = self.output_schema(batch.schema)
        columns = {name: batch.column(name).to_pylist() for name in RAW_SCHEMA.names}
        rows = (batch.column(FIELDS).to_pylist() if FIELDS in batch.column_names
                else [None] * batch.num_rows)
        kept: dict[str, list[Any]] = {name: [] for name in schema.names}
        kept_at: list[int] = []
        rejects: dict[int, tuple[str, str]] = {}
        file_metas = {text: json.loads(text) for text in set(columns["file_meta"])}
        for i, payload in enumerate(columns["payload"]):
            file_meta = file_metas[columns["file_meta"][i]]
            text, meta, reason, detail = _decode(payload, columns["payload_kind"][i],
                                                 columns["text_field"][i], file_meta, rows[i])
            if not reason:
                reason, detail = self._check_text(text)
            if reason:
                rejects[i] = (reason, detail)
                continue
            kept_at.append(i)
            kept["id"].append(row_id(columns["record_key"][i], text))
            kept["text_hash"].append(text_hash(text))
            kept["text"].append(text)
            kept["source"].append(columns["source"][i])
            kept["meta"].append(json.dumps(meta, sort_keys=True, default=str))
            for name in self.config.promote_fields:
                kept[name].append(meta.get(name))
        arrays = {name: pa.array(values, pa.string()) for name, values in kept.items()
                  if name in BASE_COLUMNS}
        for name in self.config.promote_fields:
            arrays[name], bad = _typed(kept[name], schema.field(name).type)
            rejects.update({kept_at[k]: ("wrong_type", f"{name!r}: {detail}")
                            for k, detail in bad.items()})
        good = [k for k, i in enumerate(kept_at) if i not in rejects]
        table = pa.table([arrays[name] for name in schema.names], schema=schema)
        if len(good) < len(kept_at):
            table = table.take(pa.array(good, pa.int64()))
        order = sorted(rejects)
        rejected = attach_reasons(batch.take(pa.array(order, pa.int64())),
                                  [rejects[i][0] for i in order],
                                  [rejects[i][1] for i in order], self.name)
        return Split(table, rejected)

    def _check_text(self, text: str) -> tuple[str, str]:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as err:
            return "invalid_unicode", (f"lone surrogate U+{ord(text[err.start]):04X} at "
                                       f"character {err.start} (a \\u escape of half a pair)")
        if size > self.config.max_text_bytes:
            return "too_large", f"{size} bytes > max_text_bytes {self.config.max_text_bytes}"
        if not text.strip():
            return "empty_text", "text is empty or whitespace only"
        return "", ""


_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError,
                      ValueError, OverflowError)


def _typed(values: list[Any], type_: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    """`values` as an array of `type_`, and the positions whose value does not convert (each
    with why), which are null in the array. A string column takes any value (a non-string
    one as JSON) but a lone surrogate; other types take their own Python values or text
    Arrow can parse (ISO dates and times from JSON)."""
    if pa.types.is_string(type_):
        values = [_as_string(v) for v in values]
    try:
        return _convert(values, type_), {}
    except _CONVERSION_ERRORS:
        pass
    converted: list[Any] = []
    bad: dict[int, str] = {}
    for k, value in enumerate(values):
        try:
            converted.append(_convert([value], type_)[0].as_py())
        except _CONVERSION_ERRORS:
            converted.append(None)
            bad[k] = f"{value!r} is not {type_}"
    return pa.array(converted, type_), bad


def _convert(values: list[Any], type_: pa.DataType) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string()).cast(type_)
    return pa.array(values, type_)


def _as_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)
