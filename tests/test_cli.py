"""The gristmill command: clear errors instead of tracebacks, and the inspect view."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from gristmill.cli import app
from gristmill.storage.manifest import InputRef, Lineage
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

runner = CliRunner()


def flat(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_inspect_shows_counts_schema_samples_and_lineage(tmp_path: Path) -> None:
    first = tmp_path / "first"
    write_table(str(first), pa.table({"id": ["a"], "text": ["first row"]}),
                lineage=Lineage(stage="ingest"))
    second = tmp_path / "second"
    write_table(str(second), pa.table({"id": ["a"], "text": ["kept row text"]}),
                lineage=Lineage(stage="text_filter",
                                inputs=[InputRef(uri=str(first), content_sha256="x")]))
    result = runner.invoke(app, ["inspect", str(second), "--verify"])
    assert result.exit_code == 0, result.output
    assert "1 rows in 1 shards" in flat(result.output)
    assert "kept row text" in result.output
    assert "text_filter" in result.output and "ingest" in result.output


def test_inspect_of_a_folder_without_manifest_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert "has no manifest.json" in flat(result.output)
    assert "Traceback" not in result.output


def test_unknown_flow_names_the_known_ones() -> None:
    result = runner.invoke(app, ["run", "no_such_flow"])
    assert result.exit_code == 1
    assert "curate" in result.output and "text_filter" in result.output


def test_run_prints_every_step_of_a_flow_that_returns_them_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """synthesize_questions returns {step: result}; `run` printed nothing and then failed
    on the dict after the whole flow had finished."""
    from gristmill.flows.registry import FLOWS, FlowEntry
    from gristmill.stages.runner import StageResult
    from gristmill.storage.manifest import StageStats

    def steps(params: object) -> dict[str, StageResult]:
        return {name: StageResult(stage=name, output=f"/out/{name}", rejected=None,
                                  cache_key="k", reused=False, wall_seconds=1.0,
                                  stats=StageStats(rows_in=4, rows_out=3, rows_rejected=1))
                for name in ("question_gen", "solvability")}

    monkeypatch.setitem(FLOWS, "steps", FlowEntry(steps, FLOWS["ingest"].params))
    result = runner.invoke(app, ["run", "steps"])
    assert result.exit_code == 0, result.output
    assert "question_gen: wrote /out/question_gen" in flat(result.output)
    assert "solvability: wrote /out/solvability" in flat(result.output)


def test_an_invalid_config_value_is_reported_with_its_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("text_filter:\n  min_words: many\n")
    result = runner.invoke(app, ["run", "curate", "-c", str(config)])
    assert result.exit_code == 1
    assert "min_words" in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("ray_local")
def test_ingest_command_writes_a_dataset_and_reports_rejects(tmp_path: Path) -> None:
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "hello", "lang": "en"}) + "\n{broken\n")
    result = runner.invoke(app, ["ingest", str(raw), "-o", str(tmp_path / "out"),
                                 "--set", "config.promote_fields=[lang]",
                                 "--set", "runtime.storage.checksum=sha256"])
    assert result.exit_code == 0, result.output
    assert "in 2 out 1 rejected 1" in flat(result.output)
    assert "malformed_json" in result.output
    manifest = Dataset.open(str(tmp_path / "out")).manifest
    assert manifest.schema.names[-1] == "lang"
    assert manifest.shards[0].checksum.startswith("sha256:")
