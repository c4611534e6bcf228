"""Resolve a dataset URI to a pyarrow filesystem, and write small files atomically.

Local paths and anything pyarrow.fs understands (s3://, gs://, hdfs://) go through
pyarrow directly; any other scheme that fsspec knows (memory://, az://, ...) is wrapped
with pyarrow's FSSpecHandler, so the rest of storage sees one API.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path on it: what every storage function takes."""

    fs: pafs.FileSystem
    path: str

    def join(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def uri(self) -> str:
        """The string a user would pass to reach this location again."""
        if self.is_local:
            return self.path
        handler = getattr(self.fs, "handler", None)
        if isinstance(handler, pafs.FSSpecHandler):
            return handler.fs.unstrip_protocol(self.path)
        return f"{self.fs.type_name}://{self.path}"


def resolve(uri: str | os.PathLike[str] | Location) -> Location:
    """Turn a path or URI into a Location."""
    if isinstance(uri, Location):
        return uri
    text = os.fspath(uri)
    if "://" not in text:
        return Location(pafs.LocalFileSystem(), os.path.abspath(text))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, TypeError):
        import fsspec

        fsspec_fs, path = fsspec.core.url_to_fs(text)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
    return Location(fs, path)


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a file so readers see either the old content or all of the new.

    Local: temp file, fsync, rename. Elsewhere: temp file, then the filesystem's move
    (a rename where it has one; on object stores a copy whose final put is atomic).
    """
    parent = posixpath.dirname(loc.path)
    loc.fs.create_dir(parent, recursive=True)
    if loc.is_local:
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, loc.path)
        _fsync_dir(parent)
        return
    tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
    with loc.fs.open_output_stream(tmp) as out:
        out.write(data)
    loc.fs.move(tmp, loc.path)


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as stream:
        return stream.read()


def remove_tree(loc: Location) -> None:
    if loc.exists():
        loc.fs.delete_dir(loc.path)


def remove_file(loc: Location) -> None:
    if loc.exists():
        loc.fs.delete_file(loc.path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
