"""Rows routed to partitions as files, and phases of Ray tasks over them.

This is how a global step groups rows without the driver: a phase is a list of Ray tasks;
each reads its own input (a shard of a dataset, or one partition an earlier phase wrote)
and sends every output row to a partition by a number it computes (a hash of a key, or
the shard a row lives in), writing one Arrow file per (partition, task). The next phase's
task p reads every file of partition p. Files live on the step's filesystem (a local disk
or object storage), so a task on any node reads what tasks on other nodes wrote.

Reruns: a file's name is fixed by its task and partition, so a retried task overwrites its
own files; a phase records a marker with its tasks' small summaries when all have finished,
and a rerun of the step skips every phase that has one. The driver sees only summaries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import xxhash

from gristmill.config import RuntimeConfig
from gristmill.storage.fs import Location, read_bytes, write_bytes_atomic


def partition_of(keys: Sequence[str], partitions: int) -> np.ndarray:
    """A fixed partition per string key (xxh3, the same in every process and on every node)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(k.encode()) % partitions for k in keys),
                       np.int64, len(keys))


class RoutedFiles:
    """Files of one routing: `<folder>/p<partition>/<task>.arrow`."""

    def __init__(self, folder: Location, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema

    def _partition_folder(self, partition: int) -> Location:
        return self.folder.join(f"p{partition:06d}")

    def write(self, table: pa.Table, partitions: np.ndarray, task: str) -> None:
        """Send row i to partition `partitions[i]`; one file per partition that gets rows."""
        table = table.select(self.schema.names).cast(self.schema)
        order = np.argsort(partitions, kind="stable")
        ordered = partitions[order]
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        for rows in np.split(order, cuts) if len(order) else []:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, self.schema) as writer:
                writer.write_table(table.take(pa.array(rows)))
            target = self._partition_folder(int(partitions[rows[0]])).join(f"{task}.arrow")
            write_bytes_atomic(target, sink.getvalue().to_pybytes())

    def read(self, partition: int) -> pa.Table:
        """Every row any task sent to `partition` (an empty table if none did)."""
        folder = self._partition_folder(partition)
        listed = folder.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
        tables = []
        for info in sorted(listed, key=lambda i: i.path):
            if info.type != pafs.FileType.File or not info.base_name.endswith(".arrow"):
                continue
            with folder.fs.open_input_file(info.path) as handle:
                tables.append(pa.ipc.open_file(handle).read_all())
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


def run_phase(work: Location, name: str, task: Callable[..., dict[str, Any]],
              arguments: Sequence[tuple], runtime: RuntimeConfig) -> list[dict[str, Any]]:
    """Run `task(*args)` for every args tuple on the Ray workers and return their summaries;
    a phase finished by an earlier run of the step is not run again."""
    marker = work.join("_phases", f"{name}.json")
    if marker.exists():
        return json.loads(read_bytes(marker))
    summaries = run_tasks(task, arguments, runtime)
    write_bytes_atomic(marker, json.dumps(summaries).encode())
    return summaries


def fold_phase(work: Location, name: str, task: Callable[..., dict[str, Any]],
               arguments: Sequence[tuple], runtime: RuntimeConfig,
               fold: Callable[[Any, dict[str, Any]], Any], start: Any) -> Any:
    """Like `run_phase`, but each task's summary is folded into `start` as it arrives and
    only the fold is kept (and recorded), so the driver never holds every task's summary
    at once: for summaries whose total is small but whose sum over tasks grows with the
    input (per-cluster counts from every shard, say). The fold must be JSON-able."""
    import ray

    from gristmill.runtime import ensure_ray

    marker = work.join("_phases", f"{name}.json")
    if marker.exists():
        return json.loads(read_bytes(marker))
    ensure_ray(runtime.ray)
    remote = ray.remote(num_cpus=1)(task)
    pending = [remote.remote(*args) for args in arguments]
    total = start
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        total = fold(total, ray.get(done[0]))
    write_bytes_atomic(marker, json.dumps(total).encode())
    return total


def run_tasks(task: Callable[..., dict[str, Any]], arguments: Sequence[tuple],
              runtime: RuntimeConfig) -> list[dict[str, Any]]:
    """Run `task(*args)` for every args tuple on the Ray workers, every time: for a last
    phase that writes into an output the next run clears anyway."""
    import ray

    from gristmill.runtime import ensure_ray

    ensure_ray(runtime.ray)
    remote = ray.remote(num_cpus=1)(task)
    return ray.get([remote.remote(*args) for args in arguments])
