"""What the peer benches share: a peer's own virtualenv, and the peak RSS of a run's whole
process tree."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def venv_python(venv: Path, requirement: str) -> Path:
    """A virtualenv holding `requirement` (space-separated pip arguments), created and
    installed on first use, so a peer never enters the project's own environment."""
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    if not marker.exists() or marker.read_text() != requirement:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirement.split()],
                       check=True)
        marker.write_text(requirement)
    return python


def timed_run(argv: list[str], cwd: Path, label: str) -> tuple[float, TreeRss]:
    """Run one fresh child process: its wall seconds and its tree's sampled memory; a failed
    run raises with the tail of its stderr."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, cwd=cwd)
    with TreeRss(child.pid) as rss:
        _, stderr = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{stderr[-3000:]}")
    return wall, rss


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class TreeRss:
    """Peak RSS summed over a process and all its descendants, sampled in a thread; also the
    root process's own peak (a driver's, when the tree is a Ray run)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval, self.peak, self.root_peak = interval, 0, 0
        self.at_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        """Sum the tree; at a new peak, keep what each kind of process held (by name)."""
        held: dict[str, int] = {}
        with contextlib.suppress(psutil.Error):
            self.root_peak = max(self.root_peak, self.root.memory_info().rss)
            for process in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    name = process.name()
                    held[name] = held.get(name, 0) + process.memory_info().rss
        total = sum(held.values())
        if total > self.peak:
            self.peak, self.at_peak = total, held

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
