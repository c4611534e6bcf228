"""The generic runner: reuse, resume after a real kill, clear failures, the row contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import ray.cloudpickle

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.stages.base import (
    DatasetInput,
    MapStage,
    Rejections,
    Split,
    StageConfig,
    StageInputError,
)
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import (
    PROGRESS_DIR,
    StageFailedError,
    run_stage,
)
from gristmill.stages.text_filter import TextFilter, TextFilterConfig
from gristmill.storage.fs import resolve
from gristmill.storage.manifest import is_committed
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = pytest.mark.usefixtures("ray_local")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DRIVER = Path(__file__).parent / "drivers" / "slow_text_filter.py"
SHARD_ROWS = 25
QUIET = RuntimeConfig(progress=False, storage=StorageConfig(max_rows_per_shard=SHARD_ROWS))


@pytest.fixture(scope="module")
def brown(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Brown corpus ingested into 20 shards of 25 documents: 20 work units."""
    out = str(tmp_path_factory.mktemp("brown") / "ingest")
    run_stage(Ingest, IngestConfig(), RawFilesInput.from_args(["brown"]), out, QUIET)
    return out


def ids(uri: str) -> list[str]:
    return Dataset.open(uri).to_table(columns=["id"]).column("id").to_pylist()


def shard_stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.arrow")}


def test_same_inputs_config_and_code_reuse_the_committed_output(brown: str,
                                                                 tmp_path: Path) -> None:
    out = str(tmp_path / "filtered")
    first = run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), out, QUIET)
    stamps = shard_stamps(tmp_path / "filtered")
    second = run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), out, QUIET)
    assert not first.reused and second.reused
    assert second.cache_key == first.cache_key
    assert shard_stamps(tmp_path / "filtered") == stamps
    stats = first.stats
    assert stats.rows_in == 500 == stats.rows_out + stats.rows_rejected
    assert stats.units_total == 500 // SHARD_ROWS


def test_a_config_change_recomputes(brown: str, tmp_path: Path) -> None:
    out = str(tmp_path / "filtered")
    strict = run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), out, QUIET)
    loose = run_stage(TextFilter, TextFilterConfig(max_duplicate_ngram_fraction={}),
                      DatasetInput(brown), out, QUIET)
    assert not loose.reused and loose.cache_key != strict.cache_key
    assert loose.stats.rows_out > strict.stats.rows_out
    assert Dataset.open(out).manifest.lineage.config["max_duplicate_ngram_fraction"] == {}


def _kill_session(session_id: int) -> None:
    """SIGKILL every process of the driver's session: the driver, its Ray, its workers."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue


def _wait_for_records(progress: Path, at_least: int, proc: subprocess.Popen,
                      timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list(progress.glob("unit-*.json"))) if progress.exists() else 0
        if done >= at_least:
            return done
        if proc.poll() is not None:
            pytest.fail(f"driver exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no unit finished in time")


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_units_or_duplicating_rows(
        brown: str, tmp_path: Path) -> None:
    reference = run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown),
                          str(tmp_path / "reference"), QUIET)
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, str(DRIVER), brown, str(out), "0.4"], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(out / PROGRESS_DIR, 3, proc)
    finally:
        _kill_session(proc.pid)
        proc.wait()
    finished_before = sorted(p.name for p in (out / PROGRESS_DIR).glob("unit-*.json"))
    assert 3 <= len(finished_before) < 20
    assert not is_committed(resolve(str(out)))
    stamps_before = shard_stamps(out)

    rerun = subprocess.run([sys.executable, str(DRIVER), brown, str(out), "0"], env=env,
                           capture_output=True, text=True, timeout=300, check=True)
    assert '"units_reused":' in rerun.stdout
    manifest = Dataset.open(str(out)).manifest
    assert manifest.stats.units_reused == len(finished_before)
    finished_units = {name.removeprefix("unit-").removesuffix(".json")
                      for name in finished_before}
    untouched = {n: t for n, t in stamps_before.items() if n.split("-")[2] in finished_units}
    assert untouched
    stamps_after = shard_stamps(out)
    assert {n: stamps_after[n] for n in untouched} == untouched

    kept, expected = ids(str(out)), ids(reference.output)
    assert len(kept) == len(set(kept)) == len(expected)
    assert set(kept) == set(expected)
    rejected = ids(str(out / "rejected"))
    assert sorted(rejected) == sorted(ids(reference.rejected))
    assert manifest.stats.rows_in == 500 == len(kept) + len(rejected)


def test_a_corrupt_input_shard_fails_its_unit_clearly_and_keeps_the_rest(
        brown: str, tmp_path: Path) -> None:
    copy = tmp_path / "brown"
    copy.mkdir()
    for item in Path(brown).iterdir():
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    victim = sorted(copy.glob("part-*.arrow"))[3]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "filtered"
    with pytest.raises(StageFailedError) as failure:
        run_stage(TextFilter, TextFilterConfig(), DatasetInput(str(copy)), str(out), QUIET)
    message = str(failure.value)
    assert "1 of 20 units failed" in message
    assert victim.name in message and "CorruptShardError" in message
    assert len(list((out / PROGRESS_DIR).glob("unit-*.json"))) == 19
    assert not (out / "manifest.json").exists()


class LosesRows(MapStage[StageConfig]):
    """A broken stage (a fake, to test the runner's guard): it drops a row silently."""

    name = "loses_rows"

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema

    def process(self, batch: pa.Table) -> Split:
        return Split(batch.slice(1), batch.slice(0, 0))


def test_a_stage_that_loses_rows_is_stopped(tmp_path: Path) -> None:
    source = str(tmp_path / "in")
    write_table(source, pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"]}))
    with pytest.raises(StageFailedError, match="StageContractError"):
        run_stage(LosesRows, StageConfig(), DatasetInput(source), str(tmp_path / "out"), QUIET)


def test_a_failed_rerun_leaves_the_previous_output_readable(brown: str, tmp_path: Path) -> None:
    out = str(tmp_path / "filtered")
    first = run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), out, QUIET)
    with pytest.raises(StageFailedError, match="setup failed"):
        run_stage(FailsSetup, StageConfig(), DatasetInput(brown), out, QUIET)
    survivor = Dataset.open(out, verify=True)
    assert survivor.manifest.lineage.cache_key == first.cache_key
    assert survivor.num_rows == first.stats.rows_out


def test_a_replaced_output_keeps_no_shards_of_the_old_generation(brown: str,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), str(out), QUIET)
    run_stage(TextFilter, TextFilterConfig(min_words=10), DatasetInput(brown), str(out), QUIET)
    dataset = Dataset.open(str(out), verify=True)
    assert sorted(p.name for p in out.glob("*.arrow")) == sorted(s.file for s in dataset.shards)
    rejected = dataset.rejected
    assert sorted(p.name for p in (out / "rejected").glob("*.arrow")) == sorted(
        s.file for s in rejected.shards)
    assert not (out / PROGRESS_DIR).exists()


def test_a_storage_change_recomputes(brown: str, tmp_path: Path) -> None:
    out = str(tmp_path / "filtered")
    run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), out, QUIET)
    sha = QUIET.with_(storage=QUIET.storage.with_(checksum="sha256"))
    again = run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), out, sha)
    assert not again.reused
    assert Dataset.open(out).shards[0].checksum.startswith("sha256:")


def test_an_output_inside_the_input_is_refused(brown: str) -> None:
    with pytest.raises(StageInputError, match="overlaps input"):
        run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), brown, QUIET)
    assert Dataset.open(brown).num_rows == 500


class FailsSetup(LosesRows):
    """A fake whose model load fails, to test that the failure is reported by the runner."""

    name = "fails_setup"

    def setup(self) -> None:
        raise FileNotFoundError("model weights not found at /models/missing")


def test_a_failing_setup_is_a_clear_stage_failure(tmp_path: Path) -> None:
    source = str(tmp_path / "in")
    write_table(source, pa.table({"id": ["a"], "text": ["x"]}))
    with pytest.raises(StageFailedError, match="setup failed: FileNotFoundError: model weights"):
        run_stage(FailsSetup, StageConfig(), DatasetInput(source), str(tmp_path / "out"), QUIET)


def test_wrong_columns_are_refused_before_any_work(tmp_path: Path) -> None:
    source = str(tmp_path / "in")
    write_table(source, pa.table({"id": ["a"], "text": [3]}))
    with pytest.raises(StageInputError, match="column 'text' is int64"):
        run_stage(TextFilter, TextFilterConfig(), DatasetInput(source),
                  str(tmp_path / "out"), QUIET)
    assert not (tmp_path / "out").exists()


class DiesOnOneShard(LosesRows):
    """A fake whose worker process dies (as under the kernel's OOM killer) on the batch that
    holds id 'c', to test that only that unit fails and the pool goes on."""

    name = "dies_on_one_shard"

    def process(self, batch: pa.Table) -> Split:
        if "c" in batch.column("id").to_pylist():
            os._exit(9)
        return Rejections(batch.num_rows).split(batch, self.name)


def test_a_worker_that_dies_fails_only_its_unit_and_the_rest_are_recorded(
        tmp_path: Path) -> None:
    source = str(tmp_path / "in")
    write_table(source, pa.table({"id": list("abcdef"), "text": list("uvwxyz")}),
                max_rows=1)
    out = tmp_path / "out"
    storage = QUIET.with_(storage=QUIET.storage.with_(max_rows_per_shard=1))
    with pytest.raises(StageFailedError, match=r"1 of 6 units failed.*worker was lost"):
        run_stage(DiesOnOneShard, StageConfig(), DatasetInput(source), str(out), storage)
    assert len(list((out / PROGRESS_DIR).glob("unit-*.json"))) == 5
