"""The generic runner: reuse, resume after a real kill, clear failures, the row contract."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

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


def copy_of(dataset: str, folder: Path) -> Path:
    """A dataset's files copied to `folder`, to damage without touching the fixture."""
    folder.mkdir()
    for item in Path(dataset).iterdir():
        if item.is_file():
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


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
    copy = copy_of(brown, tmp_path / "brown")
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


class FailsOnId(TextFilter):
    """The text filter, made to fail on chosen ids (a class attribute, so a test can leave
    progress records behind as a killed run does, then rerun the same stage)."""

    fail_on: ClassVar[frozenset[str]] = frozenset()

    def process(self, batch: pa.Table) -> Split:
        if self.fail_on & set(batch.column("id").to_pylist()):
            raise RuntimeError("interrupted")
        return super().process(batch)


def _edit_record(field: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    def tamper(out: Path, record: dict) -> None:
        field(record)
        (out / PROGRESS_DIR / "unit-00003.json").write_text(json.dumps(record))
    return tamper


def _first_shard(out: Path, record: dict) -> Path:
    return out / record["shards"][""][0]["file"]


def _flip_byte(out: Path, record: dict) -> None:
    flip_middle_byte(_first_shard(out, record))


def _other_units_shards(out: Path, record: dict) -> None:
    other = json.loads((out / PROGRESS_DIR / "unit-00004.json").read_text())
    _edit_record(lambda r: r.update(shards=other["shards"]))(out, record)


def _shard(record: dict) -> dict:
    return record["shards"][""][0]


def _other_checksum(checksum: str) -> str:
    return checksum[:-1] + ("1" if checksum.endswith("0") else "0")


TAMPERINGS: dict[str, Callable[[Path, dict], None]] = {
    "index names another unit": _edit_record(lambda r: r.update(index=4)),
    "index outside the input": _edit_record(lambda r: r.update(index=999)),
    "shard rows": _edit_record(lambda r: _shard(r).update(rows=_shard(r)["rows"] + 1)),
    "shard bytes": _edit_record(lambda r: _shard(r).update(bytes=7)),
    "shard checksum": _edit_record(
        lambda r: _shard(r).update(checksum=_other_checksum(_shard(r)["checksum"]))),
    "rows_in": _edit_record(lambda r: r["links"][0].update(rows_in=r["links"][0]["rows_in"] + 1)),
    "another unit's shards": _other_units_shards,
    "deleted shard": lambda out, record: _first_shard(out, record).unlink(),
    "flipped byte in a shard": _flip_byte,
    "truncated record": lambda out, record: (out / PROGRESS_DIR / "unit-00003.json").write_text(
        json.dumps(record)[:40]),
}


@pytest.fixture(scope="module")
def uninterrupted(brown: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    out = str(tmp_path_factory.mktemp("whole") / "filtered")
    run_stage(FailsOnId, TextFilterConfig(), DatasetInput(brown), out, QUIET)
    return sorted(ids(out)), sorted(ids(f"{out}/rejected"))


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_progress_record_is_redone_never_committed(
        tampering: str, brown: str, uninterrupted: tuple[list, list], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "filtered"
    last_id = Dataset.open(brown).read_shard(19).column("id")[0].as_py()
    FailsOnId.fail_on = frozenset({last_id})
    try:
        with pytest.raises(StageFailedError, match="1 of 20 units failed"):
            run_stage(FailsOnId, TextFilterConfig(), DatasetInput(brown), str(out), QUIET)
    finally:
        FailsOnId.fail_on = frozenset()
    record = json.loads((out / PROGRESS_DIR / "unit-00003.json").read_text())
    TAMPERINGS[tampering](out, record)
    with caplog.at_level(logging.WARNING, logger="gristmill.stages.runner"):
        result = run_stage(FailsOnId, TextFilterConfig(), DatasetInput(brown), str(out), QUIET)
    assert "is not trusted" in caplog.text
    assert result.stats.units_reused == 18
    assert (sorted(ids(str(out))), sorted(ids(f"{out}/rejected"))) == uninterrupted
    Dataset.open(str(out), verify=True).rejected.to_table()


def test_an_output_this_code_cannot_read_is_refused_and_left_as_it_is(
        brown: str, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), str(out), QUIET)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(StageInputError, match=r"format version 99.*left as it is"):
        run_stage(TextFilter, TextFilterConfig(min_words=10), DatasetInput(brown), str(out),
                  QUIET)
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 99


def test_a_manifest_temp_file_left_by_a_kill_is_cleaned_by_the_next_run(
        brown: str, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    run_stage(TextFilter, TextFilterConfig(), DatasetInput(brown), str(out), QUIET)
    stale = out / f"manifest.json.tmp-{'a' * 32}"
    stale.write_text('{"format_ver')
    run_stage(TextFilter, TextFilterConfig(min_words=10), DatasetInput(brown), str(out), QUIET)
    assert not stale.exists()
    assert Dataset.open(str(out), verify=True).manifest.lineage is not None


def test_a_flipped_byte_in_an_input_shard_fails_its_unit_naming_the_file(
        brown: str, tmp_path: Path) -> None:
    """Checksums are verified by default: the wrong text never reaches the next output."""
    copy = copy_of(brown, tmp_path / "brown")
    victim = sorted(copy.glob("part-*.arrow"))[5]
    flip_middle_byte(victim)
    with pytest.raises(StageFailedError, match="1 of 20 units failed") as failure:
        run_stage(TextFilter, TextFilterConfig(), DatasetInput(str(copy)),
                  str(tmp_path / "out"), QUIET)
    assert "ChecksumMismatchError" in str(failure.value) and victim.name in str(failure.value)
