"""embed: real MiniLM vectors as a fixed-size list column; blank texts rejected, not embedded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.inference import EmbedderConfig
from gristmill.inference.models import embedded_embedder
from gristmill.stages.base import DatasetInput, Resources, StageInputError
from gristmill.stages.embed import Embed, EmbedConfig, sentence_transformer_dim
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vector_array, vectors_of
from gristmill.storage.writer import write_table

TEXTS = ["The cat sat on the mat.", "A kitten rested on the rug.",
         "Quarterly revenue rose by four percent.", "", "   \n", None]


@pytest.fixture(scope="module")
def embed() -> Embed:
    stage = Embed(EmbedConfig(embedder=EmbedderConfig(device="cpu")))
    stage.setup()
    return stage


def batch() -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(TEXTS))],
                     "text": pa.array(TEXTS, pa.string())})


def test_the_model_folder_declares_its_width_without_loading() -> None:
    assert sentence_transformer_dim(embedded_embedder()) == 384


def test_vectors_are_a_fixed_size_float32_column_and_blank_texts_are_rejected(
        embed: Embed) -> None:
    split = embed.process(batch())
    assert split.kept.schema == embed.output_schema(batch().schema)
    assert split.kept.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert split.kept.column("id").to_pylist() == ["r0", "r1", "r2"]
    assert split.rejected.column("id").to_pylist() == ["r3", "r4", "r5"]
    assert set(split.rejected.column("reject_reason").to_pylist()) == {"empty_text"}
    assert "embedding" not in split.rejected.column_names
    vectors = vectors_of(split.kept.column("embedding"))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2


def test_an_all_blank_batch_gives_an_empty_vector_column(embed: Embed) -> None:
    table = pa.table({"id": ["a", "b"], "text": ["", " "]})
    split = embed.process(table)
    assert split.kept.num_rows == 0 and split.rejected.num_rows == 2
    assert split.kept.schema == embed.output_schema(table.schema)


def test_vector_columns_round_trip_through_arrow() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    column = pa.chunked_array([vector_array(vectors[:1]), vector_array(vectors[1:])])
    np.testing.assert_array_equal(vectors_of(column), vectors)


def test_bad_input_and_contradictory_devices_are_said_up_front(embed: Embed) -> None:
    with pytest.raises(StageInputError, match="missing column 'text'"):
        embed.check_input(pa.schema([("body", pa.string())]))
    with pytest.raises(StageInputError, match="needs string"):
        embed.check_input(pa.schema([("text", pa.int64())]))
    with pytest.raises(ValueError, match="num_gpus > 0"):
        EmbedConfig(embedder=EmbedderConfig(device="cuda"))
    with pytest.raises(ValueError, match=r"embedder\.device=cpu"):
        EmbedConfig(resources=Resources(num_gpus=1), embedder=EmbedderConfig(device="cpu"))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_stage_runs_on_ray_and_keeps_every_row_accounted(tmp_path) -> None:
    source = str(tmp_path / "in")
    texts = [f"passage number {i} about topic {i % 3}" for i in range(40)] + ["", " "]
    write_table(source, pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts}),
                max_rows=25)
    out = str(tmp_path / "out")
    result = run_stage(Embed, EmbedConfig(embedder=EmbedderConfig(device="cpu")),
                       DatasetInput(source), out,
                       RuntimeConfig(progress=False, storage=StorageConfig()))
    assert (result.stats.rows_in, result.stats.rows_out, result.stats.rows_rejected) == (42, 40, 2)
    table = Dataset.open(out).to_table()
    assert vectors_of(table.column("embedding")).shape == (40, 384)
