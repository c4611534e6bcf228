"""The retrieval datastore on disk: per-shard FAISS indexes beside their passages.

Layout under the datastore root:

    manifest.json                 written last and atomically: its presence = committed
    trained.faiss                 IVF-PQ only: the empty index trained once on a sample
    shards/shard-00003/index.faiss
    shards/shard-00003/passages/  a gristmill dataset; row i is the vector with faiss id i

Every shard starts from the same trained index (coarse quantizer, PQ codebooks, optional
OPQ rotation), so shards are built in parallel and new document shards are added later
without retraining. Scores are inner products, as in MassiveDS.

Index files are checked on load: their size always, their checksum unless the datastore was
opened with verify=False (hashing costs a few percent of reading and deserializing, see
`Datastore.open`). Adding shards checks shard and passage ids before writing anything.
"""

from __future__ import annotations

import io
import posixpath
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from gristmill.config import FrozenModel
from gristmill.storage.checksum import (
    DEFAULT_CHECKSUM,
    algorithm_of,
    format_checksum,
    new_hasher,
)
from gristmill.storage.errors import DatasetError
from gristmill.storage.fs import Location, read_bytes, resolve, write_bytes_atomic
from gristmill.storage.manifest import InputRef
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINED = "trained.faiss"
ID = "id"
SHOWN_IDS = 5
"""How many clashing passage ids an error message lists."""


class DatastoreError(DatasetError):
    """A datastore that is missing, inconsistent, or asked to do what it cannot."""


class IndexSpec(FrozenModel):
    """Which FAISS index each shard holds; IVF-PQ defaults follow MassiveDS's reference."""

    kind: Literal["flat", "ivfpq"] = Field(
        default="flat", description="flat: exact inner product; ivfpq: compressed, approximate")
    nlist: int = Field(default=2048, ge=1, description="IVF coarse centroids")
    pq_m: int = Field(default=16, ge=1, description="PQ sub-quantizers (bytes per vector)")
    pq_bits: int = Field(default=8, ge=1, le=16, description="Bits per sub-quantizer code")
    opq: bool = Field(default=False, description="Learn an OPQ rotation before PQ")
    nprobe: int = Field(default=64, ge=1, description="IVF lists visited per query")
    train_size: int = Field(default=100_000, ge=1, description="Vectors sampled to train")
    keep_vectors: bool = Field(
        default=False, description="Also store each shard's vectors (float16) so search can "
                                   "rerank candidates by their full inner product")
    seed: int = 0

    def factory(self) -> str:
        if self.kind == "flat":
            return "Flat"
        rotation = f"OPQ{self.pq_m}," if self.opq else ""
        return f"{rotation}IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}"

    def bytes_per_vector(self, dim: int) -> int:
        """Stored bytes per vector: codes plus the 8-byte id an IVF list keeps."""
        if self.kind == "flat":
            return 4 * dim
        return (self.pq_m * self.pq_bits + 7) // 8 + 8


class TrainingInfo(BaseModel):
    file: str
    sample_size: int
    seed: int
    checksum: str
    seconds: float


class DatastoreShard(BaseModel):
    shard_id: int
    index_file: str
    passages: str
    vectors_file: str | None = None
    vectors: int
    index_bytes: int
    checksum: str
    added: datetime


class DatastoreManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    dim: int
    metric: Literal["inner_product"] = "inner_product"
    index: IndexSpec
    embedder: dict[str, Any] = Field(default_factory=dict)
    training: TrainingInfo | None = None
    shards: list[DatastoreShard] = Field(default_factory=list)
    inputs: list[InputRef] = Field(
        default_factory=list, description="Embedded datasets already added (incremental builds)")
    created: datetime
    updated: datetime

    @property
    def total_vectors(self) -> int:
        return sum(s.vectors for s in self.shards)

    @property
    def index_bytes(self) -> int:
        return sum(s.index_bytes for s in self.shards)


def _checksum(data: bytes) -> str:
    hasher = new_hasher(DEFAULT_CHECKSUM)
    hasher.update(data)
    return format_checksum(DEFAULT_CHECKSUM, hasher)


def _verify(data: bytes, expected: str, what: str) -> None:
    hasher = new_hasher(algorithm_of(expected))
    hasher.update(data)
    if format_checksum(algorithm_of(expected), hasher) != expected:
        raise DatastoreError(f"{what} does not match its checksum in the manifest "
                             "(corrupt or overwritten)")


def read_index_file(location: Location, what: str, *, size: int | None = None,
                    checksum: str | None = None) -> Any:
    """Read and deserialize one index file, checked before FAISS parses a byte of it.

    A missing, truncated or corrupt file is a DatastoreError naming the file, never a FAISS
    crash: the size is compared first (no read), then the checksum when one is given.
    """
    what = f"{what} {location.uri()}"
    info = location.fs.get_file_info(location.path)
    if info.type == pafs.FileType.NotFound:
        raise DatastoreError(f"{what} is listed in the manifest but missing")
    if size is not None and info.size != size:
        raise DatastoreError(f"{what} is {info.size} bytes on disk, the manifest says {size} "
                             "(truncated or overwritten)")
    data = read_bytes(location)
    if checksum is not None:
        _verify(data, checksum, what)
    try:
        return deserialize(data)
    except RuntimeError as err:
        raise DatastoreError(f"{what} is not a readable FAISS index: {err}") from err


def serialize(index: Any) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> Any:
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def check_vectors(vectors: np.ndarray, dim: int) -> None:
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise DatastoreError(f"vectors have shape {vectors.shape}; the datastore holds {dim}-d")


def as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """C-contiguous float32 (n, dim), the only layout FAISS takes."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    check_vectors(matrix, dim)
    return matrix


def check_shard(shard_id: int, vectors: np.ndarray, passages: pa.Table, dim: int) -> None:
    """One vector per passage, of the datastore's width: checked before anything is written."""
    check_vectors(np.asarray(vectors), dim)
    if len(vectors) != passages.num_rows:
        raise DatastoreError(f"shard {shard_id}: {len(vectors)} vectors for "
                             f"{passages.num_rows} passages")


def train_index(spec: IndexSpec, dim: int, sample: np.ndarray) -> Any:
    """An empty index with its quantizers learned from `sample` (nothing is added)."""
    import faiss

    sample = as_matrix(sample, dim)
    index = faiss.index_factory(dim, spec.factory(), faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "ivfpq":
        need = max(spec.nlist, 2 ** spec.pq_bits)
        if len(sample) < need:
            raise DatastoreError(f"IVF-PQ with nlist={spec.nlist}, {spec.pq_bits}-bit codes "
                                 f"needs at least {need} training vectors, got {len(sample)}")
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = spec.seed
        ivf.pq.cp.seed = spec.seed
        # polysemous codes only serve Hamming pre-filtering, which search never uses, and
        # training them costs minutes even on a few hundred vectors
        ivf.do_polysemous_training = False
        index.train(sample)
    return index


def set_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    if faiss.try_extract_index_ivf(index) is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)


class Datastore:
    """A committed datastore: its manifest, and shards opened on first use."""

    def __init__(self, location: Location, manifest: DatastoreManifest, *,
                 verify: bool = True) -> None:
        self.location = location
        self.manifest = manifest
        self.verify = verify
        self._indexes: dict[int, Any] = {}
        self._passages: dict[int, Dataset] = {}
        self._vectors: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, uri: str | Location, *, verify: bool = True) -> Datastore:
        """The committed datastore at `uri`; its shards load on first use.

        `verify` checks each index file's checksum as it loads (its size is always checked).
        Hashing with xxh3_128 runs at memory speed: a few percent of the read and
        deserialize it guards, so it is on unless asked otherwise.
        """
        location = resolve(uri)
        path = location.join(MANIFEST)
        if not path.exists():
            raise DatastoreError(f"{location.uri()} is not a datastore (no {MANIFEST})")
        manifest = DatastoreManifest.model_validate_json(read_bytes(path))
        return cls(location, manifest, verify=verify)

    @property
    def uri(self) -> str:
        return self.location.uri()

    @property
    def shard_ids(self) -> list[int]:
        return [s.shard_id for s in self.manifest.shards]

    def shard(self, shard_id: int) -> DatastoreShard:
        for entry in self.manifest.shards:
            if entry.shard_id == shard_id:
                return entry
        raise DatastoreError(f"datastore {self.uri} has no shard {shard_id}")

    def index(self, shard_id: int, *, verify: bool | None = None) -> Any:
        """The shard's FAISS index, loaded once, with the manifest's nprobe.

        `verify` (default: as opened) also checks the file's checksum, not only its size.
        """
        if shard_id not in self._indexes:
            entry = self.shard(shard_id)
            check = self.verify if verify is None else verify
            index = read_index_file(self.location.join(entry.index_file),
                                    f"shard {shard_id} index", size=entry.index_bytes,
                                    checksum=entry.checksum if check else None)
            if index.ntotal != entry.vectors or index.d != self.manifest.dim:
                raise DatastoreError(f"shard {shard_id} index holds {index.ntotal} vectors of "
                                     f"{index.d}-d, the manifest says {entry.vectors} of "
                                     f"{self.manifest.dim}-d")
            set_nprobe(index, self.manifest.index.nprobe)
            self._indexes[shard_id] = index
        return self._indexes[shard_id]

    def passages(self, shard_id: int) -> Dataset:
        if shard_id not in self._passages:
            self._passages[shard_id] = Dataset.open(
                self.location.join(self.shard(shard_id).passages))
        return self._passages[shard_id]

    def vectors(self, shard_id: int) -> np.ndarray | None:
        """The shard's stored float16 vectors (memory-mapped when local), if kept."""
        entry = self.shard(shard_id)
        if entry.vectors_file is None:
            return None
        if shard_id not in self._vectors:
            location = self.location.join(entry.vectors_file)
            try:
                vectors = (np.load(location.path, mmap_mode="r") if location.is_local
                           else np.load(io.BytesIO(read_bytes(location))))
            except (OSError, ValueError) as err:
                raise DatastoreError(f"shard {shard_id} vectors {location.uri()} cannot be "
                                     f"read: {err}") from err
            if vectors.shape != (entry.vectors, self.manifest.dim):
                raise DatastoreError(f"shard {shard_id} vectors {location.uri()} have shape "
                                     f"{vectors.shape}, the manifest says "
                                     f"({entry.vectors}, {self.manifest.dim})")
            self._vectors[shard_id] = vectors
        return self._vectors[shard_id]

    def load(self) -> Datastore:
        """Open every shard now (a server does this before taking requests)."""
        for shard_id in self.shard_ids:
            self.index(shard_id)
            self.passages(shard_id)
        return self

    def trained_index(self) -> Any:
        training = self.manifest.training
        if training is None:
            import faiss

            return faiss.index_factory(self.manifest.dim, self.manifest.index.factory(),
                                       faiss.METRIC_INNER_PRODUCT)
        return read_index_file(self.location.join(training.file), "trained index",
                               checksum=training.checksum)


def passage_ids(shard_id: int, passages: pa.Table) -> pa.Array:
    """A shard's passage ids: every passage needs one, since hits are reported by id."""
    if ID not in passages.column_names:
        raise DatastoreError(f"shard {shard_id}: passages have no {ID!r} column")
    ids = passages.column(ID).combine_chunks()
    if ids.null_count:
        raise DatastoreError(f"shard {shard_id}: {ids.null_count} passages have a null id")
    return ids


def concat_ids(parts: Sequence[pa.Array]) -> pa.Array:
    """One array of ids from many, cast to the first one's type (string vs large_string)."""
    if not parts:
        return pa.array([], pa.string())
    first = parts[0].type
    return pa.concat_arrays([p if p.type == first else p.cast(first) for p in parts])


def repeated_ids(ids: pa.Array) -> list[Any]:
    counts = pc.value_counts(ids)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()


def shared_ids(ids: pa.Array, held: pa.Array) -> list[Any]:
    """The ids in `ids` that `held` also has."""
    if held.type != ids.type:
        held = held.cast(ids.type)
    return ids.filter(pc.is_in(ids, value_set=held)).to_pylist()


def listing(ids: list[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS])
    return shown if len(ids) <= SHOWN_IDS else f"{shown}, ... ({len(ids)} in all)"


def shard_folder(shard_id: int) -> str:
    return posixpath.join("shards", f"shard-{shard_id:05d}")


def write_shard(root: str | Location, shard_id: int, trained: bytes, vectors: np.ndarray,
                passages: pa.Table, dim: int, *, keep_vectors: bool = False) -> DatastoreShard:
    """Add one shard's vectors to a copy of the trained index and write index + passages.

    A pure function of its arguments (no manifest change), so shards are written in
    parallel by threads or Ray tasks and then committed together.
    """
    location = resolve(root)
    check_shard(shard_id, vectors, passages, dim)
    matrix = as_matrix(vectors, dim)
    index = deserialize(trained)
    index.add(matrix)
    data = serialize(index)
    folder = shard_folder(shard_id)
    index_file = posixpath.join(folder, "index.faiss")
    passages_dir = posixpath.join(folder, "passages")
    write_table(location.join(passages_dir), passages, overwrite=True)
    write_bytes_atomic(location.join(index_file), data)
    vectors_file = None
    if keep_vectors:
        vectors_file = posixpath.join(folder, "vectors.npy")
        buffer = io.BytesIO()
        np.save(buffer, matrix.astype(np.float16))
        write_bytes_atomic(location.join(vectors_file), buffer.getvalue())
    return DatastoreShard(shard_id=shard_id, index_file=index_file, passages=passages_dir,
                          vectors_file=vectors_file, vectors=len(matrix), index_bytes=len(data),
                          checksum=_checksum(data), added=datetime.now(UTC))


class DatastoreBuilder:
    """Create a datastore (train once) or extend a committed one; commit writes the manifest.

    Typical use: `builder = DatastoreBuilder.create(uri, spec, dim)`, `builder.train(sample)`,
    `builder.add_shards(...)` (or, on other processes, `write_shard(uri, s, builder.trained,
    ...)` for each shard after `builder.check_new_ids(...)` on all their passage ids), then
    `builder.commit(entries)`. `DatastoreBuilder.extend(uri)` reuses the stored training.
    """

    def __init__(self, location: Location, manifest: DatastoreManifest, trained: bytes) -> None:
        self.location = location
        self.manifest = manifest
        self.trained = trained
        self._added: dict[int, pa.Array] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, uri: str | Location, spec: IndexSpec, dim: int, *,
               embedder: dict[str, Any] | None = None) -> DatastoreBuilder:
        import faiss

        location = resolve(uri)
        if location.join(MANIFEST).exists():
            raise DatastoreError(f"{location.uri()} already holds a datastore; use extend()")
        now = datetime.now(UTC)
        manifest = DatastoreManifest(dim=dim, index=spec, embedder=embedder or {},
                                     created=now, updated=now)
        empty = faiss.index_factory(dim, spec.factory(), faiss.METRIC_INNER_PRODUCT)
        return cls(location, manifest, serialize(empty))

    @classmethod
    def extend(cls, uri: str | Location) -> DatastoreBuilder:
        store = Datastore.open(uri)
        return cls(store.location, store.manifest, serialize(store.trained_index()))

    @property
    def needs_training(self) -> bool:
        return self.manifest.index.kind != "flat" and self.manifest.training is None

    def train(self, sample: np.ndarray) -> None:
        """Learn the quantizers once; a no-op for Flat, refused once trained."""
        if not self.needs_training:
            if self.manifest.training is not None:
                raise DatastoreError("this datastore is trained already; shards add without "
                                     "retraining")
            return
        started = time.perf_counter()
        data = serialize(train_index(self.manifest.index, self.manifest.dim, sample))
        seconds = time.perf_counter() - started
        write_bytes_atomic(self.location.join(TRAINED), data)
        self.trained = data
        self.manifest = self.manifest.model_copy(update={"training": TrainingInfo(
            file=TRAINED, sample_size=len(sample), seed=self.manifest.index.seed,
            checksum=_checksum(data), seconds=seconds)})

    def next_shard_id(self) -> int:
        return max((s.shard_id for s in self.manifest.shards), default=-1) + 1

    def add_shard(self, shard_id: int, vectors: np.ndarray,
                  passages: pa.Table) -> DatastoreShard:
        """Write one shard now (single process); commit() still has to list it."""
        return self.add_shards({shard_id: (vectors, passages)})[0]

    def add_shards(self, shards: Mapping[int, tuple[np.ndarray, pa.Table]], *,
                   threads: int = 1) -> list[DatastoreShard]:
        """Write shards now, in `threads` threads; commit() still has to list them.

        Every shard is checked before any file is written: vectors fit the passages, the shard
        id is free (not committed, not added to this builder already), and the passage ids are
        unique and held by no committed or added shard. A refusal leaves the datastore as it
        was, byte for byte. Committed ids are read from the passages' id column (memory-mapped
        when local, so the text is not read).
        """
        from concurrent.futures import ThreadPoolExecutor

        self._check_trained()
        if not shards:
            return []
        ids = {}
        for shard_id, (vectors, passages) in shards.items():
            check_shard(shard_id, vectors, passages, self.manifest.dim)
            ids[shard_id] = passage_ids(shard_id, passages)
        new = self._reserve(ids)
        try:
            self._check_committed(new)
            with ThreadPoolExecutor(max_workers=threads) as pool:
                jobs = [pool.submit(write_shard, self.location, shard_id, self.trained, vectors,
                                    passages, self.manifest.dim,
                                    keep_vectors=self.manifest.index.keep_vectors)
                        for shard_id, (vectors, passages) in shards.items()]
                return [job.result() for job in jobs]
        except BaseException:
            with self._lock:
                for shard_id in ids:
                    self._added.pop(shard_id, None)
            raise

    def check_new_ids(self, ids: pa.Array) -> None:
        """Refuse null passage ids, ids repeated in `ids`, or ids a committed shard holds:
        callers that write shards with `write_shard` check all their new passages with this
        first, since `commit` checks only shard ids."""
        if ids.null_count:
            raise DatastoreError(f"{ids.null_count} new passages have a null id")
        if repeated := repeated_ids(ids):
            raise DatastoreError(f"passage ids repeated among the new inputs: {listing(repeated)}")
        self._check_committed(ids)

    def _reserve(self, ids: dict[int, pa.Array]) -> pa.Array:
        """Claim the shard ids for this builder once they and their passage ids are free;
        returns every new passage id."""
        new = concat_ids(list(ids.values()))
        if repeated := repeated_ids(new):
            raise DatastoreError(f"passage ids repeated among the new shards: {listing(repeated)}")
        with self._lock:
            for shard_id in ids:
                self._check_free(shard_id)
            for shard_id, added in self._added.items():
                if clash := shared_ids(new, added):
                    raise DatastoreError(f"passage ids already in shard {shard_id}, added to "
                                         f"this builder: {listing(clash)}")
            self._added.update(ids)
        return new

    def _check_free(self, shard_id: int) -> None:
        if shard_id < 0:
            raise DatastoreError(f"shard ids start at 0, got {shard_id}")
        if shard_id in self._committed_ids():
            raise DatastoreError(f"shard {shard_id} is already in datastore "
                                 f"{self.location.uri()}; next free id: {self.next_shard_id()}")
        if shard_id in self._added:
            raise DatastoreError(f"shard {shard_id} was already added to this builder")

    def _committed_ids(self) -> set[int]:
        return {s.shard_id for s in self.manifest.shards}

    def _check_committed(self, new: pa.Array) -> None:
        for entry in self.manifest.shards:
            held = Dataset.open(self.location.join(entry.passages))
            if ID not in held.schema.names:
                continue
            if clash := shared_ids(new, held.to_table(columns=[ID]).column(ID).combine_chunks()):
                raise DatastoreError(f"passage ids already in shard {entry.shard_id} of "
                                     f"datastore {self.location.uri()}: {listing(clash)}")

    def commit(self, entries: list[DatastoreShard],
               inputs: Sequence[InputRef] = ()) -> DatastoreManifest:
        """List the new shards in the manifest, replacing it atomically."""
        self._check_trained()
        clash = sorted(self._committed_ids() & {e.shard_id for e in entries})
        if clash or len({e.shard_id for e in entries}) != len(entries):
            raise DatastoreError(f"shard ids already in the datastore or repeated: {clash}")
        shards = sorted([*self.manifest.shards, *entries], key=lambda s: s.shard_id)
        self.manifest = self.manifest.model_copy(
            update={"shards": shards, "inputs": [*self.manifest.inputs, *inputs],
                    "updated": datetime.now(UTC)})
        write_bytes_atomic(self.location.join(MANIFEST),
                           self.manifest.model_dump_json(indent=2).encode())
        with self._lock:
            for entry in entries:
                self._added.pop(entry.shard_id, None)
        return self.manifest

    def _check_trained(self) -> None:
        if self.needs_training:
            raise DatastoreError("train the IVF-PQ quantizers on a sample before adding shards")


def build_from_arrays(uri: str | Location, spec: IndexSpec,
                      shards: dict[int, tuple[np.ndarray, pa.Table]], *,
                      sample: np.ndarray | None = None, embedder: dict[str, Any] | None = None,
                      threads: int = 2) -> DatastoreManifest:
    """Build (or extend) a datastore from in-memory shards, writing shards in threads.

    `sample` trains IVF-PQ; without it a seeded draw of `spec.train_size` vectors from all
    shards is used. An existing datastore at `uri` is extended without retraining. Every
    shard is checked before any is written (see `DatastoreBuilder.add_shards`).
    """
    location = resolve(uri)
    if location.join(MANIFEST).exists():
        builder = DatastoreBuilder.extend(location)
    elif not shards:
        raise DatastoreError(f"no shards to build {location.uri()} from: the vector width of "
                             "a new datastore comes from its shards")
    else:
        dim = next(iter(shards.values()))[0].shape[1]
        builder = DatastoreBuilder.create(location, spec, dim, embedder=embedder)
    if builder.needs_training:
        # training writes trained.faiss, so a refusal must come first; a new datastore holds
        # no shards, so this reads nothing (add_shards checks again, against the added ones)
        for shard_id, (vectors, passages) in shards.items():
            check_shard(shard_id, vectors, passages, builder.manifest.dim)
        builder.check_new_ids(concat_ids([passage_ids(s, p) for s, (_, p) in shards.items()]))
        if sample is None:
            everything = np.concatenate([v for v, _ in shards.values()])
            rng = np.random.default_rng(spec.seed)
            take = rng.choice(len(everything), min(spec.train_size, len(everything)),
                              replace=False)
            sample = everything[np.sort(take)]
        builder.train(sample)
    return builder.commit(builder.add_shards(shards, threads=threads))
