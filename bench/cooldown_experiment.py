"""Cooldown temperature sampling on a tiny byte-level language model: T=1, T=5 and Cooldown.

Why: "Upsample or Upweight?" (2024; METHODS.md section 5) claims that training at a high
temperature T and then switching once to T=1 keeps the low-resource gains of high-T sampling
while avoiding its cost: the small domains, drawn far more often than their size warrants,
are repeated for many epochs and overfit, and the large domains get fewer samples. This
script checks that claim end to end on gristmill's own pieces: the fortune files of 12
languages go through the real ingest stage, each language becomes one dataset, and
`MixtureStream` feeds the same tiny model (same seed, init, steps and batch size) under
the three schedules. Held-out loss per language is measured as it trains.

Run: python bench/cooldown_experiment.py [--steps 2000] [--batch-size 32] [--quick]
Writes bench/results/cooldown_experiment.json and .png (not with --quick unless asked) and
prints a table. Losses are mean byte cross-entropy in bits per byte (log base 2).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from common import load_average, write_json
from rich.console import Console
from rich.table import Table
from torch import nn

from gristmill.loading.mixture import DomainSpec, MixtureConfig, MixtureStream
from gristmill.scoring.temperature import ConstantSchedule, CooldownSchedule, temperature_probs
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".gristmill" / "bench" / "cooldown_experiment"
RESULTS = Path(__file__).resolve().parent / "results"
JSON_PATH = RESULTS / "cooldown_experiment.json"
PLOT_PATH = RESULTS / "cooldown_experiment.png"

LOW_RESOURCE = ("bg", "ga", "pt-br", "eo")
HIGH_RESOURCE = ("ru", "de", "en")
SEPARATOR = b"\x1e"  # ASCII record separator between packed fortunes; the model learns it too
BITS = 1.0 / math.log(2.0)
SCHEDULES = {
    "T=1": ConstantSchedule(value=1.0),
    "T=5": ConstantSchedule(value=5.0),
    "Cooldown": CooldownSchedule(high=5.0, low=1.0, switch_fraction=0.5),
}
COLORS = {"T=1": "tab:blue", "T=5": "tab:red", "Cooldown": "tab:green"}

console = Console()
if not console.is_terminal:
    console.width = 120


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers; stored in the JSON next to them."""

    steps: int
    batch_size: int
    context: int
    d_model: int
    layers: int
    heads: int
    lr: float
    warmup_fraction: float
    weight_decay: float
    evals: int
    heldout_fraction: float
    heldout_cap: int
    eval_windows_cap: int
    probe_windows_cap: int
    threads: int
    seed: int


@dataclass
class Domain:
    """One language: its packed training windows on disk and its held-out windows in memory."""

    name: str
    uri: str
    train_records: int
    heldout_records: int
    train_windows: int
    heldout: torch.Tensor  # (n, context + 1) uint8, packed from held-out records only
    probe: torch.Tensor  # a fixed subset of training windows: the train side of the gap


@dataclass
class RunResult:
    """One schedule's curves, final losses, repetition counts and timings."""

    schedule: str
    eval_steps: list[int] = field(default_factory=list)
    heldout: dict[str, list[float]] = field(default_factory=dict)
    train_probe: dict[str, list[float]] = field(default_factory=dict)
    train_loss: list[float] = field(default_factory=list)
    seen: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)  # at the end: was it contended?


# --- data ---------------------------------------------------------------------------------

def ingest_fortunes(work: Path) -> pa.Table:
    """Rows through the real ingest stage, so the experiment sees what a pipeline would keep
    (records that are not valid UTF-8, such as most of fortunes-eo-iso3, are rejected)."""
    import ray

    from gristmill.config import RuntimeConfig
    from gristmill.stages.ingest import Ingest, IngestConfig
    from gristmill.stages.raw_inputs import RawFilesInput
    from gristmill.stages.runner import run_stage

    result = run_stage(Ingest, IngestConfig(promote_fields=["lang"]),
                       RawFilesInput.from_args(["fortunes"]), str(work / "ingest"),
                       RuntimeConfig(progress=False))
    ray.shutdown()  # free the two cores for training
    stats = result.stats
    console.print(f"ingest: {stats.rows_out} rows kept, {stats.rows_rejected} rejected "
                  f"{dict(stats.reject_reasons)} ({result.wall_seconds:.1f} s"
                  f"{', reused' if result.reused else ''})")
    return Dataset.open(result.output).to_table(columns=["id", "text", "lang"])


def seeded_rank(key: str, seed: int) -> int:
    """A stable pseudo-random rank for a row id: splits and orders that no rerun changes."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(),
                          "big")


def split_language(table: pa.Table, lang: str, settings: Settings) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts) of one language, exact duplicates dropped first so a
    held-out record cannot also be trained on; the split is by a seeded hash of the id."""
    rows = table.filter(pc.equal(table["lang"], lang))
    texts = dict(zip(rows["id"].to_pylist(), rows["text"].to_pylist(), strict=True))
    ordered = sorted(texts, key=lambda key: seeded_rank(key, settings.seed))
    held = min(settings.heldout_cap, max(1, round(settings.heldout_fraction * len(ordered))))
    return [texts[k] for k in ordered[held:]], [texts[k] for k in ordered[:held]]


def pack_windows(texts: list[str], width: int) -> np.ndarray:
    """Records joined by SEPARATOR and cut into equal windows of `width` bytes, so that a row
    is a fixed number of bytes and sizing domains by rows is sizing them by tokens (a short
    tail that fills no window is dropped)."""
    stream = SEPARATOR.join(text.encode("utf-8") for text in texts) + SEPARATOR
    count = len(stream) // width
    return np.frombuffer(stream[:count * width], dtype=np.uint8).reshape(count, width)


def build_domains(table: pa.Table, work: Path, settings: Settings) -> list[Domain]:
    """One committed dataset of training windows per language, largest first."""
    width = settings.context + 1
    domains = []
    for lang in sorted(set(table["lang"].to_pylist())):
        train, heldout = split_language(table, lang, settings)
        windows = pack_windows(train, width)
        uri = str(work / "domains" / lang)
        shutil.rmtree(uri, ignore_errors=True)
        data = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(windows),
                                                    [None, pa.py_buffer(windows.tobytes())])
        write_table(uri, pa.table({"window": pa.array(np.arange(len(windows)), pa.int64()),
                                   "bytes": data}), max_rows=4096)
        held = pack_windows(heldout, width)[:settings.eval_windows_cap]
        probe_rows = np.random.default_rng([settings.seed, len(domains)]).permutation(
            len(windows))[:settings.probe_windows_cap]
        domains.append(Domain(lang, uri, len(train), len(heldout), len(windows),
                              torch.from_numpy(held.copy()),
                              torch.from_numpy(windows[np.sort(probe_rows)].copy())))
    return sorted(domains, key=lambda d: -d.train_windows)


def batch_tensor(batch: pa.Table, width: int) -> torch.Tensor:
    """A MixtureStream batch's windows as a (batch, width) byte tensor."""
    raw = b"".join(batch.column("bytes").to_pylist())
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, width)


# --- model --------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm causal self-attention and MLP: the smallest transformer layer worth having."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                  v.transpose(1, 2), is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    """Next-byte model over raw UTF-8: no tokenizer, so every language is on equal terms."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, settings.d_model)
        self.position = nn.Parameter(torch.randn(settings.context, settings.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(settings.d_model, settings.heads)
                                    for _ in range(settings.layers))
        self.norm = nn.LayerNorm(settings.d_model)
        self.head = nn.Linear(settings.d_model, 256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def window_loss(model: ByteLM, windows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of predicting bytes 1..C of each window from the bytes before."""
    tokens = windows.long()
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1),
                           reduction=reduction)


@torch.inference_mode()
def evaluate(model: ByteLM, windows: torch.Tensor, chunk: int = 512) -> float:
    """Mean byte cross-entropy over all windows, in bits per byte."""
    model.eval()
    total = sum(float(window_loss(model, windows[i:i + chunk], "sum"))
                for i in range(0, len(windows), chunk))
    model.train()
    return total / (len(windows) * (windows.shape[1] - 1)) * BITS


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up, then cosine decay to a tenth: the usual shape, same for every run."""
    warmup = max(1, round(settings.warmup_fraction * settings.steps))
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# --- training -----------------------------------------------------------------------------

def eval_points(settings: Settings) -> list[int]:
    """Step counts (updates done) at which held-out loss is measured, the last one included."""
    return sorted({round(settings.steps * k / settings.evals)
                   for k in range(1, settings.evals + 1)})


def record_eval(result: RunResult, model: ByteLM, domains: list[Domain], step: int) -> None:
    result.eval_steps.append(step)
    for domain in domains:
        result.heldout.setdefault(domain.name, []).append(evaluate(model, domain.heldout))
        result.train_probe.setdefault(domain.name, []).append(evaluate(model, domain.probe))


def train(name: str, domains: list[Domain], settings: Settings,
          initial: dict[str, torch.Tensor]) -> RunResult:
    """One schedule from the shared initial weights; the mixture decides which rows it sees."""
    config = MixtureConfig(
        domains=[DomainSpec(name=d.name, uri=d.uri) for d in domains],
        schedule=SCHEDULES[name], total_steps=settings.steps,
        batch_size=settings.batch_size, seed=settings.seed)
    model = ByteLM(settings)
    model.load_state_dict(initial)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                                  weight_decay=settings.weight_decay)
    result = RunResult(name)
    counts = {d.name: np.zeros(d.train_windows, dtype=np.int64) for d in domains}
    checkpoints = set(eval_points(settings))
    timers = {"data": 0.0, "compute": 0.0, "eval": 0.0}
    width = settings.context + 1
    window_loss_sum, window_steps = 0.0, 0
    started = clock = time.perf_counter()
    for step, batch in enumerate(MixtureStream(config)):
        tokens = batch_tensor(batch, width)
        for lang, rows in _rows_by_domain(batch).items():
            np.add.at(counts[lang], rows, 1)
        now = time.perf_counter()
        timers["data"] += now - clock
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss = window_loss(model, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window_loss_sum += loss.item() * BITS
        window_steps += 1
        clock = time.perf_counter()
        timers["compute"] += clock - now
        if step + 1 in checkpoints:
            result.train_loss.append(window_loss_sum / window_steps)
            window_loss_sum, window_steps = 0.0, 0
            record_eval(result, model, domains, step + 1)
            timers["eval"] += time.perf_counter() - clock
            _print_progress(name, step + 1, result, time.perf_counter() - started)
            clock = time.perf_counter()
    result.seconds = {**{k: round(v, 2) for k, v in timers.items()},
                      "total": round(time.perf_counter() - started, 2)}
    result.seen = {lang: _repetition(c) for lang, c in counts.items()}
    result.load_average = load_average()
    return result


def _rows_by_domain(batch: pa.Table) -> dict[str, np.ndarray]:
    langs = np.asarray(batch.column("domain").to_pylist(), dtype=object)
    rows = batch.column("window").to_numpy()
    return {lang: rows[langs == lang] for lang in set(langs)}


def _repetition(counts: np.ndarray) -> dict[str, float]:
    """How often a domain's training windows were drawn: repetition is what overfits."""
    draws = int(counts.sum())
    return {"windows": len(counts), "draws": draws, "distinct": int((counts > 0).sum()),
            "epochs": round(draws / len(counts), 3), "max_repeats": int(counts.max())}


def _print_progress(name: str, step: int, result: RunResult, elapsed: float) -> None:
    low = group_mean(result.heldout, LOW_RESOURCE, -1)
    high = group_mean(result.heldout, HIGH_RESOURCE, -1)
    console.print(f"  {name:>8} step {step:>5}: train {result.train_loss[-1]:.3f}  held-out "
                  f"low {low:.3f} high {high:.3f} bits/byte  ({elapsed:.0f} s)")


def group_mean(curves: dict[str, list[float]], names: tuple[str, ...] | list[str],
               index: int) -> float:
    present = [curves[n][index] for n in names if n in curves]
    return float(np.mean(present)) if present else float("nan")


# --- report -------------------------------------------------------------------------------

def print_table(runs: list[RunResult], domains: list[Domain]) -> None:
    """Final held-out loss per language and schedule, plus the group averages."""
    table = Table(title="Final held-out loss (bits/byte, lower is better)")
    table.add_column("domain")
    table.add_column("train windows", justify="right")
    table.add_column("held-out bytes", justify="right")
    for run in runs:
        table.add_column(run.schedule, justify="right")
    table.add_column("epochs T=1 / T=5 / Cooldown", justify="right")
    for domain in domains:
        finals = [run.heldout[domain.name][-1] for run in runs]
        best = min(finals)
        cells = [f"[bold]{v:.3f}[/bold]" if v == best else f"{v:.3f}" for v in finals]
        epochs = " / ".join(f"{run.seen[domain.name]['epochs']:.2f}" for run in runs)
        table.add_row(domain.name, str(domain.train_windows),
                      str(domain.heldout.shape[0] * (domain.heldout.shape[1] - 1)),
                      *cells, epochs)
    for label, names in (("low avg (bg ga pt-br eo)", LOW_RESOURCE),
                         ("high avg (ru de en)", HIGH_RESOURCE),
                         ("all 12 avg", [d.name for d in domains])):
        table.add_row(label, "", "", *(f"{group_mean(r.heldout, names, -1):.3f}" for r in runs),
                      "", style="italic")
    console.print(table)


def plot(runs: list[RunResult], domains: list[Domain], settings: Settings, path: Path) -> None:
    """One panel per language (largest first) comparing the schedules, plus group averages
    and a panel of how many epochs of each language every schedule drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 4, figsize=(16, 13))
    flat = axes.ravel()
    groups = [("low-resource avg (bg ga pt-br eo)", list(LOW_RESOURCE)),
              ("high-resource avg (ru de en)", list(HIGH_RESOURCE)),
              ("all 12 languages avg", [d.name for d in domains])]
    for ax, (title, names) in zip(flat[:3], groups, strict=True):
        for run in runs:
            ax.plot(run.eval_steps, [group_mean(run.heldout, names, i)
                                     for i in range(len(run.eval_steps))],
                    marker="o", ms=3, color=COLORS[run.schedule], label=run.schedule)
        _style(ax, title, settings)
    _plot_epochs(flat[3], runs, domains)
    for ax, domain in zip(flat[4:], domains, strict=True):
        for run in runs:
            ax.plot(run.eval_steps, run.heldout[domain.name], marker="o", ms=3,
                    color=COLORS[run.schedule], label=f"{run.schedule} held-out")
            if domain.name in LOW_RESOURCE:
                ax.plot(run.eval_steps, run.train_probe[domain.name], ls=":", lw=1.2,
                        color=COLORS[run.schedule], label=f"{run.schedule} train windows")
        _style(ax, f"{domain.name}: {domain.train_windows} train windows", settings)
    flat[0].legend(loc="upper right", fontsize=9)
    flat[4 + next(i for i, d in enumerate(domains) if d.name in LOW_RESOURCE)].legend(
        fontsize=7, loc="upper right")
    fig.suptitle(f"Held-out bits/byte by schedule: {settings.layers}-layer d={settings.d_model} "
                 f"byte transformer, {settings.steps} steps x {settings.batch_size} windows of "
                 f"{settings.context} bytes; dashed line = Cooldown's switch to T=1; dotted "
                 f"(low-resource panels) = loss on training windows", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _style(ax: Any, title: str, settings: Settings) -> None:
    ax.axvline(settings.steps * SCHEDULES["Cooldown"].switch_fraction, color="grey", ls="--",
               lw=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("bits/byte", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def _plot_epochs(ax: Any, runs: list[RunResult], domains: list[Domain]) -> None:
    positions = np.arange(len(domains))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ax.bar(positions + (i - (len(runs) - 1) / 2) * width,
               [run.seen[d.name]["epochs"] for d in domains], width,
               color=COLORS[run.schedule], label=run.schedule)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(positions, [d.name for d in domains], fontsize=8, rotation=45)
    ax.set_title("epochs of training windows drawn (log)", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, axis="y")


def machine_info() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu_model": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "pyarrow": pa.__version__, "numpy": np.__version__}


def results_json(settings: Settings, runs: list[RunResult], domains: list[Domain],
                 initial_heldout: dict[str, float], timing: dict[str, Any]) -> dict[str, Any]:
    sizes = [d.train_windows for d in domains]
    probs = {f"T={t:g}": dict(zip([d.name for d in domains],
                                  np.round(temperature_probs(sizes, t), 5).tolist(), strict=True))
             for t in (1.0, 5.0)}
    return {
        "settings": settings.__dict__,
        "machine": machine_info(),
        "units": "held-out loss = mean byte cross-entropy in bits per byte (log2)",
        "low_resource": list(LOW_RESOURCE), "high_resource": list(HIGH_RESOURCE),
        "domains": [{"name": d.name, "train_records": d.train_records,
                     "heldout_records": d.heldout_records, "train_windows": d.train_windows,
                     "heldout_windows": int(d.heldout.shape[0]),
                     "probe_windows": int(d.probe.shape[0])} for d in domains],
        "sampling_probabilities": probs,
        "initial_heldout": initial_heldout,
        "runs": {run.schedule: {
            "eval_steps": run.eval_steps, "heldout": run.heldout,
            "train_probe": run.train_probe, "train_loss_window_mean": run.train_loss,
            "final": {d.name: run.heldout[d.name][-1] for d in domains},
            "final_low_avg": group_mean(run.heldout, LOW_RESOURCE, -1),
            "final_high_avg": group_mean(run.heldout, HIGH_RESOURCE, -1),
            "final_all_avg": group_mean(run.heldout, [d.name for d in domains], -1),
            "seen": run.seen, "seconds": run.seconds,
            "load_average_at_end": run.load_average} for run in runs},
        "timing": timing,
    }


# --- main ---------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", type=int, default=64, help="bytes of context")
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--evals", type=int, default=10, help="held-out evaluations per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 150 steps, 3 evals, no result files unless given")
    parser.add_argument("--json", type=Path, default=None, help=f"default {JSON_PATH}")
    parser.add_argument("--plot", type=Path, default=None, help=f"default {PLOT_PATH}")
    parser.add_argument("--keep-scratch", action="store_true",
                        help=f"keep {WORK_DIR} (a rerun then reuses the ingest)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.evals = min(args.steps, 150), min(args.evals, 3)
    else:
        args.json = args.json or JSON_PATH
        args.plot = args.plot or PLOT_PATH
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("ray").setLevel(logging.WARNING)
    settings = Settings(
        steps=args.steps, batch_size=args.batch_size, context=args.context,
        d_model=args.d_model, layers=args.layers, heads=4, lr=args.lr, warmup_fraction=0.05,
        weight_decay=0.01, evals=args.evals, heldout_fraction=0.1, heldout_cap=200,
        eval_windows_cap=192, probe_windows_cap=48, threads=args.threads, seed=args.seed)
    wall = time.perf_counter()
    load_before = load_average()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    try:
        clock = time.perf_counter()
        table = ingest_fortunes(WORK_DIR)
        domains = build_domains(table, WORK_DIR, settings)
        prepare = time.perf_counter() - clock
        console.print(f"{len(domains)} languages, training windows of {settings.context + 1} "
                      f"bytes: " + ", ".join(f"{d.name} {d.train_windows}" for d in domains)
                      + f" (data ready in {prepare:.1f} s)")
        torch.manual_seed(settings.seed)
        initial = {k: v.clone() for k, v in ByteLM(settings).state_dict().items()}
        start_model = ByteLM(settings)
        start_model.load_state_dict(initial)
        initial_heldout = {d.name: evaluate(start_model, d.heldout) for d in domains}
        runs = []
        for name in SCHEDULES:
            console.print(f"[bold]{name}[/bold]")
            runs.append(train(name, domains, settings, initial))
    finally:
        if not args.keep_scratch:
            shutil.rmtree(WORK_DIR, ignore_errors=True)
    print_table(runs, domains)
    timing = {"prepare_s": round(prepare, 2), "total_s": round(time.perf_counter() - wall, 2),
              "load_average_before": load_before, "load_average_after": load_average()}
    for run in runs:
        console.print(f"{run.schedule:>8}: {run.seconds['total']:.0f} s "
                      f"(data {run.seconds['data']:.1f}, compute {run.seconds['compute']:.1f}, "
                      f"eval {run.seconds['eval']:.1f}); "
                      + ", ".join(f"{n} {run.seen[n]['epochs']:.1f} ep "
                                  f"{run.seen[n]['distinct']}/{run.seen[n]['windows']} distinct"
                                  for n in LOW_RESOURCE))
    console.print("train-window minus held-out loss at the end (negative = memorising): "
                  + "; ".join(f"{run.schedule} " + " ".join(
                      f"{n} {run.train_probe[n][-1] - run.heldout[n][-1]:+.2f}"
                      for n in LOW_RESOURCE) for run in runs))
    if args.plot:
        plot(runs, domains, settings, args.plot)
        console.print(f"plot: {args.plot}")
    timing["total_s"] = round(time.perf_counter() - wall, 2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = results_json(settings, runs, domains, initial_heldout, timing)
        write_json(args.json, data, indent=1)
        console.print(f"results: {args.json}")
    console.print(f"total {timing['total_s']:.0f} s (load average {load_before} -> "
                  f"{timing['load_average_after']})")


if __name__ == "__main__":
    main()
