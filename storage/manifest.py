"""The manifest: the one file whose presence means a dataset is committed.

It lists every shard with its row count, size and checksum, the Arrow schema, and the
lineage that produced the data (stage, full config, inputs by manifest hash, code version).

A stage's output has parts (its rejected rows, kept links of a chain) in sub-folders. Their
manifests are embedded in the output's own, so one atomic write commits the output and every
part together: a run killed mid-commit leaves the old output whole or the new one whole,
never old kept rows beside new rejects. Each part folder also gets a copy of its manifest, so
it opens as a dataset on its own; the embedded one wins when the two disagree.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field, ValidationError

from gristmill.storage.errors import NotADatasetError, UnreadableManifestError
from gristmill.storage.fs import Location, read_bytes, write_bytes_atomic

FORMAT_VERSION = 2
"""2: parts embedded in their output's manifest."""
MANIFEST_NAME = "manifest.json"
REJECTED_DIR = "rejected"
PROGRESS_DIR = "_progress"


class ShardInfo(BaseModel):
    """One Arrow IPC stream file of the dataset, relative to the dataset folder."""

    file: str
    rows: int
    bytes: int
    checksum: str = Field(description='"<algorithm>:<hex digest>", e.g. "xxh3_128:9f..."')


class InputRef(BaseModel):
    """A dataset or raw file a stage read, pinned by a hash of what it holds.

    For a dataset: its schema and shard checksums (`content_sha256`), so recomputing the
    same data elsewhere or at another time does not invalidate what was built on it. For a
    raw file: its bytes plus how it was read (format, text field, source name).
    """

    uri: str
    content_sha256: str


class Lineage(BaseModel):
    """How this dataset came to be: enough to rebuild it or to decide it can be reused."""

    stage: str
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str = ""
    inputs: list[InputRef] = Field(default_factory=list)
    code_version: str = ""
    cache_key: str = ""
    input_digest: str = Field(
        default="", description="xxh3_128 over what each unit read (its records' bytes, or "
                                "its shards' checksums), in unit order: what the workers saw")
    flow_run_id: str | None = None
    started: datetime | None = None
    finished: datetime | None = None


class StageStats(BaseModel):
    """Counters a stage run reports; rows_in == rows_out + rows_rejected for filtering stages."""

    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    reject_reasons: dict[str, int] = Field(default_factory=dict)
    units_total: int = 0
    units_reused: int = Field(default=0, description="Units finished by an interrupted run")
    units_per_worker: dict[str, int] = Field(
        default_factory=dict, description="Units each worker (host:pid) ran, so a run shows "
                                          "how widely its work was spread")
    units_per_node: dict[str, int] = Field(
        default_factory=dict, description="Units each Ray node ran (a cluster run's spread)")
    tokens: int = Field(default=0, description="Tokens generated or embedded (model stages)")
    seconds: float = Field(default=0.0, description="Worker seconds summed over units")
    gpu_seconds: float = Field(default=0.0, description="GPU worker seconds summed over units")


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    arrow_schema: str = Field(description="base64 of the Arrow IPC-serialized schema")
    columns: list[dict[str, str]] = Field(description="name/type pairs, for people")
    shards: list[ShardInfo] = Field(default_factory=list)
    total_rows: int = 0
    total_bytes: int = 0
    rejected: str | None = Field(default=None, description="sub-folder of rejected rows")
    parts: dict[str, Manifest] = Field(
        default_factory=dict, description="manifests of the sub-folder datasets committed "
                                          "with this one, by folder name")
    lineage: Lineage | None = None
    stats: StageStats | None = None
    summary: dict[str, Any] = Field(
        default_factory=dict, description="What a global step found, for reports")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def build(
        cls,
        schema: pa.Schema,
        shards: list[ShardInfo],
        *,
        rejected: str | None = None,
        lineage: Lineage | None = None,
        stats: StageStats | None = None,
        summary: dict[str, Any] | None = None,
        parts: dict[str, Manifest] | None = None,
    ) -> Manifest:
        return cls(
            arrow_schema=encode_schema(schema),
            columns=[{"name": f.name, "type": str(f.type)} for f in schema],
            shards=shards,
            total_rows=sum(s.rows for s in shards),
            total_bytes=sum(s.bytes for s in shards),
            rejected=rejected,
            lineage=lineage,
            stats=stats,
            summary=summary or {},
            parts=parts or {},
        )

    @property
    def schema(self) -> pa.Schema:
        return decode_schema(self.arrow_schema)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def manifest_location(dataset: Location) -> Location:
    return dataset.join(MANIFEST_NAME)


def is_committed(dataset: Location) -> bool:
    return manifest_location(dataset).exists() or _embedded_part(dataset) is not None


def load_manifest(dataset: Location) -> Manifest:
    """Read a committed manifest, refusing folders that were never committed. A part of a
    committed output is read from the output's manifest, where it was committed."""
    embedded = _embedded_part(dataset)
    if embedded is not None:
        return embedded
    loc = manifest_location(dataset)
    if not loc.exists():
        raise NotADatasetError(
            f"{dataset.uri()} has no {MANIFEST_NAME}: it is not a committed gristmill dataset "
            "(the run that wrote it did not finish, or the path is wrong)"
        )
    return _read_manifest(loc)


def _embedded_part(dataset: Location) -> Manifest | None:
    """The manifest the dataset one folder up embeds for this folder, if it embeds one."""
    parent_path, name = posixpath.split(dataset.path.rstrip("/"))
    if not name or not parent_path:
        return None
    parent = manifest_location(Location(dataset.fs, parent_path))
    if not parent.exists():
        return None
    return _read_manifest(parent).parts.get(name)


def _read_manifest(loc: Location) -> Manifest:
    try:
        manifest = Manifest.model_validate_json(read_bytes(loc))
    except ValidationError as err:
        raise UnreadableManifestError(
            f"{loc.uri()} is not a gristmill manifest this version can read "
            f"(damaged, or written by another format version): {err.errors()[0]['msg']} "
            f"at {'.'.join(str(p) for p in err.errors()[0]['loc'])}") from err
    if manifest.format_version > FORMAT_VERSION:
        raise UnreadableManifestError(
            f"{loc.uri()} has format version {manifest.format_version}; this gristmill reads "
            f"up to {FORMAT_VERSION}: upgrade gristmill")
    return manifest


def content_sha256(manifest: Manifest) -> str:
    """What a dataset holds (schema and shard checksums), not when or by whom it was made."""
    payload = canonical_json({"schema": manifest.arrow_schema,
                              "shards": [(s.rows, s.checksum) for s in manifest.shards]})
    return hashlib.sha256(payload.encode()).hexdigest()


def commit_manifest(dataset: Location, manifest: Manifest) -> None:
    """Write the manifest last and atomically: before this call the dataset does not exist.
    Its parts are committed by the same write; their folders' copies follow."""
    write_bytes_atomic(manifest_location(dataset), manifest.to_bytes())
    restore_part_copies(dataset, manifest)


def restore_part_copies(dataset: Location, manifest: Manifest) -> list[str]:
    """Write each part folder's copy of its manifest where it differs from the embedded one
    (a kill after the commit can leave the last run's copy); the folders rewritten."""
    restored = []
    for folder, part in manifest.parts.items():
        loc = manifest_location(dataset.join(folder))
        data = part.to_bytes()
        if not loc.exists() or read_bytes(loc) != data:
            write_bytes_atomic(loc, data)
            restored.append(folder)
    return restored


def canonical_json(value: Any) -> str:
    """A stable serialisation for hashing configs: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
