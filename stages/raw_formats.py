"""Split raw files into records without interpreting them: bytes in, (number, payload) out.

Decoding, parsing and validation happen in the ingest stage, so a broken record becomes a
rejected row with a reason instead of an exception while reading.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

RawFormat = Literal["jsonl", "parquet", "text", "fortune"]
PayloadKind = Literal["json", "text"]

EXTENSION_FORMATS: dict[str, RawFormat] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".txt": "text", ".md": "text",
}


class UnknownFormatError(ValueError):
    """A file whose format cannot be told from its name and was not given."""


def guess_format(path: str) -> RawFormat:
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSION_FORMATS:
        raise UnknownFormatError(f"cannot tell the format of {path}: name one of "
                                 f"jsonl, parquet, text, fortune (known endings: "
                                 f"{sorted(EXTENSION_FORMATS)})")
    return EXTENSION_FORMATS[suffix]


Record = tuple[int, bytes, PayloadKind]
"""(record number within its file, payload bytes, payload kind). The number is the line for
JSONL, the row for Parquet, the record for fortune files and 1 for a text file: with the
file's name it says where a row came from, and it is part of the row's id."""


def iter_records(path: str, fmt: RawFormat) -> Iterator[Record]:
    """Yield every record of one raw file."""
    if fmt == "jsonl":
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.rstrip(b"\r\n"), "json"
    elif fmt == "text":
        yield 1, Path(path).read_bytes(), "text"
    elif fmt == "fortune":
        yield from _fortune_records(path)
    elif fmt == "parquet":
        yield from _parquet_records(path)
    else:
        raise UnknownFormatError(f"unknown raw format {fmt!r}")


def _fortune_records(path: str) -> Iterator[Record]:
    """Fortune files separate records by a line holding only '%'."""
    record: list[bytes] = []
    number = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.rstrip(b"\r\n") == b"%":
                if record:
                    number += 1
                    yield number, b"".join(record).rstrip(b"\r\n"), "text"
                record = []
            else:
                record.append(line)
    if b"".join(record).strip():
        yield number + 1, b"".join(record).rstrip(b"\r\n"), "text"


def _parquet_records(path: str) -> Iterator[Record]:
    """Each Parquet row becomes a JSON object, so it is validated like a JSONL line."""
    row_number = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in pa.Table.from_batches([batch]).to_pylist():
            row_number += 1
            yield row_number, json.dumps(row, default=str).encode(), "json"
