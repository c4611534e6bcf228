"""Raw inputs: byte ranges that read every line exactly once whatever the cut, compressed
files, Parquet by row groups, ids that do not depend on the unit size, one big file spread
over every worker, a kill mid-file, and s3:// on a real S3 server with outputs written back."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.config import RuntimeConfig
from gristmill.sources import resolve as resolve_source
from gristmill.stages.base import DatasetInput
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import IngestInputError, RawFilesInput
from gristmill.stages.runner import PROGRESS_DIR, run_stage
from gristmill.stages.text_filter import TextFilter, TextFilterConfig
from gristmill.storage.fs import resolve
from gristmill.storage.manifest import is_committed
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

BROWN = resolve_source("brown").files[0]
OWT = resolve_source("owt").files[0]
QUIET = RuntimeConfig(progress=False)
DRIVER = Path(__file__).parent / "drivers" / "slow_ingest.py"


def records_of(source: RawFilesInput) -> list[tuple[int, bytes]]:
    """(where the record starts, payload) of every unit's records, in unit order."""
    found = []
    for unit in source.units():
        for table in source.read_unit(unit, 64):
            keys = table.column("record_key").to_pylist()
            payloads = table.column("payload").to_pylist()
            found.extend((int(k.rsplit("\n", 1)[1]), p) for k, p in zip(keys, payloads,
                                                                        strict=True))
    return found


def lines_by_hand(data: bytes) -> list[tuple[int, bytes]]:
    """What a JSONL reader must yield: every non-blank line at its byte offset."""
    found, offset = [], 0
    for line in data.split(b"\n"):
        if line.strip():
            found.append((offset, line.rstrip(b"\r")))
        offset += len(line) + 1
    return found


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=40),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.integers(1, 48))
def test_byte_ranges_read_every_line_exactly_once_whatever_the_cut(
        lines: list[bytes], newline: bytes, trailing: bool, unit_bytes: int) -> None:
    data = newline.join(lines) + (newline if trailing and lines else b"")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_bytes(data)
        source = RawFilesInput.from_args([str(path)], unit_bytes=unit_bytes)
        assert len(source.units()) == max(1, -(-len(data) // unit_bytes))
        assert records_of(source) == lines_by_hand(data)


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2", ".xz"])
def test_a_compressed_file_is_one_unit_with_the_plain_files_records(
        tmp_path: Path, suffix: str) -> None:
    data = OWT.read_bytes()
    path = tmp_path / f"passages.jsonl{suffix}"
    if suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    elif suffix == ".bz2":
        path.write_bytes(bz2.compress(data))
    elif suffix == ".xz":
        path.write_bytes(lzma.compress(data))
    else:
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(data)
    packed = RawFilesInput.from_args([str(path)], unit_bytes=4096)
    plain = RawFilesInput.from_args([str(OWT)], unit_bytes=4096)
    assert len(packed.units()) == 1 and len(plain.units()) > 100
    assert records_of(packed) == records_of(plain) == lines_by_hand(data)


def test_parquet_is_cut_by_row_groups_and_rows_are_numbered_across_the_file(
        tmp_path: Path) -> None:
    table = pa.table({"text": [f"row {i}" for i in range(1000)], "n": list(range(1000))})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=100)
    split = RawFilesInput.from_args([str(tmp_path / "rows.parquet")], unit_bytes=1)
    whole = RawFilesInput.from_args([str(tmp_path / "rows.parquet")])
    assert len(split.units()) == 10 and len(whole.units()) == 1
    assert records_of(split) == records_of(whole)
    assert [key for key, _ in records_of(split)] == list(range(1, 1001))
    rows = [row for unit in split.units() for t in split.read_unit(unit, 64)
            for row in t.column("fields").to_pylist()]
    assert rows == table.to_pylist()


def test_a_uri_glob_that_matches_nothing_is_a_clear_error() -> None:
    with pytest.raises(IngestInputError, match="names no object, prefix or glob"):
        RawFilesInput.from_args(["memory://gristmill-tests/none/*.jsonl"])


def kept_and_rejected_ids(output: str) -> tuple[list[str], list[str]]:
    dataset = Dataset.open(output)
    return (sorted(dataset.to_table(columns=["id"]).column("id").to_pylist()),
            sorted(dataset.rejected.to_table(columns=["locator"]).column("locator").to_pylist()))


@pytest.mark.usefixtures("ray_local")
def test_one_file_in_many_units_runs_on_every_worker_with_the_same_ids(
        tmp_path: Path) -> None:
    whole = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(BROWN)]),
                      str(tmp_path / "whole"), QUIET)
    split = run_stage(Ingest, IngestConfig(),
                      RawFilesInput.from_args([str(BROWN)], unit_bytes=256 * 1024),
                      str(tmp_path / "split"), QUIET)
    assert whole.stats.units_total == 1
    assert split.stats.units_total == -(-BROWN.stat().st_size // (256 * 1024))
    assert len(split.stats.units_per_worker) == 2
    assert split.cache_key != whole.cache_key
    assert kept_and_rejected_ids(split.output) == kept_and_rejected_ids(whole.output)
    assert split.stats.rows_out == 500
    lineage = Dataset.open(split.output).manifest.lineage
    assert lineage.input_digest and lineage.input_digest != \
        Dataset.open(whole.output).manifest.lineage.input_digest


def _kill_session(session_id: int) -> None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    os.kill(int(entry), 9)
            except (ProcessLookupError, PermissionError):
                continue


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_run_killed_mid_file_resumes_without_rereading_finished_ranges(
        tmp_path: Path) -> None:
    import time

    unit_bytes = 256 * 1024
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ""}
    command = [sys.executable, str(DRIVER), str(BROWN), str(out)]
    proc = subprocess.Popen([*command, "0.5", str(unit_bytes)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(list((out / PROGRESS_DIR).glob("unit-*.json"))) < 3:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.05)
    finally:
        _kill_session(proc.pid)
        proc.wait()
    finished = sorted(p.name for p in (out / PROGRESS_DIR).glob("unit-*.json"))
    assert not is_committed(resolve(str(out)))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.arrow")}
    rerun = subprocess.run([*command, "0", str(unit_bytes)], env=env, capture_output=True,
                           text=True, timeout=300, check=True)
    assert '"units_reused":' in rerun.stdout
    manifest = Dataset.open(str(out)).manifest
    units_total = -(-BROWN.stat().st_size // unit_bytes)
    assert 3 <= manifest.stats.units_reused == len(finished) < units_total
    done = {name.removeprefix("unit-").removesuffix(".json") for name in finished}
    untouched = {n: t for n, t in stamps.items() if n.split("-")[2] in done}
    assert untouched
    assert {n: p.stat().st_mtime_ns for n, p in ((n, out / n) for n in untouched)} == untouched
    reference = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(BROWN)]),
                          str(tmp_path / "reference"), QUIET)
    assert kept_and_rejected_ids(str(out)) == kept_and_rejected_ids(reference.output)


@pytest.mark.usefixtures("ray_local")
def test_ingest_reads_s3_and_commits_its_outputs_there(s3_server, s3_bucket: str,
                                                       tmp_path: Path) -> None:
    """Plain JSONL on the server: SeaweedFS 4.48 rewrites .gz and .zst objects on upload and
    serves byte ranges of what it stored (seaweedfs#10981); compressed input is tested from
    local files above."""
    fs = s3_server.filesystem()
    fs.create_dir(f"{s3_bucket}/raw")
    with fs.open_output_stream(f"{s3_bucket}/raw/brown.jsonl") as out:
        out.write(BROWN.read_bytes())
    with fs.open_output_stream(f"{s3_bucket}/raw/more/owt.jsonl") as out:
        out.write(OWT.read_bytes())
    local = tmp_path / "raw"
    (local / "more").mkdir(parents=True)
    (local / "brown.jsonl").write_bytes(BROWN.read_bytes())
    (local / "more" / "owt.jsonl").write_bytes(OWT.read_bytes())

    remote_in = RawFilesInput.from_args([f"s3://{s3_bucket}/raw"], unit_bytes=1024 * 1024)
    assert [f.name for f in remote_in.files] == ["brown.jsonl", "more/owt.jsonl"]
    assert len(remote_in.units()) == 1 + -(-BROWN.stat().st_size // (1024 * 1024))
    ingested = run_stage(Ingest, IngestConfig(), remote_in, f"s3://{s3_bucket}/out/ingest",
                         QUIET)
    reference = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(local)]),
                          str(tmp_path / "reference"), QUIET)
    texts = Dataset.open(ingested.output).to_table(columns=["text"]).column("text")
    expected = Dataset.open(reference.output).to_table(columns=["text"]).column("text")
    assert sorted(texts.to_pylist()) == sorted(expected.to_pylist())
    assert ingested.stats.rows_in == reference.stats.rows_in

    listed = fs.get_file_info(pa.fs.FileSelector(f"{s3_bucket}/out", recursive=True))
    names = [info.path for info in listed if info.type == pa.fs.FileType.File]
    assert f"{s3_bucket}/out/ingest/manifest.json" in names
    assert not [n for n in names if ".tmp-" in n or PROGRESS_DIR in n]

    again = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args(
        [f"s3://{s3_bucket}/raw"], unit_bytes=1024 * 1024), f"s3://{s3_bucket}/out/ingest",
        QUIET)
    assert again.reused
    filtered = run_stage(TextFilter, TextFilterConfig(), DatasetInput(ingested.output),
                         f"s3://{s3_bucket}/out/filtered", QUIET)
    assert filtered.stats.rows_in == filtered.stats.rows_out + filtered.stats.rows_rejected
    assert Dataset.open(filtered.output, verify=True).num_rows == filtered.stats.rows_out
    only_brown = RawFilesInput.from_args([f"s3://{s3_bucket}/raw/*.jsonl"])
    assert [f.name for f in only_brown.files] == ["brown.jsonl"]


def test_the_raw_readers_are_part_of_ingests_code_version(tmp_path: Path) -> None:
    """An edit to how raw files are parsed must change ingest's cache key."""
    from gristmill.stages import raw_formats
    from gristmill.stages.code_version import reachable_modules
    from gristmill.stages.runner import chain_code_version

    source = RawFilesInput.from_args([str(OWT)])
    assert raw_formats in reachable_modules(sys.modules[type(source).__module__])
    write_table(str(tmp_path / "rows"), pa.table({"id": ["a"], "text": ["b"]}))
    dataset_key = chain_code_version([Ingest], DatasetInput(str(tmp_path / "rows")))
    assert chain_code_version([Ingest], source) != dataset_key


def test_compressed_parquet_is_refused_before_any_work(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "rows.parquet")
    (tmp_path / "rows.parquet.gz").write_bytes(gzip.compress((tmp_path / "rows.parquet")
                                                             .read_bytes()))
    with pytest.raises(IngestInputError, match="Parquet compresses inside the file"):
        RawFilesInput.from_args([str(tmp_path / "rows.parquet.gz")])


def test_a_batch_ends_at_batch_rows_or_batch_bytes_whichever_comes_first(
        tmp_path: Path) -> None:
    lines = [json.dumps({"text": "x" * size}) for size in [900, 900, 900, 5000, 10, 10, 10]]
    (tmp_path / "rows.jsonl").write_text("".join(f"{line}\n" for line in lines))
    narrow = RawFilesInput.from_args([str(tmp_path / "rows.jsonl")], batch_bytes=2000)
    assert [t.num_rows for t in narrow.read_unit(narrow.units()[0], 100)] == [3, 1, 3]
    wide = RawFilesInput.from_args([str(tmp_path / "rows.jsonl")], batch_bytes=1_000_000)
    assert [t.num_rows for t in wide.read_unit(wide.units()[0], 2)] == [2, 2, 2, 1]
    assert [t.num_rows for t in wide.read_unit(wide.units()[0], 100)] == [7]


def test_a_file_named_parquet_that_is_not_one_is_a_clear_error_before_any_work(
        tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a"] * 100}), tmp_path / "good.parquet")
    whole = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IngestInputError, match=r"cut\.parquet: not a readable Parquet file"):
        RawFilesInput.from_args([str(tmp_path / "cut.parquet")]).schema()
    with pytest.raises(IngestInputError, match=r"cut\.parquet: not a readable Parquet file"):
        RawFilesInput.from_args([str(tmp_path / "cut.parquet")], unit_bytes=10).units()


def test_a_symlink_loop_is_a_clear_error_named_directly_or_inside_a_folder(
        tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "rows.jsonl").write_text('{"text": "a"}\n')
    (folder / "loop-a").symlink_to(folder / "loop-b")
    (folder / "loop-b").symlink_to(folder / "loop-a")
    with pytest.raises(IngestInputError, match="symbolic link that leads nowhere"):
        RawFilesInput.from_args([str(folder / "loop-a")])
    with pytest.raises(IngestInputError, match=r"symbolic links that lead nowhere.*loop-a"):
        RawFilesInput.from_args([str(folder)])
