"""Stream throughput: ShardStream into a torch DataLoader against plain pyarrow and `datasets`.

Why: a trainer's input pipeline must not be the bottleneck. The bar (issue 3): the stream at
least as fast as Hugging Face `datasets` streaming and within 0.7x of plain pyarrow iteration
over the same shards, and peak memory flat when the data grows 10x. Rows are real
OpenWebText passages (repeated) with an int64 `idx`, written as gristmill shards of 20k rows
made of 1,024-row record batches, as a stage writes them.

Run: python bench/stream_throughput.py [--mb 300] [--batch-size 1024] [--repeats 5]
Writes bench/results/stream_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import torch
from common import load_average, write_json
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gristmill.loading.stream import ShardStream, StreamLoader, to_hf_iterable
from gristmill.sources import resolve
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".gristmill" / "bench" / "stream_throughput"
RESULTS = Path(__file__).resolve().parent / "results" / "stream_throughput.json"
MB = 1_000_000
PYARROW_BAR = 0.7
STAGE_BATCH_ROWS = 1024
SHARD_ROWS = 20_000

console = Console()
if not console.is_terminal:
    console.width = 150


@dataclass
class Case:
    """One way of reading every row once; `run` returns the touched total and batch waits."""

    name: str
    output: str  # "arrow" or "python": what the consumer receives, and so how it touches
    order: str  # "storage" or "shuffled"
    run: Callable[[], tuple[float, list[float]]]
    seconds: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


# --- data -------------------------------------------------------------------------------

def build_dataset(target_mb: int, out: Path) -> pa.Table:
    """Real passages repeated to ~target_mb of Arrow, written in 1,024-row record batches."""
    texts = []
    for path in resolve("owt").files:
        with path.open(encoding="utf-8") as handle:
            texts.extend(json.loads(line)["text"] for line in handle)
    base = pa.array(texts, pa.string())
    rows = max(1, round(target_mb * MB / (base.nbytes / len(base))))
    order = np.random.default_rng(0).permutation(len(base))[np.arange(rows) % len(base)]
    table = pa.table({"idx": pa.array(np.arange(rows), pa.int64()),
                      "text": base.take(pa.array(order))}).combine_chunks()
    table = pa.Table.from_batches(table.to_batches(max_chunksize=STAGE_BATCH_ROWS))
    write_table(str(out), table, max_rows=SHARD_ROWS, overwrite=True)
    return table


# --- touching: every consumer reads every byte it is given --------------------------------

def touch_arrow(batch: pa.RecordBatch | pa.Table) -> float:
    """utf8_length scans each string's bytes; summing idx reads the ints."""
    return float(pc.sum(pc.utf8_length(batch["text"])).as_py() + pc.sum(batch["idx"]).as_py())


def touch_python(batch: dict[str, Any]) -> float:
    """The same figure from python strings (len counts code points) and a tensor or list."""
    ids = batch["idx"]
    total = int(ids.sum()) if isinstance(ids, torch.Tensor) else sum(ids)
    return float(sum(map(len, batch["text"])) + total)


def consume(batches: Iterable[Any], touch: Callable[[Any], float]) -> tuple[float, list[float]]:
    """Iterate, touching each batch; record how long each `next()` made the consumer wait."""
    total, waits = 0.0, []
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return total, waits
        waits.append(time.perf_counter() - start)
        total += touch(batch)


# --- readers --------------------------------------------------------------------------------

def read_pyarrow(paths: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Plain pyarrow: memory-map each shard, read it, hand out zero-copy batch slices."""
    for path in paths:
        with pa.memory_map(path) as source:
            table = pa.ipc.open_stream(source).read_all()
        yield from table.to_batches(max_chunksize=batch_size)


def read_hf(uri: str, batch_size: int, arrow: bool, shuffle: bool) -> Iterator[Any]:
    """`datasets` streaming: Dataset.from_file per shard -> to_iterable_dataset() -> iter.

    Shuffled the `datasets` way: shard order plus a 10,000-row buffer.
    """
    iterable = to_hf_iterable(uri)
    if shuffle:
        iterable = iterable.shuffle(seed=0, buffer_size=10_000)
    if arrow:
        iterable = iterable.with_format("arrow")
    return iterable.iter(batch_size=batch_size)


def read_stream(uri: str, batch_size: int, fmt: str, workers: int,
                shuffle: bool) -> StreamLoader:
    stream = ShardStream(uri, batch_size=batch_size, format=fmt, shuffle=shuffle)
    return StreamLoader(stream, num_workers=workers)


class _Replay(IterableDataset):
    """Batches already in memory, split over workers like ShardStream: the DataLoader's own
    cost of moving a batch from a worker to the trainer, with no reading at all."""

    def __init__(self, batches: list[pa.RecordBatch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        yield from self.batches[worker::workers]


def _same(batch: Any) -> Any:
    return batch


def build_cases(uri: str, batch_size: int, workers: int) -> list[Case]:
    """The readers compared, all over the same shard files."""
    dataset = Dataset.open(uri)
    paths = [dataset.shard_location(i).path for i in range(len(dataset.shards))]
    replay = [pa.ipc.read_record_batch(b.serialize(), b.schema)
              for b in read_pyarrow(paths, batch_size)]
    w = workers

    def hf(arrow: bool, shuffle: bool) -> Callable[[], tuple[float, list[float]]]:
        touch = touch_arrow if arrow else touch_python
        return lambda: consume(read_hf(uri, batch_size, arrow, shuffle), touch)

    def stream(fmt: str, nw: int, shuffle: bool) -> Callable[[], tuple[float, list[float]]]:
        touch = touch_arrow if fmt == "arrow" else touch_python
        return lambda: consume(read_stream(uri, batch_size, fmt, nw, shuffle), touch)

    return [
        Case("pyarrow memory_map+open_stream", "arrow", "storage",
             lambda: consume(read_pyarrow(paths, batch_size), touch_arrow)),
        Case("datasets iterable (arrow)", "arrow", "storage", hf(True, False)),
        Case("ShardStream arrow, nw=0", "arrow", "storage", stream("arrow", 0, False)),
        Case("datasets iterable (python)", "python", "storage", hf(False, False)),
        Case("ShardStream torch, nw=0", "python", "storage", stream("torch", 0, False)),
        Case("datasets iterable (arrow)", "arrow", "shuffled", hf(True, True)),
        Case("ShardStream arrow, nw=0", "arrow", "shuffled", stream("arrow", 0, True)),
        Case(f"ShardStream arrow, nw={w}", "arrow", "shuffled", stream("arrow", w, True)),
        Case("datasets iterable (python)", "python", "shuffled", hf(False, True)),
        Case("ShardStream torch, nw=0", "python", "shuffled", stream("torch", 0, True)),
        Case(f"ShardStream torch, nw={w}", "python", "shuffled", stream("torch", w, True)),
        Case(f"DataLoader floor: replay, nw={w}", "arrow", "storage",
             lambda: consume(DataLoader(_Replay(replay), batch_size=None, num_workers=w,
                                        collate_fn=_same), touch_arrow)),
    ]


# --- measuring ------------------------------------------------------------------------------

def run_rounds(cases: list[Case], repeats: int, progress: Progress) -> None:
    """A warm-up round then `repeats` rounds, round-robin so drift hits every case alike.

    Every case must touch the same total: each reads every row exactly once.
    """
    task = progress.add_task("measuring", total=len(cases) * (repeats + 1))
    expected: float | None = None
    for round_ in range(repeats + 1):
        for case in cases:
            progress.update(task, description=f"round {round_}/{repeats}: {case.name}")
            gc.collect()
            start = time.perf_counter()
            touched, waits = case.run()
            seconds = time.perf_counter() - start
            expected = touched if expected is None else expected
            if not math.isclose(touched, expected, rel_tol=1e-12):
                raise RuntimeError(f"{case.name} touched {touched}, expected {expected}")
            if round_ > 0:
                case.seconds.append(seconds)
                case.waits.extend(waits[1:])  # the first batch includes worker start-up
            progress.advance(task)


def peak_memory(uri: str, copies: int, batch_size: int, workers: int) -> dict[str, Any]:
    """One epoch over the dataset listed `copies` times, in a fresh process: its peak RSS."""
    command = [sys.executable, __file__, "--memory-child", uri, "--copies", str(copies),
               "--batch-size", str(batch_size), "--workers", str(workers)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


class RssSampler:
    """Peak RSS of this process and of it plus its children, sampled in a thread.

    ru_maxrss is no use here: Linux carries it across fork and exec from the parent.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.peak_self = self.peak_all = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        own = self.process.memory_info().rss
        children = 0
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children += child.memory_info().rss
        self.peak_self = max(self.peak_self, own)
        self.peak_all = max(self.peak_all, own + children)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def memory_child(uri: str, copies: int, batch_size: int, workers: int) -> None:
    """Body of the peak-memory subprocess: one shuffled epoch, then one JSON line."""
    stream = ShardStream([uri] * copies, batch_size=batch_size, format="torch")
    start_rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with RssSampler() as sampler:
        rows = sum(len(batch["text"]) for batch in StreamLoader(stream, num_workers=workers))
    print(json.dumps({"copies": copies, "workers": workers, "rows": rows,
                      "seconds": round(time.perf_counter() - start, 2),
                      "rss_start_mb": round(start_rss / 2**20),
                      "peak_rss_trainer_mb": round(sampler.peak_self / 2**20),
                      "peak_rss_all_mb": round(sampler.peak_all / 2**20)}))


# --- reporting ------------------------------------------------------------------------------

def summarise(cases: list[Case], rows: int, arrow_bytes: int) -> list[dict[str, Any]]:
    """Best and median figures per case, with time ratios to pyarrow and to `datasets`
    (the `datasets` case with the same output and the same order)."""
    pyarrow = min(cases[0].seconds)
    hf = {(c.output, c.order): min(c.seconds) for c in cases if c.name.startswith("datasets")}
    results = []
    for case in cases:
        best, median = min(case.seconds), statistics.median(case.seconds)
        waits_ms = np.array(case.waits) * 1000
        results.append({
            "case": case.name, "output": case.output, "order": case.order,
            "seconds": [round(s, 4) for s in case.seconds],
            "best_s": round(best, 4), "median_s": round(median, 4),
            "samples_per_s_best": round(rows / best),
            "mb_per_s_best": round(arrow_bytes / MB / best),
            "samples_per_s_median": round(rows / median),
            "mb_per_s_median": round(arrow_bytes / MB / median),
            "vs_pyarrow_best": round(pyarrow / best, 3),
            "vs_datasets_best": round(hf[(case.output, case.order)] / best, 3),
            "wait_ms_p50": round(float(np.percentile(waits_ms, 50)), 3),
            "wait_ms_p99": round(float(np.percentile(waits_ms, 99)), 3),
            "wait_ms_max": round(float(waits_ms.max()), 3),
        })
    return results


def acceptance(results: list[dict[str, Any]], memory: list[dict[str, Any]],
               workers: int) -> dict[str, Any]:
    """The issue's bars, on best-of-N time ratios (least disturbed by other load).

    Like for like: the stream in storage order against pyarrow and `datasets` in storage
    order; shuffled against `datasets` shuffled. The shuffled stream's ratio to pyarrow is
    reported too: shuffling costs one gather copy of every row, which pyarrow never makes.
    """
    row = {(r["case"], r["order"]): r for r in results}
    ratio = {f"{order} {name}: {key}": row[(name, order)][key]
             for order in ("storage", "shuffled")
             for name in ("ShardStream arrow, nw=0", "ShardStream torch, nw=0")
             for key in ("vs_pyarrow_best", "vs_datasets_best")}
    floor = row[(f"DataLoader floor: replay, nw={workers}", "storage")]["best_s"]
    flat = {}
    for nw in sorted({m["workers"] for m in memory}):
        runs = sorted((m for m in memory if m["workers"] == nw), key=lambda m: m["copies"])
        peaks = [m["peak_rss_all_mb"] for m in runs]
        flat[f"num_workers={nw}"] = {"peak_rss_all_mb": peaks,
                                     "growth": round(peaks[-1] / peaks[0], 3)}
    arrow = "ShardStream arrow, nw=0: "
    torch_ = "ShardStream torch, nw=0: "
    return {
        "statistic": "best-of-N time ratio (above 1 = faster)",
        "ratios": ratio,
        f"shuffled arrow nw={workers}: vs DataLoader floor": round(
            floor / row[(f"ShardStream arrow, nw={workers}", "shuffled")]["best_s"], 3),
        "pyarrow_ok_storage_order": ratio[f"storage {arrow}vs_pyarrow_best"] >= PYARROW_BAR,
        "pyarrow_ok_shuffled": ratio[f"shuffled {arrow}vs_pyarrow_best"] >= PYARROW_BAR,
        "datasets_ok": all(ratio[f"{order} {name}vs_datasets_best"] >= 1
                           for order in ("storage", "shuffled") for name in (arrow, torch_)),
        "peak_memory": flat,
        "memory_flat": all(v["growth"] <= 1.15 for v in flat.values()),
    }


def print_table(results: list[dict[str, Any]], data: dict[str, Any]) -> None:
    table = Table(title=f"Stream throughput: {data['rows']:,} rows, "
                        f"{data['arrow_bytes'] / MB:,.0f} MB of Arrow, {data['shards']} shards, "
                        f"batch {data['batch_size']}",
                  caption="best of N; MB = 10^6 bytes of in-memory Arrow; vs pa = time ratio "
                          "to plain pyarrow; vs HF = to datasets with the same output (arrow "
                          "or python objects) and order; above 1 = faster; wait = time the "
                          "consumer spent in next() per batch (first batch excluded). "
                          "Shuffled: ShardStream's seeded two-level order; datasets' "
                          "shard order + 10k-row buffer. nw = DataLoader num_workers; "
                          "StreamLoader is a DataLoader.")
    table.add_column("order")
    table.add_column("case", no_wrap=True)
    table.add_column("out")
    for header in ("best s", "samples/s", "MB/s", "vs pa", "vs HF", "wait p99 ms",
                   "wait max ms"):
        table.add_column(header, justify="right")
    for r in results:
        table.add_row(r["order"], r["case"], r["output"], f"{r['best_s']:.3f}",
                      f"{r['samples_per_s_best']:,}", f"{r['mb_per_s_best']:,}",
                      f"{r['vs_pyarrow_best']:.2f}", f"{r['vs_datasets_best']:.2f}",
                      f"{r['wait_ms_p99']:.2f}", f"{r['wait_ms_max']:.1f}")
    console.print(table)


def print_memory(memory: list[dict[str, Any]], data: dict[str, Any]) -> None:
    table = Table(title="Peak RSS over one shuffled epoch, torch format (fresh process each)",
                  caption=f"1x = {data['arrow_bytes'] / MB:,.0f} MB; 10x = the same dataset "
                          "listed 10 times (10 times the shards and rows). RSS sampled every "
                          "10 ms; 'all' sums the trainer and its workers (pages they share "
                          "count once per process).")
    for header in ("data", "num_workers", "rows", "seconds", "RSS at start MB",
                   "peak RSS trainer MB", "peak RSS all MB"):
        table.add_column(header, justify="right")
    for m in memory:
        table.add_row(f"{m['copies']}x", str(m["workers"]), f"{m['rows']:,}",
                      f"{m['seconds']:.1f}", str(m["rss_start_mb"]),
                      str(m["peak_rss_trainer_mb"]), str(m["peak_rss_all_mb"]))
    console.print(table)


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu_model": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "pyarrow": pa.__version__,
            "torch": torch.__version__, "datasets": datasets.__version__,
            "numpy": np.__version__}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="in-memory Arrow size of the data")
    parser.add_argument("--batch-size", type=int, default=1024,
                        help="rows per batch (1024, the stage record-batch size)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers case")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.copies, args.batch_size, args.workers)
        return
    started = time.perf_counter()
    load_before = load_average()
    uri = str(WORK_DIR / "owt")
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    try:
        with console.status(f"writing ~{args.mb} MB of OpenWebText rows as shards"):
            table = build_dataset(args.mb, Path(uri))
            dataset = Dataset.open(uri)
            cases = build_cases(uri, args.batch_size, args.workers)
        data = {"rows": table.num_rows, "arrow_bytes": table.nbytes,
                "disk_bytes": dataset.manifest.total_bytes, "shards": len(dataset.shards),
                "shard_rows": SHARD_ROWS, "record_batch_rows": STAGE_BATCH_ROWS,
                "batch_size": args.batch_size, "source": "owt passages, repeated",
                "text_bytes_mean": round(pc.mean(pc.binary_length(table["text"])).as_py())}
        del table
        with Progress(console=console, transient=True) as progress:
            run_rounds(cases, args.repeats, progress)
        with console.status("peak memory at 1x and 10x data"):
            memory = [peak_memory(uri, copies, args.batch_size, workers)
                      for workers in (0, args.workers) for copies in (1, 10)]
    finally:
        shutil.rmtree(WORK_DIR, ignore_errors=True)
    results = summarise(cases, data["rows"], data["arrow_bytes"])
    print_table(results, data)
    print_memory(memory, data)
    verdict = acceptance(results, memory, args.workers)
    elapsed = time.perf_counter() - started
    write_json(RESULTS, {"machine": machine_info(), "data": data,
                "settings": {"repeats": args.repeats, "warmup_rounds": 1, "page_cache": "warm",
                             "workers": args.workers,
                             "start_method": multiprocessing.get_start_method(),
                             "hf_path": "to_hf_iterable: datasets.Dataset.from_file per shard, "
                                        "concatenate_datasets, to_iterable_dataset(num_shards)"
                                        ", .iter(batch_size)"},
                "load_average_1_5_15": {"before": load_before, "after": load_average()},
                "results": results, "memory": memory, "acceptance": verdict,
                "benchmark_seconds": round(elapsed, 1)})
    console.print(f"within {PYARROW_BAR}x of pyarrow: storage order "
                  f"{verdict['pyarrow_ok_storage_order']}, shuffled "
                  f"{verdict['pyarrow_ok_shuffled']}; >= datasets: {verdict['datasets_ok']}; "
                  f"memory flat: {verdict['memory_flat']}; took {elapsed:.0f} s; "
                  f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
