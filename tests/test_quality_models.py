"""Model-backed quality scorers on real data (slow): the embedding classifier on the
SpamAssassin emails, perplexity under the embedded SmolLM2-135M, the CLIP code path with a
tiny random CLIP saved to disk, and the quality_filter flow with its report."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

from gristmill.config import RuntimeConfig
from gristmill.flows.quality_filter import QualityFilterParams, quality_filter_flow
from gristmill.inference import Embedder, EmbedderConfig
from gristmill.scoring.quality import roc_auc
from gristmill.sources import resolve
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.quality_cut import LawChoice
from gristmill.stages.quality_reference import (
    ReferenceSets,
    reference_texts,
    train_reference_classifier,
)
from gristmill.stages.quality_score import QualityScore, QualityScoreConfig, load_head
from gristmill.stages.quality_scorers import (
    ClipScorerConfig,
    PerplexityScorer,
    PerplexityScorerConfig,
)
from gristmill.stages.quality_select import REJECT_REASON
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset

pytestmark = pytest.mark.slow
QUIET = RuntimeConfig(progress=False)


@pytest.fixture(scope="module")
def spam_dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """All 6,046 SpamAssassin emails through the real ingest stage, label promoted."""
    out = tmp_path_factory.mktemp("spam") / "ingest"
    run_stage(Ingest, IngestConfig(promote_fields=["label"]),
              RawFilesInput.from_args(["spam_assassin"]), str(out), QUIET)
    return str(out)


def test_a_classifier_trained_on_ham_vs_spam_ranks_held_out_ham_first(
        spam_dataset: str, tmp_path: Path) -> None:
    refs = ReferenceSets(uri=spam_dataset, positive=["ham"], negative=["spam"],
                         holdout_fraction=0.3, max_rows_per_class=80, seed=7)
    embedder = EmbedderConfig(max_seq_length=128)
    scorer, report = train_reference_classifier(refs, embedder, str(tmp_path / "head.npz"))
    assert report.train_positive == report.train_negative == 80
    assert report.holdout_auc is not None and report.holdout_auc > 0.9
    # the score stage with that classifier ranks the held-out emails the same way
    groups = reference_texts(refs)
    ham, spam = groups[("holdout", True)][:30], groups[("holdout", False)][:30]
    stage = QualityScore(QualityScoreConfig(scorer=scorer))
    stage.check_input(Dataset.open(spam_dataset).schema)
    stage.setup()
    split = stage.process(pa.table({"text": ham + spam}))
    labels = np.array([True] * len(ham) + [False] * len(spam))
    scores = split.kept.column("quality_score").to_numpy()
    expected = load_head(scorer).decision(Embedder(embedder).embed(ham + spam))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert roc_auc(scores, labels) > 0.8


def test_perplexity_prefers_fluent_text_and_ignores_batch_padding() -> None:
    texts = [json.loads(line)["text"] for line in
             resolve("brown").files[0].read_text().splitlines()[:3]]
    passages = [" ".join(t.split()[:60]) for t in texts]
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(p.split(), len(p.split()))) for p in passages]
    scorer = PerplexityScorer(PerplexityScorerConfig(max_tokens=64, batch_size=8))
    scorer.load()
    scores = scorer.score(pa.table({"text": passages + shuffled + ["Hi"]}))
    assert np.all(scores.values[:3] > scores.values[3:6])
    assert scores.problems[6] == "too_few_tokens"
    alone = scorer.score(pa.table({"text": [passages[0][:80]]})).values[0]
    batched = scorer.score(pa.table({"text": [passages[0][:80], passages[1]]})).values[0]
    assert alone == pytest.approx(batched, abs=1e-4)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialized CLIP with the real architecture, saved as a model folder."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from gristmill.inference.models import embedded_embedder

    tokenizer = AutoTokenizer.from_pretrained(embedded_embedder())
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
              ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_scores_image_caption_pairs_and_rejects_unreadable_images(
        tiny_clip: Path) -> None:
    pairs = [json.loads(line) for line in resolve("tuxpaint").files[0].read_text().splitlines()]
    root = resolve("tuxpaint").files[0].parent
    pngs = [p for p in pairs if str(p.get("image_path", "")).endswith(".png")][:6]
    batch = pa.table({"id": [f"t{i}" for i in range(8)],
                      "text": [p["text"] for p in pngs] + ["a caption", "another"],
                      "image_path": [str(root / p["image_path"]) for p in pngs]
                      + [str(tiny_clip / "missing.png"), str(tiny_clip / "config.json")]})
    stage = QualityScore(QualityScoreConfig(scorer=ClipScorerConfig(model=str(tiny_clip))))
    stage.check_input(batch.schema)
    stage.setup()
    split = stage.process(batch)
    scores = split.kept.column("quality_score").to_numpy()
    assert split.kept.num_rows == 6 and np.all(np.abs(scores) <= 1.0 + 1e-6)
    assert len(set(np.round(scores, 6))) > 1, "different pairs, different similarities"
    assert split.rejected.column("reject_reason").to_pylist() == ["unreadable_image"] * 2


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.usefixtures("ray_local", "prefect_server")
def test_the_flow_selects_the_law_pool_and_reports_the_plot(tmp_path: Path) -> None:
    lines = resolve("brown").files[0].read_text().splitlines()[:100]
    source = tmp_path / "raw.jsonl"
    source.write_text("\n".join(lines) + "\n")
    ingested = run_stage(Ingest, IngestConfig(), RawFilesInput.from_args([str(source)]),
                         str(tmp_path / "ingest"), QUIET)
    params = QualityFilterParams(input=ingested.output, work_dir=str(tmp_path / "quality"),
                                 budget=10 * 100, law=LawChoice(rescale=True),
                                 plot=str(tmp_path / "plot.png"), runtime=QUIET)
    scored, selected = quality_filter_flow(params)
    cuts = Dataset.open(selected.output).manifest.lineage.config["cuts"]
    cut = Dataset.open(cuts["uri"])
    keep = cut.manifest.summary["keep_buckets"]
    assert cut.to_table().column("selected").to_pylist() == [True] * keep + [False] * (4 - keep)
    assert selected.stats.rows_in == scored.stats.rows_out == 100
    assert selected.stats.rows_out == 10 * keep
    assert selected.stats.reject_reasons == {REJECT_REASON: 100 - 10 * keep}
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["quality-filter-report"])))
        cut_report = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["quality-cut-report"])))
    report = artifacts[-1].data
    assert f"keep the top **{keep}** of 4 buckets" in report
    assert "data:image/png;base64," in report
    assert f"| keep_buckets | {keep} |" in cut_report[-1].data
