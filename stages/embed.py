"""embed: one vector per text as a fixed_size_list<float32, dim> column.

Clustering, semantic dedup and retrieval all start from the same vectors, so they are
computed once, stored as shards next to the text, and streamed by later barriers. A text
that is null, empty or only whitespace has nothing to embed and is rejected as
`empty_text`. On GPU workers set `resources.num_gpus` (the worker gets a GPU) and
`embedder.device` ("auto" or "cuda").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Self

import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.inference import Embedder, EmbedderConfig
from gristmill.inference.embed import resolve_embedder_folder
from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Resources,
    Split,
    StageConfig,
    require_columns,
    split_by_reasons,
)
from gristmill.storage.vectors import vector_array


class EmbedConfig(StageConfig):
    """Which column to embed, where the vectors go, and the embedding model."""

    resources: Resources = Resources(batch_rows=256)
    text_column: str = "text"
    vector_column: str = "embedding"
    embedder: EmbedderConfig = EmbedderConfig()
    dim: int | None = Field(
        default=None, ge=1,
        description="Vector width; None = read from the model folder (loaded if it must be)")

    @model_validator(mode="after")
    def _device_matches_resources(self) -> Self:
        """A worker without a Ray GPU cannot see one, and a GPU worker left on the CPU
        wastes it: both are config mistakes worth saying before any work."""
        gpus, device = self.resources.num_gpus, self.embedder.device
        if device == "cuda" and gpus == 0:
            raise ValueError("embedder.device=cuda needs resources.num_gpus > 0: Ray hides "
                             "GPUs from workers that do not ask for one")
        if device == "cpu" and gpus > 0:
            raise ValueError("resources.num_gpus > 0 with embedder.device=cpu would hold a "
                             "GPU without using it; set embedder.device to auto or cuda")
        return self


def sentence_transformer_dim(folder: Path) -> int | None:
    """The output width a sentence-transformers folder declares (pooling, then any dense
    layer), read from its JSON files; None when they do not say."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return None
    dim: int | None = None
    for module in json.loads(modules_file.read_text()):
        kind = str(module.get("type", ""))
        config_file = folder / module.get("path", "") / "config.json"
        if kind.endswith("Pooling") and config_file.exists():
            pooling = json.loads(config_file.read_text())
            modes = sum(bool(v) for k, v in pooling.items() if k.startswith("pooling_mode_"))
            dim = int(pooling["word_embedding_dimension"]) * max(modes, 1)
        elif kind.endswith("Dense") and config_file.exists():
            dim = int(json.loads(config_file.read_text())["out_features"])
    return dim


def embedding_dim(config: EmbedConfig) -> int:
    """The configured width, else the model folder's, else the loaded model's."""
    if config.dim is not None:
        return config.dim
    declared = sentence_transformer_dim(resolve_embedder_folder(config.embedder))
    if declared is not None:
        return declared
    embedder = Embedder(config.embedder)
    try:
        return embedder.dim
    finally:
        embedder.close()


class Embed(MapStage[EmbedConfig]):
    name: ClassVar[str] = "embed"

    def __init__(self, config: EmbedConfig) -> None:
        super().__init__(config)
        self._dim: int | None = config.dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = embedding_dim(self.config)
        return self._dim

    def setup(self) -> None:
        self.embedder = Embedder(self.config.embedder).load()
        if self.embedder.dim != self.dim:
            raise ValueError(f"the embedder makes {self.embedder.dim}-d vectors; the output "
                             f"schema says {self.dim} (config dim={self.config.dim})")

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {self.config.text_column: STRING_TYPES})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        column = self.config.vector_column
        base = [f for f in input_schema if f.name != column]
        return pa.schema([*base, pa.field(column, pa.list_(pa.float32(), self.dim))])

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        texts = batch.column(cfg.text_column).to_pylist()
        reasons: list[str | None] = [None] * len(texts)
        details: list[str | None] = [None] * len(texts)
        for i, text in enumerate(texts):
            if text is None or not text.strip():
                reasons[i] = "empty_text"
                details[i] = f"{cfg.text_column} is {'null' if text is None else 'blank'}"
        split = split_by_reasons(batch, reasons, details, self.name)
        kept = split.kept
        if cfg.vector_column in kept.column_names:
            kept = kept.drop_columns([cfg.vector_column])
        vectors = self.embedder.embed(kept.column(cfg.text_column).to_pylist())
        field = self.output_schema(batch.schema).field(cfg.vector_column)
        return Split(kept.append_column(field, vector_array(vectors.reshape(-1, self.dim))),
                     split.rejected)
