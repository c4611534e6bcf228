"""partition: one dataset split into one per value of a column, nothing lost, reused."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from gristmill.stages.base import StageInputError
from gristmill.stages.partition import PartitionConfig, run_partition
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table


def _input(tmp_path: Path) -> str:
    table = pa.table({"id": [str(i) for i in range(7)],
                      "source": ["brown", "spam", None, "fortunes/de", "brown", "spam", "brown"]})
    write_table(str(tmp_path / "in"), table, max_rows=3)
    return str(tmp_path / "in")


def test_every_row_lands_in_the_part_of_its_value(tmp_path: Path) -> None:
    parts = run_partition(_input(tmp_path), str(tmp_path / "parts"))
    ids = {value: Dataset.open(uri).to_table().column("id").to_pylist()
           for value, uri in parts.items()}
    assert ids == {"brown": ["0", "4", "6"], "spam": ["1", "5"], "unknown": ["2"],
                   "fortunes/de": ["3"]}
    assert parts["fortunes/de"].endswith("fortunes_de")


def test_a_rerun_with_the_same_input_reuses_the_parts(tmp_path: Path) -> None:
    source = _input(tmp_path)
    parts = run_partition(source, str(tmp_path / "parts"))
    before = (Path(parts["brown"]) / "manifest.json").read_bytes()
    run_partition(source, str(tmp_path / "parts"))
    assert (Path(parts["brown"]) / "manifest.json").read_bytes() == before


def test_a_missing_column_or_too_many_values_is_a_clear_error(tmp_path: Path) -> None:
    source = _input(tmp_path)
    with pytest.raises(StageInputError, match="missing column 'lang'"):
        run_partition(source, str(tmp_path / "a"), PartitionConfig(column="lang"))
    with pytest.raises(StageInputError, match="more than 2 distinct values"):
        run_partition(source, str(tmp_path / "b"), PartitionConfig(max_parts=2))


def test_a_non_string_domain_column_partitions_by_its_text(tmp_path: Path) -> None:
    write_table(str(tmp_path / "in"), pa.table({"id": ["a", "b", "c"], "year": [1961, None, 1961]}))
    parts = run_partition(str(tmp_path / "in"), str(tmp_path / "parts"),
                          PartitionConfig(column="year"))
    assert {v: Dataset.open(u).num_rows for v, u in parts.items()} == {"1961": 2, "unknown": 1}
