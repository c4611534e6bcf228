"""Build or extend a datastore from embedded passage datasets (chunk -> embed outputs).

Three barriers, each parallel over its own unit:
1. train: a seeded sample of `train_size` vectors, drawn across every input shard, trains
   the IVF-PQ quantizers once (skipped for Flat and when extending);
2. partition: every embedded shard is split by `shard_id` into staging files (one task per
   input shard), so no task ever reads the whole corpus;
3. index: one task per datastore shard concatenates its staging files in a fixed order,
   adds the vectors to a copy of the trained index, and writes index + passages.
The manifest is replaced once at the end; staging is deleted after. Tasks run on Ray (any
node that reaches the storage) or on local threads.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import BaseModel

from gristmill.retrieval.datastore import (
    ID,
    MANIFEST,
    DatastoreBuilder,
    DatastoreError,
    DatastoreManifest,
    IndexSpec,
    concat_ids,
    write_shard,
)
from gristmill.storage.fs import Location, remove_tree, resolve
from gristmill.storage.manifest import InputRef, content_sha256
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vectors_of

STAGING = "_staging"
Parallel = Literal["ray", "threads"]
T = TypeVar("T")
R = TypeVar("R")


class BuildReport(BaseModel):
    """What a build did and how long each phase took."""

    uri: str
    added_inputs: list[str]
    skipped_inputs: list[str]
    passages: int
    shards_added: list[int]
    seconds: dict[str, float]
    manifest: DatastoreManifest


def parallel_map(fn: Callable[..., R], items: Sequence[Any], backend: Parallel,
                 workers: int = 2) -> list[R]:
    """fn(*item) for every item, on Ray tasks or a thread pool, results in item order."""
    if not items:
        return []
    if backend == "ray":
        import ray

        remote = ray.remote(fn)
        return ray.get([remote.remote(*item) for item in items])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: fn(*item), items))


def draw_sample(datasets: Sequence[Dataset], vector_column: str, size: int,
                seed: int) -> np.ndarray:
    """A uniform seeded sample of `size` vectors over all rows, read shard by shard."""
    counts = [s.rows for d in datasets for s in d.shards]
    total = sum(counts)
    if total == 0:
        raise DatastoreError("the inputs hold no passages to train the index on; a flat index "
                             "needs no training")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, min(size, total), replace=False))
    parts, offset, shard_no = [], 0, 0
    for dataset in datasets:
        for index in range(len(dataset.shards)):
            rows = counts[shard_no]
            local = chosen[(chosen >= offset) & (chosen < offset + rows)] - offset
            if len(local):
                table = dataset.read_shard(index, columns=[vector_column])
                parts.append(vectors_of(table.column(vector_column).take(pa.array(local))))
            offset += rows
            shard_no += 1
    return np.concatenate(parts)


def new_passage_ids(datasets: Sequence[Dataset]) -> pa.Array:
    """Every passage id of the inputs (the id column only, one shard at a time)."""
    for dataset in datasets:
        if ID not in dataset.schema.names:
            raise DatastoreError(f"input {dataset.uri} has no {ID!r} column: passages need ids")
    return concat_ids([d.read_shard(i, columns=[ID]).column(ID).combine_chunks()
                       for d in datasets for i in range(len(d.shards))])


def partition_unit(dataset_uri: str, index: int, tag: str, staging: str,
                   shard_offset: int) -> dict[int, int]:
    """Split one embedded shard by shard_id into staging files; rows per datastore shard."""
    table = Dataset.open(dataset_uri).read_shard(index)
    out = resolve(staging)
    counts = {}
    shard_ids = table.column("shard_id")
    for value in pc.unique(shard_ids).to_pylist():
        part = table.filter(pc.equal(shard_ids, value))
        target = out.join(f"shard-{value + shard_offset:05d}", f"{tag}-{index:05d}.arrow")
        out.fs.create_dir(posixpath.dirname(target.path), recursive=True)
        with out.fs.open_output_stream(target.path) as sink, \
                pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        counts[value + shard_offset] = part.num_rows
    return counts


def index_shard(root: str, staging: str, shard_id: int, trained: bytes, dim: int,
                vector_column: str, keep_vectors: bool) -> Any:
    """Concatenate one shard's staging files (sorted: a fixed order) and write the shard."""
    folder = resolve(staging).join(f"shard-{shard_id:05d}")
    names = sorted(i.path for i in folder.fs.get_file_info(pafs.FileSelector(folder.path)))
    tables = []
    for name in names:
        with folder.fs.open_input_stream(name) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    table = pa.concat_tables(tables)
    vectors = vectors_of(table.column(vector_column))
    return write_shard(root, shard_id, trained, vectors, table.drop_columns([vector_column]), dim,
                       keep_vectors=keep_vectors)


def build_datastore_from(uri: str, inputs: Sequence[str], spec: IndexSpec, *,
                         embedder: dict[str, Any], vector_column: str = "embedding",
                         backend: Parallel = "threads", workers: int = 2) -> BuildReport:
    """Create the datastore at `uri`, or add the inputs it does not hold yet."""
    location = resolve(uri)
    datasets = [Dataset.open(u) for u in inputs]
    refs = [InputRef(uri=d.uri, content_sha256=content_sha256(d.manifest)) for d in datasets]
    dim = datasets[0].schema.field(vector_column).type.list_size
    if location.join(MANIFEST).exists():
        builder = DatastoreBuilder.extend(location)
    else:
        builder = DatastoreBuilder.create(location, spec, dim, embedder=embedder)
    held = {r.content_sha256 for r in builder.manifest.inputs}
    new = [(d, r) for d, r in zip(datasets, refs, strict=True) if r.content_sha256 not in held]
    if new:
        builder.check_new_ids(new_passage_ids([d for d, _ in new]))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if builder.needs_training:
        sample = draw_sample([d for d, _ in new], vector_column,
                             builder.manifest.index.train_size, builder.manifest.index.seed)
        builder.train(sample)
    seconds["train"] = time.perf_counter() - started

    staging = _staging(location)
    remove_tree(staging)
    offset = builder.next_shard_id()
    units = [(d.uri, i, f"in{n:03d}", staging.uri(), offset)
             for n, (d, _) in enumerate(new) for i in range(len(d.shards))]
    started = time.perf_counter()
    counts: dict[int, int] = {}
    for part in parallel_map(partition_unit, units, backend, workers):
        for shard_id, rows in part.items():
            counts[shard_id] = counts.get(shard_id, 0) + rows
    seconds["partition"] = time.perf_counter() - started

    started = time.perf_counter()
    jobs = [(location.uri(), staging.uri(), s, builder.trained, builder.manifest.dim,
             vector_column, builder.manifest.index.keep_vectors) for s in sorted(counts)]
    entries = parallel_map(index_shard, jobs, backend, workers)
    manifest = builder.commit(entries, [r for _, r in new])
    remove_tree(staging)
    seconds["index"] = time.perf_counter() - started
    return BuildReport(uri=location.uri(), added_inputs=[r.uri for _, r in new],
                       skipped_inputs=[r.uri for r in refs if r.content_sha256 in held],
                       passages=sum(counts.values()), shards_added=sorted(counts),
                       seconds=seconds, manifest=manifest)


def _staging(location: Location) -> Location:
    return location.join(STAGING)
