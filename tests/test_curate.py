"""The end-to-end curate flow: killed part-way and started again, it finishes without
redoing the steps that had committed (slow: real Ray, Prefect, MiniLM)."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gristmill.storage.reader import Dataset

pytestmark = pytest.mark.slow


def _config(tmp_path: Path) -> Path:
    config = {
        "sources": ["brown"], "max_records": 60, "work_dir": str(tmp_path / "run"),
        "text_filter": {"min_words": 50},
        "quality": {"budget": 60, "law": {"preset": "datacomp_medium", "rescale": True}},
        "prune": {"config": {"clustering": {"clusters": 3},
                             "embed": {"embedder": {"max_seq_length": 64}}}},
        "mix": {"total_steps": 20, "batch_size": 8},
        "runtime": {"progress": False},
    }
    path = tmp_path / "curate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _curate(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gristmill.cli", "run", "curate", "-c",
                             str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_a_killed_run_resumes_at_the_first_unfinished_step(tmp_path: Path) -> None:
    config, run = _config(tmp_path), tmp_path / "run"
    first = _curate(config)
    deadline = time.monotonic() + 600
    while not (run / "text_filter" / "manifest.json").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "text_filter never committed"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (run / "final" / "manifest.json").exists()
    done = {step: (run / step / "manifest.json").read_bytes() for step in ("text_filter",)}

    second = _curate(config)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output
    for step, manifest in done.items():
        assert (run / step / "manifest.json").read_bytes() == manifest, f"{step} was redone"
    final = Dataset.open(str(run / "final"))
    assert final.num_rows == 20 * 8
    chain = ["ingest", "text_filter", "quality: score", "quality: select pool", "prune: embed",
             "prune: prune_score", "prune: prune_select"]
    funnel = {m["step"]: [int(m[key].replace(",", "")) for key in ("rows_in", "out", "rej")]
              for m in re.finditer(r"' - (?P<step>[\w: ]+): (?P<rows_in>[\d,]+) in, "
                                   r"(?P<out>[\d,]+) out, (?P<rej>[\d,]+) rejected",
                                   output)}
    assert list(funnel)[:len(chain)] == chain, output
    for before, after in itertools.pairwise(chain):
        assert funnel[before][1] == funnel[after][0], f"rows lost between {before} and {after}"
    for step in chain:
        rows_in, rows_out, rejected = funnel[step]
        assert rows_in == rows_out + rejected, step
