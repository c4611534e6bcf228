"""partition: one dataset split into one per value of a column, nothing lost, reused; its
output is the index of the parts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from gristmill.config import RuntimeConfig
from gristmill.stages.base import StageInputError
from gristmill.stages.global_step import StepResult, run_global_step
from gristmill.stages.partition import INDEX_SCHEMA, Partition, PartitionConfig, read_parts
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

QUIET = RuntimeConfig(progress=False)


def _input(tmp_path: Path) -> str:
    table = pa.table({"id": [str(i) for i in range(7)],
                      "source": ["brown", "spam", None, "fortunes/de", "brown", "spam", "brown"]})
    write_table(str(tmp_path / "in"), table, max_rows=3)
    return str(tmp_path / "in")


def partition(source: str, output: Path, config: PartitionConfig | None = None) -> StepResult:
    return run_global_step(Partition(config or PartitionConfig()), [source], str(output), QUIET)


def test_every_row_lands_in_the_part_of_its_value(tmp_path: Path) -> None:
    result = partition(_input(tmp_path), tmp_path / "parts")
    parts = read_parts(result.ref)
    ids = {value: Dataset.open(uri).to_table().column("id").to_pylist()
           for value, uri in parts.items()}
    assert ids == {"brown": ["0", "4", "6"], "spam": ["1", "5"], "unknown": ["2"],
                   "fortunes/de": ["3"]}
    assert parts["fortunes/de"] == str(tmp_path / "parts" / "fortunes_de")
    index = Dataset.open(result.output)
    assert index.schema.equals(INDEX_SCHEMA)
    assert index.to_table().to_pylist()[0] == {"value": "brown", "uri": parts["brown"],
                                               "rows": 3}
    assert result.summary["rows_per_part"] == {"brown": 3, "fortunes/de": 1, "spam": 2,
                                               "unknown": 1}
    lineage = Dataset.open(parts["spam"]).manifest.lineage
    assert (lineage.stage, lineage.config["value"]) == ("partition", "spam")


def test_a_value_named_like_the_index_files_gets_its_own_folder(tmp_path: Path) -> None:
    write_table(str(tmp_path / "in"), pa.table({"status": ["rejected", "manifest.json", "ok"]}))
    result = partition(str(tmp_path / "in"), tmp_path / "parts", PartitionConfig(column="status"))
    parts = read_parts(result.ref)
    assert {v: Path(u).name for v, u in parts.items()} == {
        "rejected": "rejected_part", "manifest.json": "manifest.json_part", "ok": "ok"}
    assert {v: Dataset.open(u).num_rows for v, u in parts.items()} == dict.fromkeys(parts, 1)


def test_a_rerun_with_the_same_input_and_config_reuses_the_parts(tmp_path: Path) -> None:
    source = _input(tmp_path)
    first = partition(source, tmp_path / "parts")
    before = (tmp_path / "parts" / "brown" / "manifest.json").read_bytes()
    again = partition(source, tmp_path / "parts")
    assert (first.reused, again.reused) == (False, True)
    assert again.ref == first.ref
    assert (tmp_path / "parts" / "brown" / "manifest.json").read_bytes() == before


def test_a_changed_config_recomputes_the_parts(tmp_path: Path) -> None:
    source = _input(tmp_path)
    partition(source, tmp_path / "parts")
    changed = partition(source, tmp_path / "parts", PartitionConfig(missing="none"))
    assert not changed.reused
    assert sorted(read_parts(changed.ref)) == ["brown", "fortunes/de", "none", "spam"]
    assert not (tmp_path / "parts" / "unknown").exists()


def test_a_missing_column_or_too_many_values_is_a_clear_error(tmp_path: Path) -> None:
    source = _input(tmp_path)
    with pytest.raises(StageInputError, match="missing column 'lang'"):
        partition(source, tmp_path / "a", PartitionConfig(column="lang"))
    with pytest.raises(StageInputError, match="more than 2 distinct values"):
        partition(source, tmp_path / "b", PartitionConfig(max_parts=2))


def test_a_non_string_domain_column_partitions_by_its_text(tmp_path: Path) -> None:
    write_table(str(tmp_path / "in"), pa.table({"id": ["a", "b", "c"], "year": [1961, None, 1961]}))
    result = partition(str(tmp_path / "in"), tmp_path / "parts", PartitionConfig(column="year"))
    assert {v: Dataset.open(u).num_rows for v, u in read_parts(result.ref).items()} == {
        "1961": 2, "unknown": 1}


def test_an_empty_input_gives_an_empty_index(tmp_path: Path) -> None:
    write_table(str(tmp_path / "in"), pa.table({"source": pa.array([], pa.string())}))
    result = partition(str(tmp_path / "in"), tmp_path / "parts")
    assert read_parts(result.ref) == {} and result.summary["parts"] == 0
