"""The global-step contract: the same key, reuse, lineage and atomic commit as a map stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.stages.base import StageInputError
from gristmill.stages.global_step import GlobalStep, StepSink, run_global_step
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

QUIET = RuntimeConfig(progress=False)


class CountConfig(FrozenModel):
    column: str = "lang"


class CountValues(GlobalStep[CountConfig]):
    """Rows per value of a column over every input: the smallest complete global step."""

    name: ClassVar[str] = "count_values"
    runs: ClassVar[int] = 0

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        return pa.schema([("value", pa.string()), ("rows", pa.int64())])

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        CountValues.runs += 1
        counts: dict[str, int] = {}
        for dataset in inputs:
            for batch in dataset.iter_batches(columns=[self.config.column]):
                for value in batch.column(0).to_pylist():
                    counts[value] = counts.get(value, 0) + 1
        sink.write(pa.table({"value": sorted(counts), "rows": [counts[v] for v in sorted(counts)]},
                            schema=self.output_schema(inputs)))
        return {"values": len(counts)}


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    uris = [str(tmp_path / "a"), str(tmp_path / "b")]
    write_table(uris[0], pa.table({"lang": ["en", "de", "en"], "code": ["x", "y", "z"]}))
    write_table(uris[1], pa.table({"lang": ["de", "fr"], "code": ["u", "v"]}))
    return uris


def test_a_step_commits_rows_summary_and_lineage_and_is_reused(inputs: list[str],
                                                               tmp_path: Path) -> None:
    out = str(tmp_path / "counts")
    CountValues.runs = 0
    first = run_global_step(CountValues(CountConfig()), inputs, out, QUIET)
    assert Dataset.open(out).to_table().to_pylist() == [
        {"value": "de", "rows": 2}, {"value": "en", "rows": 2}, {"value": "fr", "rows": 1}]
    manifest = Dataset.open(out).manifest
    assert manifest.summary == first.summary == {"values": 3}
    assert manifest.lineage.stage == "count_values"
    assert [r.uri for r in manifest.lineage.inputs] == [Dataset.open(u).uri for u in inputs]
    assert (first.stats.rows_in, first.stats.rows_out, first.reused) == (5, 3, False)
    again = run_global_step(CountValues(CountConfig()), inputs, out, QUIET)
    assert again.reused and again.ref == first.ref and again.summary == first.summary
    assert CountValues.runs == 1


def test_a_new_config_or_new_input_content_recomputes(inputs: list[str], tmp_path: Path) -> None:
    out = str(tmp_path / "counts")
    first = run_global_step(CountValues(CountConfig()), inputs, out, QUIET)
    by_code = run_global_step(CountValues(CountConfig(column="code")), inputs, out, QUIET)
    assert not by_code.reused and by_code.summary == {"values": 5}
    assert by_code.ref.sha256 != first.ref.sha256
    write_table(inputs[1], pa.table({"lang": ["ga"], "code": ["w"]}), overwrite=True)
    after_edit = run_global_step(CountValues(CountConfig(column="code")), inputs, out, QUIET)
    assert not after_edit.reused and after_edit.stats.rows_in == 4


def test_an_output_over_an_input_is_refused(inputs: list[str]) -> None:
    with pytest.raises(StageInputError, match="overlaps input"):
        run_global_step(CountValues(CountConfig()), inputs, inputs[0], QUIET)
