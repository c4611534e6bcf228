"""Prefect flows against a real (temporary) Prefect server: reports, caching, results."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.testing.utilities import prefect_test_harness

from gristmill.config import RuntimeConfig
from gristmill.flows.curate import CurateParams, MixStep, curate_flow
from gristmill.flows.mix import MixParams, mix_flow
from gristmill.loading.mixture import DomainSpec, MixtureConfig
from gristmill.loading.mixture_index import MixtureIndexStream
from gristmill.stages.base import StageInputError
from gristmill.stages.text_filter import TextFilterConfig
from gristmill.storage.manifest import StageStats
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local", "prefect_server")]

GOOD = ("The river rose slowly through the night, and by morning the farmers along the valley "
        "had moved their cattle to the higher fields before the water reached the road.")


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_raw(folder: Path) -> str:
    folder.mkdir()
    lines = [json.dumps({"text": GOOD, "label": "ham"}),
             json.dumps({"text": "short one", "label": "spam"}),
             "this line is not json"]
    (folder / "mail.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "mail.jsonl")


def small_curate(tmp_path: Path, **changes: object) -> CurateParams:
    """ingest -> text_filter -> domains -> a 3-step mix, on three raw lines."""
    return CurateParams(sources=[write_raw(tmp_path / "raw")], work_dir=str(tmp_path / "run"),
                        quality=None, prune=None, mix=MixStep(total_steps=3, batch_size=2),
                        runtime=RuntimeConfig(progress=False), **changes)


def task_states(flow_run_id: object) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs}


def test_curate_runs_each_stage_as_a_task_with_a_report_and_reuses_on_rerun(
        tmp_path: Path) -> None:
    params = small_curate(tmp_path, text_filter=TextFilterConfig(min_words=10))
    first = curate_flow(params, return_state=True)
    filtered = Dataset.open(str(tmp_path / "run" / "text_filter"))
    ingested = StageStats(**filtered.manifest.summary["links"][0]["stats"])
    assert not (tmp_path / "run" / "ingest").exists(), "ingest is fused, not written"
    assert (ingested.rows_in, ingested.rows_out) == (3, 2)
    assert ingested.reject_reasons == {"malformed_json": 1}
    chain = filtered.manifest.stats
    assert (chain.rows_in, chain.rows_out, chain.rows_rejected) == (3, 1, 2)
    assert filtered.to_table().column("text").to_pylist() == [GOOD]
    assert filtered.manifest.lineage.flow_run_id == str(first.state_details.flow_run_id)
    index = Dataset.open(str(tmp_path / "run" / "final"))
    samples = pa.Table.from_batches(list(MixtureIndexStream(index.uri)))
    assert index.num_rows == samples.num_rows == 3 * 2
    assert set(samples.column("text").to_pylist()) == {GOOD}
    assert "text" not in index.schema.names, "an index, not copies of the rows"

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ingest-report", "text-filter-report"])))
        run_report = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["curate-report"])))
    reports = {a.key: a.data for a in artifacts}
    assert "| 3 | 2 | 1 |" in reports["ingest-report"]
    assert "malformed_json" in reports["ingest-report"]
    assert "too_few_words" in reports["text-filter-report"]
    assert "| text_filter | 2 | 1 | 1 | too_few_words 1 |" in run_report[0].data

    written = Dataset.open(str(tmp_path / "run" / "text_filter")).manifest.created
    second = curate_flow(params, return_state=True)
    states = task_states(second.state_details.flow_run_id)
    assert states["ingest+text_filter"] == "Completed"
    assert Dataset.open(str(tmp_path / "run" / "text_filter")).manifest.created == written, \
        "reused, not written again"
    with get_client(sync_client=True) as client:
        latest = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["text-filter-report"])))
    assert any("(reused: inputs, config and code unchanged)" in a.data for a in latest)


def test_a_deleted_output_is_recomputed_not_served_from_the_cache(tmp_path: Path) -> None:
    params = small_curate(tmp_path, text_filter=TextFilterConfig(min_words=10))
    curate_flow(params)
    domains = Dataset.open(str(tmp_path / "run" / "domains")).manifest.created
    shutil.rmtree(tmp_path / "run" / "text_filter")
    again = curate_flow(params, return_state=True)
    states = task_states(again.state_details.flow_run_id)
    assert states["ingest+text_filter"] == "Completed"
    assert Dataset.open(str(tmp_path / "run" / "text_filter")).num_rows == 1
    assert Dataset.open(str(tmp_path / "run" / "domains")).manifest.created == domains, \
        "the same rows again: the next step is reused"


def test_curate_says_so_when_nothing_survives_to_mix(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="no rows survived to mix"):
        curate_flow(small_curate(tmp_path, text_filter=TextFilterConfig(min_words=500)))


def test_mix_flow_writes_samples_and_a_report_with_the_probability_plot(tmp_path: Path) -> None:
    domains = []
    for name, rows in (("large", 400), ("small", 20)):
        write_table(str(tmp_path / name), pa.table({"id": [f"{name}{i}" for i in range(rows)]}))
        domains.append(DomainSpec(name=name, uri=str(tmp_path / name)))
    params = MixParams(mixture=MixtureConfig(domains=domains, total_steps=10, batch_size=8),
                       output=str(tmp_path / "mixed"), plot=str(tmp_path / "mix.png"),
                       runtime=RuntimeConfig(progress=False))
    result = mix_flow(params)
    assert Dataset.open(result.output).num_rows == 80
    assert result.summary["samples"] == 80 and not result.reused
    assert (tmp_path / "mix.png").read_bytes().startswith(b"\x89PNG")
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["mixture-report", "mix-report"])))
    reports = {a.key: a.data for a in artifacts if f"`{result.output}`" in a.data}
    assert "data:image/png;base64," in reports["mixture-report"]
    assert "| small | 20 |" in reports["mixture-report"]
    assert "| samples | 80 |" in reports["mix-report"]
    assert mix_flow(params).reused
