"""Run a chain of map stages over its input with Ray, resumably, and commit what it keeps.

A single stage is a chain of one link; stages/chain.py says where a chain's rows go. The
unit of work is one input shard (or raw file, or part of one). A Ray actor pool processes
units; each unit passes every batch through every link, its shards are named
`part-<generation>-<unit>-<n>.arrow`, and only after they are closed does the worker write
`_progress/unit-NNNNN.json` atomically. A run that is killed therefore resumes by skipping
recorded units and deleting unrecorded files: no finished unit is redone and no row is
written twice.

Before any work, a committed output whose cache key (every link's stage and config, input
content hashes, code version, storage settings, what is kept) matches is reused as it is.
Models enter the config hash by content (gristmill/inference/identity.py) and code by its
syntax tree (stages/code_version.py), so a moved model or an edited comment keeps the key.
Otherwise the new run writes a new generation of shards beside the committed one, and
replacing the manifest (one atomic write that holds the output's parts too: rejects and kept
links) switches readers over: until then, and if the run fails, the previous output stays
readable. The old generation's
shards are deleted after the switch.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow.fs as pafs
import xxhash
from pydantic import BaseModel, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.runtime import ensure_ray
from gristmill.stages import chain as chain_module
from gristmill.stages.base import (
    DatasetInput,
    MapStage,
    Resources,
    StageConfig,
    StageContractError,
    StageInput,
    StageInputError,
    WorkUnit,
)
from gristmill.stages.chain import (
    OUTPUT,
    ChainPlan,
    Link,
    UnitRecord,
    process_unit,
    record_location,
)
from gristmill.stages.code_version import code_version
from gristmill.storage.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    UnreadableManifestError,
)
from gristmill.storage.fs import (
    Location,
    read_bytes,
    remove_file,
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
    StageStats,
    canonical_json,
    is_committed,
    load_manifest,
    restore_part_copies,
)
from gristmill.storage.reader import iter_shard_file
from gristmill.storage.writer import commit_dataset, prepare_output, remove_unlisted_shards

PLAN_FILE = "plan.json"
GENERATION_CHARS = 12
log = logging.getLogger(__name__)


class StageFailedError(RuntimeError):
    """Some units failed; finished units stay recorded so a rerun resumes after the fix."""


class StageResult(BaseModel):
    """What a flow passes on for one stage: where its rows are and what happened, never the
    data. An earlier link of a chain has no output of its own unless it was kept."""

    stage: str
    output: str | None
    rejected: str | None
    cache_key: str
    reused: bool
    stats: StageStats
    wall_seconds: float


def chain_code_version(stage_classes: Sequence[type[MapStage]], source: StageInput) -> str:
    """Every stage's module, the input's reader (raw files are parsed there), this runner,
    and every gristmill module they reach."""
    modules = {sys.modules[cls.__module__] for cls in [*stage_classes, type(source)]}
    return code_version(*sorted(modules, key=lambda m: m.__name__), sys.modules[__name__],
                        chain_module)


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


def _chain_name(links: Sequence[Link]) -> str:
    return "+".join(link.stage_cls.name for link in links)


def _chain_payload(links: Sequence[Link], keep: Sequence[str]) -> dict:
    return {"links": [{"stage": link.stage_cls.name, "config": link.config.hash_payload()}
                      for link in links], "keep": sorted(keep)}


def chain_cache_key(links: Sequence[Link], source: StageInput, storage: StorageConfig,
                    keep: Sequence[str] = ()) -> str:
    """The key a committed output must carry to be reused for this run."""
    return cache_key(_chain_name(links), _chain_payload(links, keep), source.refs(),
                     chain_code_version([link.stage_cls for link in links], source), storage)


def stage_cache_key(stage_cls: type[MapStage], config: StageConfig, source: StageInput,
                    storage: StorageConfig) -> str:
    return chain_cache_key([Link(stage_cls, config)], source, storage)


def committed_with_key(output: str, key: str) -> bool:
    out = resolve(output)
    try:
        lineage = load_manifest(out).lineage if is_committed(out) else None
    except UnreadableManifestError:
        return False
    return lineage is not None and lineage.cache_key == key


def config_hash(payload: dict) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _chain_resources(stages: Sequence[MapStage]) -> Resources:
    """A worker runs every link, so it asks for the most any link needs."""
    resources = [stage.config.resources for stage in stages]
    widths = [r.concurrency for r in resources if r.concurrency is not None]
    return Resources(num_cpus=max(r.num_cpus for r in resources),
                     num_gpus=max(r.num_gpus for r in resources),
                     concurrency=min(widths) if widths else None)


class UnitWorker:
    """A Ray actor: builds every stage once (models load here), then processes units."""

    def __init__(self, links: list[Link], plan: ChainPlan, source: StageInput,
                 out: Location, storage: StorageConfig, generation: str) -> None:
        self.stages = [link.stage_cls(link.config) for link in links]
        self.setup_error: str | None = None
        try:
            for stage in self.stages:
                stage.setup()
        except Exception as err:
            self.setup_error = (f"{_chain_name(links)} setup failed: {type(err).__name__}: "
                                f"{err}\n" + traceback.format_exc(limit=4))
        self.plan = plan
        self.source = source
        self.out = out
        self.storage = storage
        self.generation = generation

    def process(self, unit: WorkUnit) -> tuple[str | None, str | None]:
        """(the unit's record as JSON, None), or (None, why it failed)."""
        if self.setup_error is not None:
            return None, self.setup_error
        try:
            record = process_unit(self.stages, self.plan, self.source, unit, self.out,
                                  self.storage, self.generation)
        except Exception as err:
            return None, (f"unit {unit.index} ({unit.uri}): {type(err).__name__}: {err}\n"
                          + traceback.format_exc(limit=4))
        return record.model_dump_json(), None


def _pool_size(name: str, resources: Resources, pending: int) -> int:
    import ray

    cluster = ray.cluster_resources()
    if resources.num_gpus > cluster.get("GPU", 0):
        raise StageInputError(f"{name} asks for {resources.num_gpus} GPU per worker; the "
                              f"Ray cluster has {cluster.get('GPU', 0)}: set "
                              "resources.num_gpus=0 or join a cluster with GPUs")
    if resources.concurrency is not None:
        return min(resources.concurrency, pending)
    if resources.num_gpus > 0:
        fit = int(cluster.get("GPU", 0) // resources.num_gpus)
    else:
        fit = int(cluster.get("CPU", 1) // resources.num_cpus)
    return max(1, min(fit, pending))


def _execute(links: list[Link], resources: Resources, plan: ChainPlan, source: StageInput,
             pending: list[WorkUnit], out: Location, runtime: RuntimeConfig, generation: str,
             progress: Progress | None):
    """Yield (record, error) per unit as workers finish them.

    A pool of plain Ray actors, one unit in flight each: a unit is a whole shard or byte
    range, so there is nothing for a streaming executor to pipeline, and Ray Data's would
    add its start-up and a no-progress watchdog that fails a model stage slow on one unit.
    A worker process that dies (killed, out of memory) fails only the unit it held; Ray
    restarts it for the units still queued.
    """
    import ray

    name = _chain_name(links)
    worker = ray.remote(UnitWorker).options(
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or None,
        max_restarts=-1, max_task_retries=0)
    actors = [worker.remote(links, plan, source, out, runtime.storage, generation)
              for _ in range(_pool_size(name, resources, len(pending)))]
    queue = list(reversed(pending))
    in_flight = {}
    task = progress.add_task(name, total=len(pending)) if progress else None

    def submit(actor) -> None:
        if queue:
            unit = queue.pop()
            in_flight[actor.process.remote(unit)] = (actor, unit)

    try:
        for actor in actors:
            submit(actor)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, unit = in_flight.pop(ref)
            try:
                record, error = ray.get(ref)
            except ray.exceptions.RayError as err:
                record, error = None, (f"unit {unit.index} ({unit.uri}): its worker was lost: "
                                       f"{type(err).__name__}: {err}")
            if progress:
                progress.advance(task)
            submit(actor)
            yield (UnitRecord.model_validate_json(record) if record else None), error
    finally:
        for actor in actors:
            ray.kill(actor)


def _committed(out: Location) -> Manifest | None:
    """The committed manifest at `out`, if any. One this code cannot read (damaged, or from
    a newer gristmill) is refused, never deleted: it may be someone's only copy."""
    if not is_committed(out):
        return None
    try:
        return load_manifest(out)
    except UnreadableManifestError as err:
        raise StageInputError(f"{err}. The output is left as it is: read it with the "
                              "gristmill that wrote it, or move it away (or delete it) to "
                              "write a new one here") from err


def _reusable(out: Location, committed: Manifest | None, key: str) -> bool:
    """Committed under `key`, its sub-datasets too: an output of manifest format 1 committed
    them by separate writes, so a killed run could leave them from another run."""
    if committed is None or committed.lineage is None or committed.lineage.cache_key != key:
        return False
    for folder in _sub_folders(committed):
        try:
            lineage = load_manifest(out.join(folder)).lineage
        except (UnreadableManifestError, FileNotFoundError):
            return False
        if lineage is None or lineage.cache_key != key:
            return False
    return True


def _sub_folders(manifest: Manifest) -> set[str]:
    """The sub-datasets a committed chain output lists (its rejects, kept links)."""
    folders = {REJECTED_DIR} if manifest.rejected else set()
    for link in manifest.summary.get("links", []):
        folders.update(f for f in (link.get("kept"), link.get("rejected")) if f)
    return folders - {OUTPUT}


def _committed_files(out: Location, committed: Manifest | None) -> dict[str, set[str]]:
    """Shard files each folder of the committed output still needs."""
    if committed is None:
        return {}
    files = {OUTPUT: {s.file for s in committed.shards}}
    for folder in _sub_folders(committed):
        if is_committed(out.join(folder)):
            files[folder] = {s.file for s in load_manifest(out.join(folder)).shards}
    return files


def _location(out: Location, folder: str) -> Location:
    return out.join(folder) if folder else out


def _clear_unlisted(out: Location, folders: set[str], *listed: dict[str, set[str]]) -> None:
    for folder in folders:
        keep = set().union(*(files.get(folder, set()) for files in listed))
        remove_unlisted_shards(_location(out, folder), keep)


def _recorded_files(records: dict[int, UnitRecord]) -> dict[str, set[str]]:
    files: dict[str, set[str]] = {}
    for record in records.values():
        for folder, shards in record.shards.items():
            files.setdefault(folder, set()).update(s.file for s in shards)
    return files


def _start_or_resume(out: Location, key: str, plan: ChainPlan, stages: Sequence[MapStage],
                     units: set[int], committed: Manifest | None) -> dict[int, UnitRecord]:
    """Recorded units of an interrupted run with the same key that pass every check; stale
    work is cleared, the committed dataset (if any) is left untouched."""
    plan_file = out.join(PROGRESS_DIR, PLAN_FILE)
    records: dict[int, UnitRecord] = {}
    if plan_file.exists() and canonical_json(key) == read_bytes(plan_file).decode():
        records = _read_records(out, plan, stages, units, key[:GENERATION_CHARS])
    else:
        if committed is None:
            prepare_output(out, overwrite=False)
        else:
            remove_tree(out.join(PROGRESS_DIR))
        write_bytes_atomic(plan_file, canonical_json(key).encode())
    committed_files = _committed_files(out, committed)
    _clear_unlisted(out, set(plan.folders) | set(committed_files), committed_files,
                    _recorded_files(records))
    for folder in _chain_folders(out) - set(plan.folders) - set(committed_files):
        remove_tree(out.join(folder))
    return records


def _chain_folders(out: Location) -> set[str]:
    """rejected-*/ and kept-*/ folders present, committed or left by a killed run."""
    if not out.exists():
        return set()
    return {info.base_name for info in out.fs.get_file_info(pafs.FileSelector(out.path))
            if info.type == pafs.FileType.Directory
            and info.base_name.startswith(("rejected-", "kept-"))}


def _read_records(out: Location, plan: ChainPlan, stages: Sequence[MapStage],
                  units: set[int], generation: str) -> dict[int, UnitRecord]:
    """Unit records on disk that pass `_distrust`; any other record is deleted and its unit
    runs again, so nothing a record claims is committed unchecked."""
    records = {}
    selector = pafs.FileSelector(out.join(PROGRESS_DIR).path)
    for info in out.fs.get_file_info(selector):
        if not (info.base_name.startswith("unit-") and info.base_name.endswith(".json")):
            continue
        location = out.join(PROGRESS_DIR, info.base_name)
        try:
            record = UnitRecord.model_validate_json(read_bytes(location))
            problem = _distrust(record, info.base_name, out, plan, stages, units, generation)
        except ValidationError as err:
            record, problem = None, f"unreadable ({err.error_count()} errors)"
        if problem is None:
            records[record.index] = record
        else:
            log.warning("%s: progress record %s is not trusted (%s); its unit runs again",
                        out.uri(), info.base_name, problem)
            remove_file(location)
    return records


def _distrust(record: UnitRecord, file_name: str, out: Location, plan: ChainPlan,
              stages: Sequence[MapStage], units: set[int], generation: str) -> str | None:
    """Why a progress record cannot be trusted, or None: it must name its own file and a
    unit of this input, balance every link's rows, list only this unit's shards in this
    chain's folders, and every shard must be on disk with its recorded size, rows and
    checksum."""
    if file_name != posixpath.basename(record_location(out, record.index).path):
        return f"it names unit {record.index}"
    if record.index not in units:
        return f"unit {record.index} is not a unit of this input"
    if len(record.links) != len(stages):
        return f"{len(record.links)} link counts for {len(stages)} links"
    for index, (stage, counts) in enumerate(zip(stages, record.links, strict=True)):
        if not stage.fan_out and counts.rows_in != counts.rows_out + counts.rows_rejected:
            return (f"{stage.name}: rows_in {counts.rows_in} != rows_out {counts.rows_out} + "
                    f"rows_rejected {counts.rows_rejected}")
        if index and counts.rows_in != record.links[index - 1].rows_out:
            return f"{stage.name} took {counts.rows_in} rows, the link before gave " \
                   f"{record.links[index - 1].rows_out}"
    expected = {plan.rejected[i]: c.rows_rejected for i, c in enumerate(record.links)}
    expected.update({plan.kept[i]: c.rows_out for i, c in enumerate(record.links)
                     if plan.kept[i] is not None})
    if set(record.shards) != set(expected):
        return f"folders {sorted(record.shards)}, the chain writes {sorted(expected)}"
    prefix = f"part-{generation}-{record.index:05d}-"
    for folder, shards in record.shards.items():
        if sum(s.rows for s in shards) != expected[folder]:
            return f"{folder or 'output'} shards hold {sum(s.rows for s in shards)} rows, " \
                   f"the counts say {expected[folder]}"
        for shard in shards:
            if not shard.file.startswith(prefix) or "/" in shard.file:
                return f"shard {shard.file} is not this unit's"
            try:
                for _ in iter_shard_file(_location(out, folder).join(shard.file), shard,
                                         verify=True):
                    pass
            except (CorruptShardError, ChecksumMismatchError) as err:
                return str(err)
    return None


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


def _link_stats(records: list[UnitRecord], index: int, reused: int) -> StageStats:
    counts = [record.links[index] for record in records]
    reasons: Counter[str] = Counter()
    for count in counts:
        reasons.update(count.reject_reasons)
    return StageStats(
        rows_in=sum(c.rows_in for c in counts), rows_out=sum(c.rows_out for c in counts),
        rows_rejected=sum(c.rows_rejected for c in counts),
        reject_reasons=dict(reasons.most_common()), units_total=len(records),
        units_reused=reused, seconds=sum(r.seconds for r in records),
        units_per_worker=dict(Counter(r.worker for r in records)),
        units_per_node=dict(Counter(r.node for r in records if r.node)))


def _chain_stats(links: list[StageStats]) -> StageStats:
    """The chain as one step: first link's rows in, last link's out, every link's rejects."""
    reasons: Counter[str] = Counter()
    for stats in links:
        reasons.update(stats.reject_reasons)
    first, last = links[0], links[-1]
    return first.model_copy(update={
        "rows_out": last.rows_out, "rows_rejected": sum(s.rows_rejected for s in links),
        "reject_reasons": dict(reasons.most_common())})


def _input_digest(records: list[UnitRecord]) -> str:
    digest = xxhash.xxh3_128()
    for record in records:
        digest.update(record.input_digest.encode())
    return digest.hexdigest()


def run_chain(
    links: Sequence[Link],
    source: StageInput,
    output: str,
    runtime: RuntimeConfig | None = None,
    *,
    keep: Sequence[str] = (),
    flow_run_id: str | None = None,
) -> list[StageResult]:
    """Run the chain over `source` into `output` in one pass per unit, reusing or resuming
    earlier work; one result per link. `keep` names earlier links whose kept rows are
    written too (`<output>/kept-<stage>`)."""
    links = list(links)
    runtime = runtime or RuntimeConfig()
    wall = time.perf_counter()
    stages = [link.stage_cls(link.config) for link in links]
    by_id = runtime.storage.rejected_rows == "ids" and isinstance(source, DatasetInput)
    plan = ChainPlan(stages, source.schema(), keep, first_rejects_by_id=by_id)
    refs = source.refs()
    name = _chain_name(links)
    code = chain_code_version([link.stage_cls for link in links], source)
    payload = _chain_payload(links, keep)
    key = cache_key(name, payload, refs, code, runtime.storage)
    out = resolve(output)
    check_disjoint(out, refs)

    committed = _committed(out)
    if _reusable(out, committed, key):
        restore_part_copies(out, committed)
        _clear_unlisted(out, {OUTPUT, *_sub_folders(committed)}, _committed_files(out, committed))
        remove_tree(out.join(PROGRESS_DIR))
        return _results(committed, out, key, True, wall)

    started = datetime.now(UTC)
    units = source.units()
    records = _start_or_resume(out, key, plan, stages, {u.index for u in units}, committed)
    reused = len(records)
    pending = [u for u in units if u.index not in records]
    failures: list[str] = []
    if pending:
        ensure_ray(runtime.ray)
        with progress_bar(runtime.progress) as progress:
            for record, error in _execute(links, _chain_resources(stages), plan, source,
                                          pending, out, runtime, key[:GENERATION_CHARS],
                                          progress):
                if record is not None:
                    records[record.index] = record
                else:
                    failures.append(error)
    if failures:
        raise StageFailedError(
            f"{name}: {len(failures)} of {len(records) + len(failures)} units failed; "
            f"the {len(records)} finished units are kept and a rerun resumes after them. "
            f"First failure: {failures[0]}")

    ordered = [records[i] for i in sorted(records)]
    link_stats = [_link_stats(ordered, i, reused) for i in range(len(links))]
    for stage, stats in zip(stages, link_stats, strict=True):
        if not stage.fan_out and stats.rows_in != stats.rows_out + stats.rows_rejected:
            raise StageContractError(f"{stage.name}: rows_in {stats.rows_in} != rows_out "
                                     f"{stats.rows_out} + rows_rejected {stats.rows_rejected}")
    lineage = Lineage(
        stage=name,
        config=links[0].config.model_dump(mode="json") if len(links) == 1 else
        {link.stage_cls.name: link.config.model_dump(mode="json") for link in links},
        config_hash=config_hash(payload), inputs=refs, code_version=code, cache_key=key,
        input_digest=_input_digest(ordered), flow_run_id=flow_run_id, started=started,
        finished=datetime.now(UTC))
    shards = {folder: [s for r in ordered for s in r.shards.get(folder, [])]
              for folder in plan.folders}
    parts = {folder: Manifest.build(plan.schemas[folder], shards[folder], lineage=lineage)
             for folder in plan.folders if folder not in (OUTPUT, REJECTED_DIR)}
    summary = {"links": [{"stage": stage.name, "kept": plan.kept[i],
                          "rejected": plan.rejected[i],
                          "stats": link_stats[i].model_dump(mode="json")}
                         for i, stage in enumerate(stages)]}
    manifest = commit_dataset(out, plan.schemas[OUTPUT], shards[OUTPUT],
                              rejected=(plan.schemas[REJECTED_DIR], shards[REJECTED_DIR]),
                              parts=parts, lineage=lineage, stats=_chain_stats(link_stats),
                              summary=summary)
    new_files = {folder: {s.file for s in listed} for folder, listed in shards.items()}
    _clear_unlisted(out, set(plan.folders), new_files)
    for folder in (_sub_folders(committed) if committed else set()) - set(plan.folders):
        remove_tree(out.join(folder))
    remove_tree(out.join(PROGRESS_DIR))
    return _results(manifest, out, key, False, wall)


def _results(manifest: Manifest, out: Location, key: str, reused: bool,
             wall: float) -> list[StageResult]:
    """One result per link, from what the committed manifest records."""
    seconds = time.perf_counter() - wall
    return [StageResult(
        stage=link["stage"], reused=reused, cache_key=key, wall_seconds=seconds,
        output=None if link["kept"] is None else _location(out, link["kept"]).uri(),
        rejected=out.join(link["rejected"]).uri(), stats=StageStats(**link["stats"]))
        for link in manifest.summary["links"]]


def run_stage(
    stage_cls: type[MapStage],
    config: StageConfig,
    source: StageInput,
    output: str,
    runtime: RuntimeConfig | None = None,
    *,
    flow_run_id: str | None = None,
) -> StageResult:
    """Run one stage (a chain of one link) over `source` into `output`."""
    return run_chain([Link(stage_cls, config)], source, output, runtime,
                     flow_run_id=flow_run_id)[0]


def progress_bar(enabled: bool, unit: str = "units") -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn())
    return Progress(*columns, disable=not enabled, transient=False)
