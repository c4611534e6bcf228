"""Fused chains: one pass per unit gives what separate stage runs give, writes only the
chain's end and every link's rejects, keeps an intermediate on request, and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray.cloudpickle

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.sources import resolve as resolve_source
from gristmill.stages.base import (
    DatasetInput,
    MapStage,
    Split,
    StageConfig,
    StageInputError,
    attach_reasons,
    reject_schema,
)
from gristmill.stages.chain import Link
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.rejected import rejected_rows
from gristmill.stages.runner import StageFailedError, run_chain, run_stage
from gristmill.stages.text_filter import TextFilter, TextFilterConfig
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = pytest.mark.usefixtures("ray_local")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BROWN = resolve_source("brown").files[0]
UNIT_BYTES = 512 * 1024
QUIET = RuntimeConfig(progress=False, storage=StorageConfig(max_rows_per_shard=40))
LINKS = [Link(Ingest, IngestConfig()), Link(TextFilter, TextFilterConfig())]


def raw() -> RawFilesInput:
    return RawFilesInput.from_args([str(BROWN)], unit_bytes=UNIT_BYTES)


def column(uri: str, name: str = "id") -> list:
    return sorted(Dataset.open(uri).to_table(columns=[name]).column(name).to_pylist())


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.arrow"))


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """ingest, then text_filter, as two runs that each write their whole output."""
    root = tmp_path_factory.mktemp("separate")
    ingested = run_stage(Ingest, IngestConfig(), raw(), str(root / "ingest"), QUIET)
    filtered = run_stage(TextFilter, TextFilterConfig(), DatasetInput(ingested.output),
                         str(root / "filter"), QUIET)
    return root, ingested, filtered


def test_a_fused_chain_gives_what_separate_runs_give_and_writes_no_intermediate(
        separate: tuple, tmp_path: Path) -> None:
    root, ingested, filtered = separate
    out = tmp_path / "fused"
    results = run_chain(LINKS, raw(), str(out), QUIET)
    assert [r.stage for r in results] == ["ingest", "text_filter"]
    assert results[0].output is None and results[1].output == str(out)
    assert column(str(out)) == column(filtered.output)
    assert column(results[0].rejected, "locator") == column(ingested.rejected, "locator")
    assert column(results[1].rejected) == column(filtered.rejected)
    for fused, alone in zip(results, (ingested, filtered), strict=True):
        assert fused.stats.model_dump(include={"rows_in", "rows_out", "rows_rejected",
                                               "reject_reasons"}) == \
            alone.stats.model_dump(include={"rows_in", "rows_out", "rows_rejected",
                                            "reject_reasons"})
    chain = Dataset.open(str(out)).manifest.stats
    assert chain.rows_in == ingested.stats.rows_in
    assert chain.rows_in == chain.rows_out + chain.rows_rejected
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["rejected",
                                                                   "rejected-ingest"]
    written_apart = bytes_under(root / "ingest") + bytes_under(root / "filter")
    assert bytes_under(out) < written_apart - bytes_under(root / "ingest") * 0.9


def test_an_intermediate_is_kept_on_request_and_dropped_when_no_longer_asked_for(
        separate: tuple, tmp_path: Path) -> None:
    _, ingested, _ = separate
    out = tmp_path / "fused"
    kept = run_chain(LINKS, raw(), str(out), QUIET, keep=["ingest"])
    assert kept[0].output == str(out / "kept-ingest")
    assert column(kept[0].output) == column(ingested.output)
    again = run_chain(LINKS, raw(), str(out), QUIET, keep=["ingest"])
    assert all(r.reused for r in again)
    plain = run_chain(LINKS, raw(), str(out), QUIET)
    assert not plain[0].reused and plain[0].cache_key != kept[0].cache_key
    assert not (out / "kept-ingest").exists()
    with pytest.raises(StageInputError, match="not earlier stages"):
        run_chain(LINKS, raw(), str(out), QUIET, keep=["text_filter"])


class FlakyFilter(TextFilter):
    """The real filter, failing on chosen documents until told otherwise (a class setting,
    so the code and config, hence the cache key, stay the same)."""

    fail_on: frozenset[str] = frozenset()

    def process(self, batch: pa.Table) -> Split:
        if self.fail_on & set(batch.column("id").to_pylist()):
            raise RuntimeError("a chosen document")
        return super().process(batch)


def test_a_chain_that_fails_on_one_unit_resumes_after_the_units_it_finished(
        separate: tuple, tmp_path: Path) -> None:
    _, ingested, filtered = separate
    last_id = Dataset.open(ingested.output).read_shard(len(
        Dataset.open(ingested.output).shards) - 1).column("id")[-1].as_py()
    links = [Link(Ingest, IngestConfig()), Link(FlakyFilter, TextFilterConfig())]
    out = str(tmp_path / "fused")
    FlakyFilter.fail_on = frozenset({last_id})
    try:
        with pytest.raises(StageFailedError, match=r"1 of \d+ units failed"):
            run_chain(links, raw(), out, QUIET)
    finally:
        FlakyFilter.fail_on = frozenset()
    results = run_chain(links, raw(), out, QUIET)
    units = len(raw().units())
    assert results[1].stats.units_reused == units - 1
    assert column(out) == column(filtered.output)


def test_rejects_by_id_write_no_row_and_read_back_whole(separate: tuple,
                                                        tmp_path: Path) -> None:
    _, ingested, filtered = separate
    by_id = QUIET.with_(storage=QUIET.storage.with_(rejected_rows="ids"))
    result = run_stage(TextFilter, TextFilterConfig(), DatasetInput(ingested.output),
                       str(tmp_path / "by_id"), by_id)
    rejected = Dataset.open(result.rejected)
    assert rejected.schema.names == ["id", "lang_id", "lang_score", "word_count",
                                     "reject_reason", "reject_detail", "reject_stage"]
    assert column(result.rejected) == column(filtered.rejected)
    assert rejected.manifest.total_bytes < Dataset.open(filtered.rejected).manifest.total_bytes / 10
    whole = pa.concat_tables(rejected_rows(result.rejected))
    full = Dataset.open(filtered.rejected).to_table()
    assert sorted(whole.column_names) == sorted(full.column_names)
    assert whole.sort_by("id").to_pylist() == full.select(whole.column_names).sort_by(
        "id").to_pylist()
    assert column(result.output) == column(filtered.output)
    chained = run_chain(LINKS, raw(), str(tmp_path / "chain"), by_id)
    assert "text" in Dataset.open(chained[1].rejected).schema.names, \
        "a fused link's input is not committed anywhere, so its rejects stay whole"


class DropOdd(MapStage[StageConfig]):
    """Rejects rows whose `n` is odd, with a note: a selection with a column of its own."""

    name: ClassVar[str] = "drop_odd"

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return reject_schema(pa.schema([*input_schema, pa.field("note", pa.string())]))

    def process(self, batch: pa.Table) -> Split:
        odd = pc.equal(pc.bit_wise_and(batch.column("n"), 1), 1)
        dropped = batch.filter(odd)
        dropped = dropped.append_column("note", pa.array(
            [f"n={n}" for n in dropped.column("n").to_pylist()], pa.string()))
        rejected = attach_reasons(dropped, ["odd"] * dropped.num_rows,
                                  [None] * dropped.num_rows, self.name)
        return Split(batch.filter(pc.invert(odd)), rejected)


def test_rejects_by_id_read_back_in_input_order_with_list_columns(tmp_path: Path) -> None:
    rows = 500
    table = pa.table({"id": [f"r{(i * 7919) % rows:04d}" for i in range(rows)],
                      "n": list(range(rows)),
                      "vec": [[float(i), float(-i)] for i in range(rows)]})
    write_table(str(tmp_path / "in"), table, max_rows=64)
    by_id = QUIET.with_(storage=QUIET.storage.with_(rejected_rows="ids"))
    result = run_stage(DropOdd, StageConfig(), DatasetInput(str(tmp_path / "in")),
                       str(tmp_path / "out"), by_id)
    assert Dataset.open(result.rejected).schema.names == [
        "id", "note", "reject_reason", "reject_detail", "reject_stage"]
    back = pa.concat_tables(rejected_rows(result.rejected))
    odd = table.filter(pc.equal(pc.bit_wise_and(table.column("n"), 1), 1))
    assert back.column("id").to_pylist() == odd.column("id").to_pylist()
    assert back.column("vec").to_pylist() == odd.column("vec").to_pylist()
    assert back.column("note").to_pylist() == [f"n={n}" for n in odd.column("n").to_pylist()]


def test_a_part_folders_stale_manifest_copy_is_never_read_and_is_repaired(
        tmp_path: Path) -> None:
    """A part's manifest is committed inside the output's; the copy in the part's folder
    (left by a kill from another run, say) is not what readers get, and reuse rewrites it."""
    out = tmp_path / "fused"
    first = run_chain(LINKS, raw(), str(out), QUIET)
    manifest = out / "rejected-ingest" / "manifest.json"
    committed = manifest.read_text()
    data = json.loads(committed)
    data["lineage"]["cache_key"] = "a killed run of another config"
    manifest.write_text(json.dumps(data))
    assert Dataset.open(first[0].rejected).manifest.lineage.cache_key == first[0].cache_key
    again = run_chain(LINKS, raw(), str(out), QUIET)
    assert again[0].reused and again[0].cache_key == first[0].cache_key
    assert manifest.read_text() == committed
