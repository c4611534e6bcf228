"""Run a map stage over its input with Ray, resumably, and commit kept + rejected rows.

The unit of work is one input shard (or raw file). A Ray actor pool processes units; each
unit's output shards are named `part-<generation>-<unit>-<n>.arrow`, and only after they
are closed does the worker write `_progress/unit-NNNNN.json` atomically. A run that is
killed therefore resumes by skipping recorded units and deleting unrecorded files: no
finished unit is redone and no row is written twice.

Before any work, a committed output whose cache key (stage, config hash, input content
hashes, code version, storage settings) matches is reused as it is. Models enter the config
hash by content (gristmill/inference/identity.py) and code by its syntax tree
(stages/code_version.py), so a moved model or an edited comment keeps the key. Otherwise the
new run writes a new generation of shards beside the committed one, and replacing the
manifest (an atomic rename) switches readers over: until then, and if the run fails, the
previous output stays readable. The old generation's shards are deleted after the switch.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import traceback
from collections import Counter
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import xxhash
from pydantic import BaseModel, Field, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.runtime import ensure_ray
from gristmill.stages.base import (
    MapStage,
    StageConfig,
    StageContractError,
    StageInput,
    StageInputError,
    WorkUnit,
)
from gristmill.stages.code_version import code_version
from gristmill.storage.errors import UnreadableManifestError
from gristmill.storage.fs import (
    Location,
    read_bytes,
    remove_tree,
    resolve,
    write_bytes_atomic,
)
from gristmill.storage.manifest import (
    PROGRESS_DIR,
    REJECTED_DIR,
    InputRef,
    Lineage,
    Manifest,
    ShardInfo,
    StageStats,
    canonical_json,
    is_committed,
    load_manifest,
)
from gristmill.storage.writer import (
    ShardSetWriter,
    commit_dataset,
    prepare_output,
    remove_unlisted_shards,
)

PLAN_FILE = "plan.json"
GENERATION_CHARS = 12


class StageFailedError(RuntimeError):
    """Some units failed; finished units stay recorded so a rerun resumes after the fix."""


class UnitRecord(BaseModel):
    """What one finished unit wrote: the durable proof that it need not run again."""

    index: int
    kept: list[ShardInfo]
    rejected: list[ShardInfo]
    rows_in: int
    rows_out: int
    rows_rejected: int
    reject_reasons: dict[str, int] = Field(default_factory=dict)
    input_digest: str = Field(default="", description="xxh3_128 of what the unit read")
    worker: str = Field(default="", description="host:pid of the worker that ran it")
    seconds: float
    finished: datetime


class StageResult(BaseModel):
    """What a flow passes on: where the output is and what happened, never the data."""

    stage: str
    output: str
    rejected: str | None
    cache_key: str
    reused: bool
    stats: StageStats
    wall_seconds: float


def stage_code_version(stage_cls: type[MapStage]) -> str:
    """The stage's module, this runner, and every gristmill module either reaches."""
    return code_version(sys.modules[stage_cls.__module__], sys.modules[__name__])


def cache_key(stage: str, config: dict, refs: list[InputRef], code: str,
              storage: StorageConfig) -> str:
    """What an output is a function of: stage, config, inputs, code and storage layout."""
    payload = canonical_json({
        "stage": stage,
        "config": config,
        "inputs": [r.content_sha256 for r in refs],
        "code": code,
        "storage": storage.model_dump(mode="json", exclude={"verify_inputs"}),
    })
    return hashlib.sha256(payload.encode()).hexdigest()


def stage_cache_key(stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                    storage: StorageConfig) -> str:
    """The key a committed output must carry to be reused for this run."""
    return cache_key(stage_cls.name, config.hash_payload(), source.refs(),
                     stage_code_version(stage_cls), storage)


def committed_with_key(output: str, key: str) -> bool:
    out = resolve(output)
    try:
        lineage = load_manifest(out).lineage if is_committed(out) else None
    except UnreadableManifestError:
        return False
    return lineage is not None and lineage.cache_key == key


def config_hash(payload: dict) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _record_location(out: Location, index: int) -> Location:
    return out.join(PROGRESS_DIR, f"unit-{index:05d}.json")


def process_unit(stage: MapStage, source: StageInput, unit: WorkUnit, out: Location,
                 schemas: tuple[pa.Schema, pa.Schema], storage: StorageConfig,
                 generation: str) -> UnitRecord:
    """Run one unit end to end and record it; on failure delete what it wrote."""
    started = time.perf_counter()
    options = {"prefix": f"part-{generation}-{unit.index:05d}",
               "max_rows": storage.max_rows_per_shard,
               "max_bytes": storage.max_bytes_per_shard, "checksum": storage.checksum}
    kept_writer = ShardSetWriter(out, schemas[0], **options)
    rejected_writer = ShardSetWriter(out.join(REJECTED_DIR), schemas[1], **options)
    rows_in = rows_out = rows_rejected = 0
    reasons: Counter[str] = Counter()
    digest = xxhash.xxh3_128()
    try:
        for batch in source.read_unit(unit, stage.config.resources.batch_rows, digest):
            split = stage.process(batch)
            accounted = split.kept.num_rows + split.rejected.num_rows
            if not stage.fan_out and accounted != batch.num_rows:
                raise StageContractError(
                    f"{stage.name} returned {split.kept.num_rows} kept + "
                    f"{split.rejected.num_rows} rejected rows for a batch of {batch.num_rows}")
            kept_writer.write(split.kept)
            rejected_writer.write(split.rejected)
            rows_in += batch.num_rows
            rows_out += split.kept.num_rows
            rows_rejected += split.rejected.num_rows
            if split.rejected.num_rows:
                reasons.update(split.rejected.column("reject_reason").to_pylist())
        record = UnitRecord(
            index=unit.index, kept=kept_writer.close(), rejected=rejected_writer.close(),
            rows_in=rows_in, rows_out=rows_out, rows_rejected=rows_rejected,
            reject_reasons=dict(reasons), input_digest=digest.hexdigest(),
            worker=f"{socket.gethostname()}:{os.getpid()}", seconds=time.perf_counter() - started,
            finished=datetime.now(UTC),
        )
    except BaseException:
        kept_writer.abort()
        rejected_writer.abort()
        raise
    write_bytes_atomic(_record_location(out, unit.index), record.model_dump_json().encode())
    return record


class UnitWorker:
    """A Ray actor: builds the stage once (models load here), then processes units."""

    def __init__(self, stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                 out: Location, schemas: tuple[pa.Schema, pa.Schema],
                 storage: StorageConfig, generation: str) -> None:
        self.stage = stage_cls(config)
        self.setup_error: str | None = None
        try:
            self.stage.setup()
        except Exception as err:
            self.setup_error = (f"{stage_cls.name} setup failed: {type(err).__name__}: {err}\n"
                                + traceback.format_exc(limit=4))
        self.source = source
        self.out = out
        self.schemas = schemas
        self.storage = storage
        self.generation = generation

    def __call__(self, batch: pa.Table) -> pa.Table:
        records, errors = [], []
        for text in batch.column("unit").to_pylist():
            unit = WorkUnit.model_validate_json(text)
            if self.setup_error is not None:
                records.append(None)
                errors.append(self.setup_error)
                continue
            try:
                record = process_unit(self.stage, self.source, unit, self.out, self.schemas,
                                      self.storage, self.generation)
                records.append(record.model_dump_json())
                errors.append(None)
            except Exception as err:
                records.append(None)
                errors.append(f"unit {unit.index} ({unit.uri}): {type(err).__name__}: {err}\n"
                              + traceback.format_exc(limit=4))
        return pa.table({"record": pa.array(records, pa.string()),
                         "error": pa.array(errors, pa.string())})


def _pool_size(stage: MapStage, pending: int) -> int:
    import ray

    resources = stage.config.resources
    cluster = ray.cluster_resources()
    if resources.num_gpus > cluster.get("GPU", 0):
        raise StageInputError(f"{stage.name} asks for {resources.num_gpus} GPU per worker; the "
                              f"Ray cluster has {cluster.get('GPU', 0)}: set "
                              "resources.num_gpus=0 or join a cluster with GPUs")
    if resources.concurrency is not None:
        return min(resources.concurrency, pending)
    if resources.num_gpus > 0:
        fit = int(cluster.get("GPU", 0) // resources.num_gpus)
    else:
        fit = int(cluster.get("CPU", 1) // resources.num_cpus)
    return max(1, min(fit, pending))


def _execute(stage: MapStage, source: StageInput, pending: list[WorkUnit], out: Location,
             schemas: tuple[pa.Schema, pa.Schema], runtime: RuntimeConfig, generation: str,
             progress: Progress | None):
    """Yield (record, error) per unit as workers finish them."""
    import ray.data

    resources = stage.config.resources
    items = [{"unit": u.model_dump_json()} for u in pending]
    units = ray.data.from_items(items, override_num_blocks=len(items))
    results = units.map_batches(
        UnitWorker,
        fn_constructor_kwargs={"stage_cls": type(stage), "config": stage.config,
                               "source": source, "out": out, "schemas": schemas,
                               "storage": runtime.storage, "generation": generation},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=_pool_size(stage, len(pending))),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus or None,
    )
    # A unit (one input shard) reports only when done, and a model stage may take hours on
    # one: Ray Data's no-progress watchdog (30 min by default) would fail healthy work.
    results.context.execution_no_progress_timeout_s = -1
    task = progress.add_task(stage.name, total=len(pending)) if progress else None
    for row in results.iter_rows():
        record = UnitRecord.model_validate_json(row["record"]) if row["record"] else None
        if progress:
            progress.advance(task)
        yield record, row["error"]


def _committed(out: Location) -> Manifest | None:
    """The committed manifest at `out`, if any; one this code cannot read is cleared away."""
    if not is_committed(out):
        return None
    try:
        return load_manifest(out)
    except UnreadableManifestError:
        prepare_output(out, overwrite=True)
        return None


def _committed_files(out: Location, committed: Manifest | None) -> tuple[set[str], set[str]]:
    """Shard files (kept, rejected) the committed dataset still needs."""
    if committed is None:
        return set(), set()
    rejected = out.join(REJECTED_DIR)
    rejected_files = {s.file for s in load_manifest(rejected).shards} \
        if is_committed(rejected) else set()
    return {s.file for s in committed.shards}, rejected_files


def _start_or_resume(out: Location, key: str,
                     committed: Manifest | None) -> dict[int, UnitRecord]:
    """Recorded units of an interrupted run with the same key; stale work is cleared,
    the committed dataset (if any) is left untouched."""
    plan = out.join(PROGRESS_DIR, PLAN_FILE)
    records: dict[int, UnitRecord] = {}
    if plan.exists() and canonical_json(key) == read_bytes(plan).decode():
        records = _read_records(out)
    else:
        if committed is None:
            prepare_output(out, overwrite=False)
        else:
            remove_tree(out.join(PROGRESS_DIR))
        write_bytes_atomic(plan, canonical_json(key).encode())
    kept, rejected = _committed_files(out, committed)
    remove_unlisted_shards(out, kept | {s.file for r in records.values() for s in r.kept})
    remove_unlisted_shards(out.join(REJECTED_DIR),
                           rejected | {s.file for r in records.values() for s in r.rejected})
    return records


def _read_records(out: Location) -> dict[int, UnitRecord]:
    """Unit records on disk; an unreadable one only means its unit runs again."""
    records = {}
    selector = pafs.FileSelector(out.join(PROGRESS_DIR).path)
    for info in out.fs.get_file_info(selector):
        if info.base_name.startswith("unit-") and info.base_name.endswith(".json"):
            try:
                record = UnitRecord.model_validate_json(
                    read_bytes(out.join(PROGRESS_DIR, info.base_name)))
            except ValidationError:
                continue
            records[record.index] = record
    return records


def check_disjoint(out: Location, refs: list[InputRef]) -> None:
    """Refuse an output that is, holds, or sits inside an input: clearing it would eat it."""
    for ref in refs:
        source = resolve(ref.uri)
        if type(source.fs) is not type(out.fs):
            continue
        a, b = source.path.rstrip("/"), out.path.rstrip("/")
        if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
            raise StageInputError(f"output {out.uri()} overlaps input {ref.uri}; "
                                  "write to a separate folder")


def _stats(records: list[UnitRecord], reused: int) -> StageStats:
    reasons: Counter[str] = Counter()
    for record in records:
        reasons.update(record.reject_reasons)
    return StageStats(
        rows_in=sum(r.rows_in for r in records),
        rows_out=sum(r.rows_out for r in records),
        rows_rejected=sum(r.rows_rejected for r in records),
        reject_reasons=dict(reasons.most_common()),
        units_total=len(records),
        units_reused=reused,
        units_per_worker=dict(Counter(r.worker for r in records)),
        seconds=sum(r.seconds for r in records),
    )


def run_stage(
    stage_cls: type[MapStage],
    config: StageConfig,
    source: StageInput,
    output: str,
    runtime: RuntimeConfig | None = None,
    *,
    flow_run_id: str | None = None,
) -> StageResult:
    """Run `stage_cls` over `source` into `output`, reusing or resuming earlier work."""
    runtime = runtime or RuntimeConfig()
    wall = time.perf_counter()
    stage = stage_cls(config)
    input_schema = source.schema()
    stage.check_input(input_schema)
    schemas = (stage.output_schema(input_schema), stage.rejected_schema(input_schema))
    refs = source.refs()
    code = stage_code_version(stage_cls)
    payload = config.hash_payload()
    key = cache_key(stage.name, payload, refs, code, runtime.storage)
    out = resolve(output)
    check_disjoint(out, refs)

    committed = _committed(out)
    if committed is not None and committed.lineage is not None \
            and committed.lineage.cache_key == key:
        remove_tree(out.join(PROGRESS_DIR))
        return stage_result(stage.name, out, key, True, committed.stats or StageStats(), wall)

    started = datetime.now(UTC)
    records = _start_or_resume(out, key, committed)
    reused = len(records)
    pending = [u for u in source.units() if u.index not in records]
    failures: list[str] = []
    if pending:
        ensure_ray(runtime.ray)
        with progress_bar(runtime.progress) as progress:
            for record, error in _execute(stage, source, pending, out, schemas, runtime,
                                          key[:GENERATION_CHARS], progress):
                if record is not None:
                    records[record.index] = record
                else:
                    failures.append(error)
    if failures:
        raise StageFailedError(
            f"{stage.name}: {len(failures)} of {len(records) + len(failures)} units failed; "
            f"the {len(records)} finished units are kept and a rerun resumes after them. "
            f"First failure: {failures[0]}")

    ordered = [records[i] for i in sorted(records)]
    stats = _stats(ordered, reused)
    if not stage.fan_out and stats.rows_in != stats.rows_out + stats.rows_rejected:
        raise StageContractError(f"{stage.name}: rows_in {stats.rows_in} != rows_out "
                                 f"{stats.rows_out} + rows_rejected {stats.rows_rejected}")
    lineage = Lineage(
        stage=stage.name, config=config.model_dump(mode="json"),
        config_hash=config_hash(payload),
        inputs=refs, code_version=code, cache_key=key, input_digest=_input_digest(ordered),
        flow_run_id=flow_run_id, started=started, finished=datetime.now(UTC),
    )
    kept = [s for r in ordered for s in r.kept]
    rejected = [s for r in ordered for s in r.rejected]
    commit_dataset(out, schemas[0], kept, rejected=(schemas[1], rejected), lineage=lineage,
                   stats=stats)
    remove_unlisted_shards(out, {s.file for s in kept})
    remove_unlisted_shards(out.join(REJECTED_DIR), {s.file for s in rejected})
    remove_tree(out.join(PROGRESS_DIR))
    return stage_result(stage.name, out, key, False, stats, wall)


def _input_digest(records: list[UnitRecord]) -> str:
    digest = xxhash.xxh3_128()
    for record in records:
        digest.update(record.input_digest.encode())
    return digest.hexdigest()


def stage_result(stage: str, out: Location, key: str, reused: bool, stats: StageStats,
                 wall: float) -> StageResult:
    return StageResult(stage=stage, output=out.uri(), rejected=out.join(REJECTED_DIR).uri(),
                       cache_key=key, reused=reused, stats=stats,
                       wall_seconds=time.perf_counter() - wall)


def progress_bar(enabled: bool, unit: str = "units") -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn())
    return Progress(*columns, disable=not enabled, transient=False)
