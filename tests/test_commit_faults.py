"""A stage run whose driver dies at chosen writes: readers meanwhile see one whole output (the
old or the new, never a mix), and the rerun equals an uninterrupted run.

The driver's every write and deletion (plan file, stale files, the manifest's switch, the part
folders' copies, the old generation's shards, the progress folder) is a kill point; a write
killed there leaves half a temp file, as a SIGKILL mid-write would. The kill is an exception
at that call, so nothing after it runs in the driver. Kills inside the workers, with real
SIGKILLs of the whole process tree, are tests/test_runner.py's.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.stages import runner
from gristmill.stages.base import DatasetInput
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import run_stage
from gristmill.stages.text_filter import TextFilter, TextFilterConfig
from gristmill.storage import manifest, writer
from gristmill.storage.fs import Location
from gristmill.storage.reader import Dataset

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

KILLS = 24
QUIET = RuntimeConfig(progress=False, storage=StorageConfig(max_rows_per_shard=25))
OLD = TextFilterConfig()
NEW = TextFilterConfig(max_duplicate_ngram_fraction={})
MUTATIONS = [(runner, "write_bytes_atomic"), (runner, "remove_tree"), (runner, "remove_file"),
             (manifest, "write_bytes_atomic"), (writer, "remove_file"),
             (writer, "remove_tree")]


class Killed(BaseException):
    """The driver's death at a kill point: nothing after it runs."""


class KillSwitch:
    """Counts the driver's writes and deletions and dies at number `at` (None: never)."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.seen: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module, name in MUTATIONS:
            monkeypatch.setattr(module, name, self._guard(name, getattr(module, name)))

    def _guard(self, name: str, real: Callable[..., None]) -> Callable[..., None]:
        def guarded(loc: Location, *args: bytes) -> None:
            if len(self.seen) == self.at:
                if args:
                    half = Path(f"{loc.path}.tmp-{'0' * 32}")
                    half.parent.mkdir(parents=True, exist_ok=True)
                    half.write_bytes(args[0][:len(args[0]) // 2])
                raise Killed(f"{name} {loc.path}")
            self.seen.append(f"{name} {Path(loc.path).name}")
            real(loc, *args)
        return guarded


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Brown corpus in 20 shards of 25 documents: 20 work units."""
    out = str(tmp_path_factory.mktemp("brown") / "ingest")
    run_stage(Ingest, IngestConfig(), RawFilesInput.from_args(["brown"]), out, QUIET)
    return out


def contents(out: Path) -> tuple[pa.Table, pa.Table]:
    """What a reader of the output folder and of its rejected folder gets, in id order."""
    return (Dataset.open(str(out)).to_table().sort_by("id"),
            Dataset.open(str(out / "rejected")).to_table().sort_by("id"))


@pytest.fixture(scope="module")
def runs(corpus: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An output committed under OLD, and the same output replaced by NEW uninterrupted."""
    root = tmp_path_factory.mktemp("runs")
    run_stage(TextFilter, OLD, DatasetInput(corpus), str(root / "old"), QUIET)
    shutil.copytree(root / "old", root / "new")
    run_stage(TextFilter, NEW, DatasetInput(corpus), str(root / "new"), QUIET)
    return {"old": root / "old", "new": root / "new"}


def kill_points(corpus: str, runs: dict[str, Path], tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every write and deletion of an uninterrupted replacing run, in order."""
    out = tmp_path / "counted"
    shutil.copytree(runs["old"], out)
    switch = KillSwitch(None)
    with monkeypatch.context() as patch:
        switch.install(patch)
        run_stage(TextFilter, NEW, DatasetInput(corpus), str(out), QUIET)
    return switch.seen


def test_kills_at_the_drivers_writes_leave_a_whole_output_and_a_rerun_equal_to_none(
        corpus: str, runs: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    points = kill_points(corpus, runs, tmp_path, monkeypatch)
    commits = [i for i, point in enumerate(points) if point.endswith("manifest.json")]
    assert len(commits) == 2, points
    chosen = sorted(set(commits) | {commits[0] - 1, commits[-1] + 1} | set(
        random.Random(22).sample(range(len(points)), min(KILLS, len(points)))))
    assert len(chosen) >= 20, points
    old, new = contents(runs["old"]), contents(runs["new"])
    for at in chosen:
        out = tmp_path / f"killed-{at}"
        shutil.copytree(runs["old"], out)
        switch = KillSwitch(at)
        with monkeypatch.context() as patch:
            switch.install(patch)
            with pytest.raises(Killed):
                run_stage(TextFilter, NEW, DatasetInput(corpus), str(out), QUIET)
        assert contents(out) in (old, new), f"a mixed output after a kill at {points[at]}"
        result = run_stage(TextFilter, NEW, DatasetInput(corpus), str(out), QUIET)
        assert contents(out) == new, f"the rerun after a kill at {points[at]} differs"
        assert result.stats.rows_in == result.stats.rows_out + result.stats.rows_rejected
        for folder in (out, out / "rejected"):
            listed = {s.file for s in Dataset.open(str(folder), verify=True).shards}
            assert {p.name for p in folder.iterdir() if p.name != "manifest.json"
                    and p.is_file()} == listed, f"stray files after a kill at {points[at]}"
        assert not (out / runner.PROGRESS_DIR).exists()
        embedded = json.loads((out / "manifest.json").read_text())["parts"]["rejected"]
        assert json.loads((out / "rejected" / "manifest.json").read_text()) == embedded
        shutil.rmtree(out)
