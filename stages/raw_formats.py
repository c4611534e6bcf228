"""Split raw files into records without interpreting them: bytes in, (key, payload) out.

Files are read through pyarrow's filesystems (local paths, s3://, gs://, and anything
fsspec knows, such as http://), decompressed by suffix (gzip, zstd, bz2, xz). A work unit
may be a part of a file: a byte range of a JSONL file, cut at line ends, or a run of
Parquet row groups, so one large file keeps every worker busy. Decoding, parsing and
validation happen in the ingest stage, so a broken record becomes a rejected row with a
reason instead of an exception while reading. Parquet rows are not records of bytes: they
are read as typed Arrow batches (`parquet_batches`), so their columns keep their types.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.stages.base import Digest
from gristmill.storage.fs import Location

RawFormat = Literal["jsonl", "parquet", "text", "fortune"]
PayloadKind = Literal["json", "text", "row"]
"""json: a JSON object; text: the text itself; row: a Parquet row, held typed beside it."""
Compression = Literal["gzip", "zstd", "bz2", "xz"]

EXTENSION_FORMATS: dict[str, RawFormat] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".txt": "text", ".md": "text",
}
COMPRESSION_SUFFIXES: dict[str, Compression] = {
    ".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz",
}
READ_BLOCK = 4 * 1024 * 1024

Part = tuple[int, int]
"""[start, end) of a file: bytes for JSONL, row groups for Parquet."""


class UnknownFormatError(ValueError):
    """A file whose format cannot be told from its name and was not given."""


def compression_of(path: str) -> Compression | None:
    return COMPRESSION_SUFFIXES.get(PurePosixPath(path).suffix.lower())


def guess_format(path: str) -> RawFormat:
    """The format from the file's ending, under any compression suffix (`a.jsonl.gz`)."""
    name = PurePosixPath(path)
    if compression_of(path):
        name = name.with_suffix("")
    suffix = name.suffix.lower()
    if suffix not in EXTENSION_FORMATS:
        raise UnknownFormatError(f"cannot tell the format of {path}: name one of "
                                 f"jsonl, parquet, text, fortune (known endings: "
                                 f"{sorted(EXTENSION_FORMATS)}, optionally followed by "
                                 f"{sorted(COMPRESSION_SUFFIXES)})")
    return EXTENSION_FORMATS[suffix]


Record = tuple[int, bytes, PayloadKind]
"""(record key within its file, payload bytes, payload kind). The key is where the record
starts: the byte offset of the line for JSONL (in the decompressed stream), the record
number for fortune files and 1 for a text file (a Parquet row's is its number). With the file's name
it says where a row came from, and it is part of the row's id, so it must not depend on how
the file was cut into units."""


@contextmanager
def open_stream(loc: Location, compression: Compression | None):
    """A sequential byte stream of the file, decompressed."""
    with loc.fs.open_input_stream(loc.path, compression=None) as raw:
        if compression is None:
            yield raw
        elif compression == "xz":
            with lzma.open(raw) as stream:
                yield stream
        else:
            with pa.CompressedInputStream(raw, compression) as stream:
                yield stream


def iter_records(loc: Location, fmt: RawFormat, compression: Compression | None = None,
                 part: Part | None = None, digest: Digest | None = None) -> Iterator[Record]:
    """Yield every record of one raw file (not Parquet: see `parquet_batches`), or of one
    `part` of it; `digest` is updated with the bytes of every record read, so a unit's
    content is checksummed as it is read."""
    for record in _records(loc, fmt, compression, part):
        if digest is not None:
            digest.update(record[1])
            digest.update(b"\n")
        yield record


def _records(loc: Location, fmt: RawFormat, compression: Compression | None,
             part: Part | None) -> Iterator[Record]:
    if fmt == "jsonl":
        yield from _jsonl_records(loc, compression, part)
    elif fmt == "parquet":
        raise ValueError("Parquet rows are read as typed batches: use parquet_batches")
    elif part is not None:
        raise ValueError(f"a {fmt} file is read whole; it cannot be split into parts")
    elif fmt == "text":
        with open_stream(loc, compression) as stream:
            yield 1, stream.read(), "text"
    elif fmt == "fortune":
        with open_stream(loc, compression) as stream:
            yield from _fortune_records(stream)
    else:
        raise UnknownFormatError(f"unknown raw format {fmt!r}")


def lines(stream, offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) for every line from the stream's position, which
    is byte `offset` of the file. Reads in large blocks; a long line costs one join."""
    parts: list[bytes] = []
    while block := stream.read(READ_BLOCK):
        if b"\n" not in block:
            parts.append(block)
            continue
        pieces = block.split(b"\n")
        if parts:
            pieces[0] = b"".join([*parts, pieces[0]])
            parts = []
        tail = pieces.pop()
        for line in pieces:
            yield offset, line
            offset += len(line) + 1
        if tail:
            parts.append(tail)
    if parts:
        yield offset, b"".join(parts)


def _jsonl_records(loc: Location, compression: Compression | None,
                   part: Part | None) -> Iterator[Record]:
    """Lines that start inside the part: a part not at the file's start skips the line that
    holds its first byte's predecessor (the unit before owns it), and reads past its end to
    finish its last line."""
    if part is None or compression is not None:
        if part is not None:
            raise ValueError("a compressed file cannot be read by parts")
        with open_stream(loc, compression) as stream:
            yield from _json_lines(lines(stream, 0), None)
        return
    start, end = part
    with loc.fs.open_input_file(loc.path) as handle:
        if start == 0:
            yield from _json_lines(lines(handle, 0), end)
            return
        handle.seek(start - 1)
        found = lines(handle, start - 1)
        next(found, None)
        yield from _json_lines(found, end)


def _json_lines(found: Iterator[tuple[int, bytes]], end: int | None) -> Iterator[Record]:
    for offset, line in found:
        if end is not None and offset >= end:
            return
        if line.strip():
            yield offset, line.rstrip(b"\r"), "json"


def _fortune_records(stream) -> Iterator[Record]:
    """Fortune files separate records by a line holding only '%'."""
    record: list[bytes] = []
    number = 0
    for _, line in lines(stream, 0):
        if line.rstrip(b"\r") == b"%":
            if record:
                number += 1
                yield number, b"\n".join(record).rstrip(b"\r\n"), "text"
            record = []
        else:
            record.append(line)
    if b"".join(record).strip():
        yield number + 1, b"\n".join(record).rstrip(b"\r\n"), "text"


def parquet_footer(loc: Location) -> pq.FileMetaData:
    """The file's footer: its schema and row groups, without reading any row."""
    with loc.fs.open_input_file(loc.path) as handle:
        return pq.ParquetFile(handle).metadata


def parquet_batches(loc: Location, part: Part | None, batch_rows: int,
                    digest: Digest | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(number of the batch's first row, batch) over one part's row groups. Rows are
    numbered from 1 across the whole file, whichever row groups this part holds; `digest`
    takes each batch's Arrow IPC bytes."""
    with loc.fs.open_input_file(loc.path) as handle:
        parquet = pq.ParquetFile(handle)
        groups = range(*part) if part is not None else range(parquet.num_row_groups)
        first_row = 1 + sum(parquet.metadata.row_group(g).num_rows
                            for g in range(groups.start))
        if not groups:
            return
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=list(groups)):
            if digest is not None:
                digest.update(batch.serialize())
            yield first_row, batch
            first_row += batch.num_rows
