"""The embedder: sentence-transformers on CPU or GPU, batched, float32 arrays out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gristmill.inference.config import EmbedderConfig, ModelNotFoundError
from gristmill.inference.models import (
    embedded_embedder,
    load_sentence_transformer,
    release,
    resolve_device,
)


def resolve_embedder_folder(config: EmbedderConfig) -> Path:
    if config.model is None:
        return embedded_embedder()
    folder = Path(config.model).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"embedder model path {config.model!r} does not exist or is not a folder; "
            "gristmill loads models from local paths only (download it first)")
    return folder


class Embedder:
    """Texts -> (n, dim) float32 vectors; loads lazily and pickles without its model."""

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config or EmbedderConfig()
        self.folder = resolve_embedder_folder(self.config)
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_sentence_transformer(self.folder,
                                                    resolve_device(self.config.device))
        return self._model

    def load(self) -> Embedder:
        _ = self.model
        return self

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        model = self.model
        # the model is shared per process: set this embedder's limit on every call
        model.max_seq_length = self.config.max_seq_length or model.native_max_seq_length
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = model.encode(list(texts), batch_size=self.config.batch_size,
                               normalize_embeddings=self.config.normalize,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        release(self._model)
        self._model = None
