"""The prune flow on real OWT passages and their shuffled copies, through Ray and Prefect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.flows.prune import PruneParams, prune_flow
from gristmill.flows.registry import FLOWS
from gristmill.inference import EmbedderConfig
from gristmill.sources import resolve
from gristmill.stages.base import StageInputError
from gristmill.stages.dedup import DedupConfig
from gristmill.stages.embed import EmbedConfig
from gristmill.stages.global_step import DatasetRef, run_global_step
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.prune import ClusteringConfig, PrototypeConfig, PruneConfig
from gristmill.stages.prune_centroids import CentroidsConfig, PruneCentroids
from gristmill.stages.prune_decisions import DECISION_SCHEMA, DecisionsConfig, PruneDecisions
from gristmill.stages.prune_score import PruneScore, PruneScoreConfig
from gristmill.stages.prune_select import PruneSelect, PruneSelectConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vector_array
from gristmill.storage.writer import write_table

QUIET = RuntimeConfig(progress=False)
PASSAGES = 24
COPIED = 6
COPIES = 2


def owt_rows() -> pa.Table:
    """24 real passages, 2 shuffled copies of the first 6, an upper-cased exact copy of
    passage 7, and two blank rows."""
    ids, texts = [], []
    for line in resolve("owt").files[0].open(encoding="utf-8"):
        row = json.loads(line)
        if row["passage_idx"] < PASSAGES:
            ids.append(f"p{row['passage_idx']:02d}")
            texts.append(row["text"])
    for line in resolve("owt_shuffled").files[0].open(encoding="utf-8"):
        row = json.loads(line)
        if row["passage_idx"] < COPIED and row["copy"] <= COPIES:
            ids.append(f"p{row['passage_idx']:02d}-copy{row['copy']}")
            texts.append(row["text"])
    ids += ["p07-upper", "blank-1", "blank-2"]
    texts += [texts[7].upper(), "", "   "]
    return pa.table({"id": ids, "text": texts})


def test_the_prune_flow_is_registered() -> None:
    assert FLOWS["prune"].params is PruneParams


def test_a_config_pinning_other_content_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "centroids")
    write_table(uri, pa.table({"cluster": pa.array([0], pa.int32()),
                               "centroid": vector_array(np.ones((1, 4), np.float32))}))
    ref = DatasetRef.of(uri)
    assert ref.open().num_rows == 1
    with pytest.raises(StageInputError, match="the config pins"):
        ref.model_copy(update={"sha256": "0" * 64}).open()


def test_clustering_an_empty_embedding_set_says_why(tmp_path: Path) -> None:
    uri = str(tmp_path / "embedded")
    write_table(uri, pa.table({"id": pa.array([], pa.string()),
                               "embedding": vector_array(np.zeros((0, 4), np.float32))}))
    with pytest.raises(StageInputError, match="embed stage rejected every row"):
        run_global_step(PruneCentroids(CentroidsConfig()), [uri], str(tmp_path / "centroids"),
                        QUIET)


def test_select_rejects_listed_ids_with_reason_survivor_and_score(tmp_path: Path) -> None:
    uri = str(tmp_path / "decisions")
    write_table(uri, pa.table({
        "id": ["b", "c"], "reason": ["semantic_duplicate", "pruned_easy"],
        "duplicate_of": ["a", None], "score": [0.97, 0.05],
        "detail": ["cosine 0.9700 to a", "prototype distance 0.0500"]}, schema=DECISION_SCHEMA))
    stage = PruneSelect(PruneSelectConfig(decisions=DatasetRef.of(uri)))
    stage.setup()
    batch = pa.table({"id": ["a", "b", "c", "d"], "text": ["w", "x", "y", "z"],
                      "minhash": [[1], [2], [3], [4]], "exact_key": ["k"] * 4})
    split = stage.process(batch)
    assert split.kept.column("id").to_pylist() == ["a", "d"]
    assert split.kept.schema == stage.output_schema(batch.schema)
    assert split.rejected.schema == stage.rejected_schema(batch.schema)
    rejected = split.rejected.to_pylist()
    assert [(r["id"], r["reject_reason"], r["duplicate_of"], r["prune_score"])
            for r in rejected] == [("b", "semantic_duplicate", "a", 0.97),
                                   ("c", "pruned_easy", None, 0.05)]


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local", "prefect_server")
def test_prune_flow_removes_copies_prunes_and_accounts_for_every_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = str(tmp_path / "in")
    rows = owt_rows()
    write_table(source, rows)
    config = PruneConfig(
        embed=EmbedConfig(embedder=EmbedderConfig(device="cpu")),
        clustering=ClusteringConfig(clusters=4), dedup=DedupConfig(minhash_threshold=0.5, eps=0.1),
        prototypes=PrototypeConfig(strategy="auto", budget_rows=10, keep_fraction=0.75))
    params = PruneParams(input=source, output=str(tmp_path / "prune"), config=config,
                         plots=str(tmp_path / "plots"),
                         runtime=RuntimeConfig(progress=False, storage=StorageConfig()))
    embedded_result, scored_result, selected = prune_flow(params)
    assert embedded_result.stats.rows_rejected == 2
    assert scored_result.stats.rows_out == selected.stats.rows_in

    embedded = Dataset.open(str(tmp_path / "prune" / "embedded"))
    assert embedded.rejected.to_table().column("reject_reason").to_pylist() == ["empty_text"] * 2
    rejected = Dataset.open(selected.output).rejected.to_table().to_pylist()
    kept = Dataset.open(selected.output).to_table()
    assert kept.num_rows + len(rejected) + 2 == rows.num_rows
    assert {"exact_key", "minhash"}.isdisjoint(kept.column_names)
    kept_ids = set(kept.column("id").to_pylist())
    why = {r["id"]: r for r in rejected}
    assert why["p07-upper"]["reject_reason"] == "exact_duplicate"
    assert why["p07-upper"]["duplicate_of"] == "p07"
    duplicates = [r for r in rejected if r["reject_reason"].endswith("duplicate")]
    for row in duplicates:
        assert row["duplicate_of"][:3] == row["id"][:3]
        survivor = row["duplicate_of"]
        assert survivor in kept_ids or (
            why[survivor]["reject_reason"].startswith("pruned")
            and f"kept copy {survivor} was then pruned" in row["reject_detail"])
    for passage in range(COPIED):
        group = [f"p{passage:02d}"] + [f"p{passage:02d}-copy{c}" for c in (1, 2)]
        assert any(g in kept_ids or why[g]["reject_reason"].startswith("pruned") for g in group)
    copied = {r["id"] for r in duplicates if int(r["id"][1:3]) < COPIED}
    assert len(copied) >= COPIED * COPIES - 2
    pruned = [r for r in rejected if r["reject_reason"].startswith("pruned")]
    assert pruned and {r["reject_reason"] for r in pruned} == {"pruned_easy"}
    assert len(kept_ids) == round(0.75 * (len(kept_ids) + len(pruned)))
    assert max(r["prune_score"] for r in pruned) <= min(kept.column("centroid_distance")
                                                         .to_pylist())
    assert (tmp_path / "plots" / "prune_scores.png").read_bytes().startswith(b"\x89PNG")
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["prune-report"])))
    assert "data:image/png;base64," in artifacts[-1].data
    assert "exact_duplicate" in artifacts[-1].data
    with get_client(sync_client=True) as client:
        steps = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["prune-centroids-report", "prune-decisions-report"])))
    assert {a.key for a in steps} == {"prune-centroids-report", "prune-decisions-report"}
    assert any("| sample_rows |" in a.data for a in steps), "the step's summary is reported"

    monkeypatch.setattr("gristmill.stages.prune_decisions.duplicate_decisions", _no_recompute)
    again = prune_flow(params)
    assert again[-1].cache_key == selected.cache_key


def test_decisions_and_their_summary_commit_together_and_are_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary lives in the decisions' manifest, so it can never belong to another run;
    an unchanged rerun reuses both, a new config recomputes both."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_table(str(tmp_path / "emb"), pa.table({
        "id": [f"r{i}" for i in range(12)],
        "text": [f"document number {i} about topic {i % 3} with some words" for i in range(12)],
        "embedding": vector_array(vectors)}))
    config_a = PruneConfig(clustering=ClusteringConfig(clusters=2))
    centroids = run_global_step(PruneCentroids(CentroidsConfig.of(config_a)),
                                [str(tmp_path / "emb")], str(tmp_path / "cent"), QUIET)
    assert centroids.stats.rows_out == 2 and centroids.summary["sample_rows"] == 12
    scorer = PruneScore(PruneScoreConfig(centroids=centroids.ref))
    scorer.setup()
    write_table(str(tmp_path / "scored"),
                scorer.process(Dataset.open(str(tmp_path / "emb")).to_table()).kept)
    scored, decisions = [str(tmp_path / "scored")], str(tmp_path / "dec")
    first = run_global_step(PruneDecisions(DecisionsConfig.of(config_a)), scored, decisions, QUIET)
    assert not first.reused
    with monkeypatch.context() as patch:
        patch.setattr("gristmill.stages.prune_decisions.duplicate_decisions", _no_recompute)
        assert run_global_step(PruneDecisions(DecisionsConfig.of(config_a)), scored,
                               decisions, QUIET).reused
    config_b = config_a.with_(prototypes=PrototypeConfig(keep_fraction=0.5))
    second = run_global_step(PruneDecisions(DecisionsConfig.of(config_b)), scored, decisions,
                             QUIET)
    on_disk = Dataset.open(decisions)
    reasons = on_disk.to_table().column("reason").to_pylist()
    assert not second.reused and second.summary["keep_fraction"] == 0.5
    assert on_disk.manifest.summary == second.summary
    assert second.summary["reasons"] == {r: reasons.count(r) for r in set(reasons)}


def _no_recompute(*_: object, **__: object) -> None:
    raise AssertionError("the decision step ran again on unchanged input")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local", "prefect_server")
def test_repeated_passages_keep_one_copy_each(tmp_path: Path) -> None:
    """32 real Brown passages, two of them twice byte for byte, ingested from one file:
    exact + MinHash dedup with nothing pruned keeps 30 rows, one of each pair."""
    lines = resolve("brown").files[0].read_text(encoding="utf-8").splitlines()[:30]
    passages = [" ".join(json.loads(line)["text"].split()[:200]) for line in lines]
    raw = tmp_path / "in.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n"
                           for t in [*passages, passages[4], passages[21]]))
    runtime = RuntimeConfig(progress=False)
    ingested = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(raw)]),
                         str(tmp_path / "ingest"), runtime)
    assert ingested.stats.rows_out == 32
    config = PruneConfig(
        embed=EmbedConfig(embedder=EmbedderConfig(device="cpu")),
        clustering=ClusteringConfig(clusters=3), dedup=DedupConfig(semantic=False),
        prototypes=PrototypeConfig(keep_fraction=1.0))
    *_, selected = prune_flow(PruneParams(input=ingested.output, output=str(tmp_path / "prune"),
                                          config=config, runtime=runtime))
    kept = Dataset.open(selected.output).to_table()
    rejected = Dataset.open(selected.output).rejected.to_table().to_pylist()
    assert (kept.num_rows, len(rejected)) == (30, 2)
    assert sorted(kept.column("text").to_pylist()) == sorted(passages)
    kept_ids = set(kept.column("id").to_pylist())
    for row in rejected:
        assert row["reject_reason"] == "exact_duplicate"
        assert row["duplicate_of"] in kept_ids and row["text"] in (passages[4], passages[21])
