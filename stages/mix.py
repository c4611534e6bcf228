"""mix: materialize a mixture plan into shards, for trainers that want fixed files.

A global step, not a map: it reads every domain and writes one dataset whose rows are the
mixture's samples in training order, each with `domain`, `loss_weight` and `step`. Like a
map stage it is reused when its config, input contents, code and storage settings match.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from gristmill.config import RuntimeConfig
from gristmill.loading.mixture import MixtureConfig, MixtureStream
from gristmill.stages.code_version import code_version
from gristmill.stages.runner import (
    StageResult,
    cache_key,
    committed_with_key,
    config_hash,
    progress_bar,
    stage_result,
)
from gristmill.storage.fs import resolve
from gristmill.storage.manifest import InputRef, Lineage, StageStats, content_sha256, load_manifest
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import DatasetWriter

STAGE = "mix"


def mix_cache_key(config: MixtureConfig, refs: list[InputRef], runtime: RuntimeConfig) -> str:
    return cache_key(STAGE, config.model_dump(mode="json"), refs,
                     code_version(sys.modules[__name__]), runtime.storage)


def domain_refs(config: MixtureConfig) -> list[InputRef]:
    return [InputRef(uri=d.uri, content_sha256=content_sha256(Dataset.open(d.uri).manifest))
            for d in config.domains]


def run_mix(config: MixtureConfig, output: str, runtime: RuntimeConfig | None = None, *,
            flow_run_id: str | None = None) -> StageResult:
    """Write the mixture's samples for every step, in order, as one committed dataset."""
    runtime = runtime or RuntimeConfig()
    wall = time.perf_counter()
    refs = domain_refs(config)
    key = mix_cache_key(config, refs, runtime)
    out = resolve(output)
    if committed_with_key(output, key):
        return stage_result(STAGE, out, key, True, load_manifest(out).stats or StageStats(),
                            wall)
    started = datetime.now(UTC)
    stream = MixtureStream(config)
    storage = runtime.storage
    rows = 0
    with DatasetWriter(out, stream.output_schema, max_rows=storage.max_rows_per_shard,
                       max_bytes=storage.max_bytes_per_shard, checksum=storage.checksum,
                       overwrite=True) as writer, \
            progress_bar(runtime.progress, "steps") as progress:
        task = progress.add_task(STAGE, total=config.total_steps)
        for batch in stream:
            writer.write(batch)
            rows += batch.num_rows
            progress.advance(task)
        stats = StageStats(rows_in=rows, rows_out=rows, units_total=config.total_steps,
                           seconds=time.perf_counter() - wall)
        writer.commit(stats=stats, lineage=Lineage(
            stage=STAGE, config=config.model_dump(mode="json"),
            config_hash=config_hash(config.model_dump(mode="json")), inputs=refs,
            code_version=code_version(sys.modules[__name__]), cache_key=key,
            flow_run_id=flow_run_id, started=started, finished=datetime.now(UTC)))
    return stage_result(STAGE, out, key, False, stats, wall)
