"""Model identity by content, and config payloads that carry it instead of model paths.

An output depends on the weights a stage loaded, not on where they sat: a checksum of the
model's files (xxh3_128 over sorted relative paths, sizes and bytes) goes into cache keys in
place of the path, so the same weights copied elsewhere are reused and new weights at the
same path are recomputed. Reading a large model every run would cost seconds, so each
checksum is kept on disk per model path with every file's (size, mtime_ns), and in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash
from pydantic import BaseModel

from gristmill.inference.config import ModelPath, PinnedPath
from gristmill.inference.models import embedded_embedder, embedded_llm, model_path
from gristmill.sources.cache import cache_dir
from gristmill.storage.fs import resolve, write_bytes_atomic

IDENTITY_DIR = "model_identity"
CHUNK_BYTES = 8 * 1024 * 1024
SETTLE_SECONDS = 2.0
"""A file changed this recently may change again within one mtime tick: never cached."""

Signature = tuple[tuple[str, int, int], ...]
"""(relative path, size, mtime_ns) of every file, sorted: what a cached checksum is valid for."""

_MEMO: dict[tuple[str, Signature], str] = {}


def _skipped(name: str) -> bool:
    """Hidden entries (.git, .cache, .gitattributes) and bytecode: no loader reads them."""
    return name.startswith(".") or name == "__pycache__"


def _model_files(root: Path) -> Iterator[tuple[str, Path]]:
    if root.is_file():
        yield "", root  # a single file is its content alone: a renamed copy is the same model
        return
    if not root.is_dir():
        raise FileNotFoundError(f"model path {str(root)!r} does not exist")
    for folder, dirs, names in os.walk(root, followlinks=True):  # HF caches link to blobs
        dirs[:] = [d for d in dirs if not _skipped(d)]
        for name in names:
            if not _skipped(name):
                path = Path(folder, name)
                yield path.relative_to(root).as_posix(), path


def _signature(root: Path) -> tuple[Signature, dict[str, Path]]:
    files = dict(_model_files(root))
    stats = {rel: path.stat() for rel, path in files.items()}
    return tuple(sorted((rel, s.st_size, s.st_mtime_ns) for rel, s in stats.items())), files


def _checksum(signature: Signature, files: dict[str, Path]) -> str:
    digest = xxhash.xxh3_128()
    for rel, size, _ in signature:
        digest.update(rel.encode() + b"\0" + size.to_bytes(8, "little"))
        with files[rel].open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    return f"xxh3_128:{digest.hexdigest()}"


def _settled(signature: Signature) -> bool:
    newest = max((mtime for _, _, mtime in signature), default=0)
    return newest < time.time_ns() - SETTLE_SECONDS * 1e9


def identity_cache_file(root: Path) -> Path:
    """One small JSON file per model path, under the gristmill cache ($GRISTMILL_CACHE)."""
    name = hashlib.sha256(str(root).encode()).hexdigest()[:32]
    return cache_dir() / IDENTITY_DIR / f"{name}.json"


def _load_cached(root: Path, signature: Signature) -> str | None:
    try:
        entry = json.loads(identity_cache_file(root).read_text())
        files = tuple(tuple(f) for f in entry["files"])
        return entry["identity"] if entry["path"] == str(root) and files == signature else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(root: Path, signature: Signature, identity: str) -> None:
    """Written atomically, so a concurrent reader sees the old entry or the new one; a cache
    that cannot be written only costs a reread next time."""
    entry = json.dumps({"path": str(root), "files": signature, "identity": identity})
    with contextlib.suppress(OSError):
        write_bytes_atomic(resolve(str(identity_cache_file(root))), entry.encode())


def model_identity(path: str | Path) -> str:
    """The content checksum of a model file or folder; FileNotFoundError if it is missing."""
    root = Path(path).expanduser().resolve()
    signature, files = _signature(root)
    if (identity := _MEMO.get((str(root), signature))) is not None:
        return identity
    cached = _load_cached(root, signature)
    identity = cached or _checksum(signature, files)
    if _settled(signature):
        if cached is None:
            _store(root, signature, identity)
        _MEMO[str(root), signature] = identity
    return identity


def model_location(value: str | None, marker: ModelPath, file_name: str | None) -> Path | None:
    """The file or folder a marked field's value loads (as the loaders resolve it); None when
    it names no model."""
    if value is not None:
        base = model_path(value)
    elif marker.embedded == "llm":
        source = embedded_llm()
        base = source.folder if file_name else source.path
    elif marker.embedded == "embedder":
        base = embedded_embedder()
    else:
        return None
    return base / file_name if file_name and base.is_dir() else base


def _identity_entry(value: str | None, marker: ModelPath,
                    file_name: str | None) -> dict[str, Any] | None:
    """{"model_identity": checksum}; a missing model keys as such and fails when it loads."""
    try:
        location = model_location(value, marker, file_name)
        return None if location is None else {"model_identity": model_identity(location)}
    except FileNotFoundError:
        return {"model_missing": value if value is not None else f"embedded {marker.embedded}",
                "file": file_name}


def _marker(model: BaseModel, name: str) -> ModelPath | PinnedPath | None:
    field = type(model).model_fields[name]
    return next((m for m in field.metadata if isinstance(m, ModelPath | PinnedPath)), None)


def _replace_models(model: BaseModel, dump: dict[str, Any]) -> dict[str, Any]:
    for name in type(model).model_fields:
        if name not in dump:
            continue
        value = getattr(model, name)
        marker = _marker(model, name)
        if isinstance(marker, PinnedPath):
            dump.pop(name)  # its checksum field stays in the payload
            continue
        if marker is None:
            dump[name] = _walk(value, dump[name])
            continue
        file_name = getattr(model, marker.file_field) if marker.file_field else None
        dump[name] = _identity_entry(value, marker, file_name)
        if marker.file_field:
            dump.pop(marker.file_field, None)  # the identity already says which file
    return dump


def _walk(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return _replace_models(value, dumped)
    if isinstance(value, list | tuple):
        return [_walk(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, dict):
        return {k: _walk(v, d) for v, (k, d) in zip(value.values(), dumped.items(), strict=True)}
    return dumped


def identity_payload(config: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    """The config's JSON dump for hashing: every `ModelPath` field, however deeply nested,
    becomes its model's content identity and every `PinnedPath` is left out, so no path
    enters a cache key."""
    return _replace_models(config, config.model_dump(mode="json", exclude=exclude))
