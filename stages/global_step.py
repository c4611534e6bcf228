"""The global-step contract: one class shape for every barrier.

A map stage sees one unit at a time; a global step (k-means centroids, dedup decisions,
quantile cuts, a partition, a mixture) needs the whole of its inputs. It is still a small
class: a pydantic config, `output_schema(inputs)`, and `run(inputs, sink)`, which reads the
committed input datasets, writes its one output dataset through `sink`, and returns a small
JSON summary for reports. `run_global_step` does the rest, the way the runner does for map
stages: the cache key (step, config with models by content, input contents, code, storage
settings), reuse of an output committed under that key, lineage, progress, stats, and an
atomic commit with the summary inside the manifest (so a summary never outlives its rows).

A later stage's config carries the output as a `DatasetRef` (uri + content hash): the one
way a global decision is pinned, so it sits in that stage's lineage and cache key.
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa
from pydantic import BaseModel
from rich.progress import Progress

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.inference.identity import identity_payload
from gristmill.stages.base import StageInputError
from gristmill.stages.code_version import code_version
from gristmill.stages.runner import (
    cache_key,
    check_disjoint,
    committed_with_key,
    config_hash,
    progress_bar,
)
from gristmill.storage.fs import Location, remove_tree, resolve
from gristmill.storage.manifest import (
    InputRef,
    Lineage,
    Manifest,
    ShardInfo,
    StageStats,
    content_sha256,
    load_manifest,
)
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import DatasetWriter


class DatasetRef(FrozenModel):
    """A global step's output pinned by content: a stage config carrying it changes (and
    its cache key with it) exactly when the decision changes."""

    uri: str
    sha256: str

    @classmethod
    def of(cls, uri: str) -> DatasetRef:
        dataset = Dataset.open(uri)
        return cls(uri=dataset.uri, sha256=content_sha256(dataset.manifest))

    def open(self) -> Dataset:
        dataset = Dataset.open(self.uri)
        found = content_sha256(dataset.manifest)
        if found != self.sha256:
            raise StageInputError(f"{self.uri} holds content {found[:12]}, the config pins "
                                  f"{self.sha256[:12]}: rebuild it or update the config")
        return dataset


class StepSink:
    """Where a step writes: rows into its output dataset, sub-datasets under its folder
    (`location`), scratch files its workers share (`work`: beside the output on the same
    filesystem, kept by an interrupted run under the same cache key so it can resume,
    removed after the commit), and advances on the progress bar."""

    def __init__(self, writer: DatasetWriter, progress: Progress, runtime: RuntimeConfig,
                 work: Location) -> None:
        self.writer = writer
        self.location: Location = writer.out
        self.work = work
        self.progress = progress
        self.runtime = runtime
        self.rows = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        self.writer.write(table)
        self.rows += table.num_rows

    def adopt(self, shards: list[ShardInfo]) -> None:
        """Output shards the step's worker tasks wrote into `location` themselves."""
        self.writer.adopt(shards)
        self.rows += sum(shard.rows for shard in shards)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class GlobalStep(ABC, Generic[ConfigT]):
    """A barrier over whole datasets; see the module docstring."""

    name: ClassVar[str]

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @abstractmethod
    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema: ...

    @abstractmethod
    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        """Write the output rows through `sink`; return a JSON-able summary."""


class StepResult(BaseModel):
    """What a flow passes on: the pinned output and what the step found, never the data."""

    step: str
    ref: DatasetRef
    cache_key: str
    reused: bool
    stats: StageStats
    summary: dict[str, Any]
    wall_seconds: float

    @property
    def output(self) -> str:
        return self.ref.uri


def step_code_version(step_cls: type[GlobalStep]) -> str:
    """The step's module, this contract, and every gristmill module either reaches."""
    return code_version(sys.modules[step_cls.__module__], sys.modules[__name__])


def step_cache_key(step: GlobalStep, inputs: Sequence[Dataset],
                   runtime: RuntimeConfig) -> tuple[str, list[InputRef]]:
    refs = [InputRef(uri=d.uri, content_sha256=content_sha256(d.manifest)) for d in inputs]
    return cache_key(step.name, identity_payload(step.config), refs,
                     step_code_version(type(step)), runtime.storage), refs


def _result(step: GlobalStep, output: str, key: str, reused: bool, manifest: Manifest,
            wall: float) -> StepResult:
    return StepResult(step=step.name, ref=DatasetRef.of(output), cache_key=key, reused=reused,
                      stats=manifest.stats or StageStats(), summary=manifest.summary,
                      wall_seconds=time.perf_counter() - wall)


def run_global_step(step: GlobalStep, inputs: Sequence[str], output: str,
                    runtime: RuntimeConfig | None = None, *,
                    flow_run_id: str | None = None) -> StepResult:
    """Run `step` over the committed `inputs` into `output`, or reuse what is committed
    there under the same key."""
    runtime = runtime or RuntimeConfig()
    wall = time.perf_counter()
    datasets = [Dataset.open(uri) for uri in inputs]
    key, refs = step_cache_key(step, datasets, runtime)
    out = resolve(output)
    check_disjoint(out, refs)
    if committed_with_key(output, key):
        return _result(step, output, key, True, load_manifest(out), wall)
    started = datetime.now(UTC)
    storage = runtime.storage
    payload = identity_payload(step.config)
    with DatasetWriter(out, step.output_schema(datasets), max_rows=storage.max_rows_per_shard,
                       max_bytes=storage.max_bytes_per_shard, checksum=storage.checksum,
                       overwrite=True) as writer, \
            progress_bar(runtime.progress, "steps") as progress:
        sink = StepSink(writer, progress, runtime, work_root(out).join(key[:16]))
        summary = step.run(datasets, sink)
        rows_in = sum(d.num_rows for d in datasets)
        stats = StageStats(rows_in=rows_in, rows_out=sink.rows,
                           seconds=time.perf_counter() - wall)
        manifest = writer.commit(stats=stats, summary=summary, lineage=Lineage(
            stage=step.name, config=step.config.model_dump(mode="json"),
            config_hash=config_hash(payload), inputs=refs,
            code_version=step_code_version(type(step)), cache_key=key,
            flow_run_id=flow_run_id, started=started, finished=datetime.now(UTC)))
    remove_tree(work_root(out))
    return _result(step, output, key, False, manifest, wall)


def work_root(out: Location) -> Location:
    """A step's scratch folder: a sibling of its output, so clearing the output for a new
    write leaves an interrupted run's finished phases in place."""
    return Location(out.fs, out.path.rstrip("/") + ".work")
