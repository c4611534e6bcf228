"""Where model text and vectors come from: generator and embedder backends behind one API.

`load_generator(GeneratorConfig(...))` returns a `Generator` (transformers on CPU/GPU, or vLLM
through ray.data.llm on GPU clusters); `Embedder(EmbedderConfig(...))` embeds with
sentence-transformers. Defaults are the embedded SmolLM2-135M-Instruct GGUF and
all-MiniLM-L6-v2. Models load lazily, once per process (a stage loads them in setup()).
"""

from __future__ import annotations

from gristmill.inference.config import (
    BackendUnavailableError,
    EmbedderConfig,
    Generation,
    Generator,
    GeneratorConfig,
    InferenceError,
    ModelNotFoundError,
    ModelPath,
    PinnedPath,
    PromptTooLongError,
    UnknownBackendError,
    VLLMOptions,
)
from gristmill.inference.embed import Embedder
from gristmill.inference.hf import TransformersGenerator
from gristmill.inference.vllm_backend import VLLMGenerator


def load_generator(config: GeneratorConfig) -> Generator:
    """The backend a config names; models themselves load on first use or `load()`."""
    backends = {"transformers": TransformersGenerator, "vllm": VLLMGenerator}
    if config.backend not in backends:
        raise UnknownBackendError(
            f"unknown generator backend {config.backend!r}; choose one of {sorted(backends)}")
    return backends[config.backend](config)


__all__ = [
    "BackendUnavailableError",
    "Embedder",
    "EmbedderConfig",
    "Generation",
    "Generator",
    "GeneratorConfig",
    "InferenceError",
    "ModelNotFoundError",
    "ModelPath",
    "PinnedPath",
    "PromptTooLongError",
    "TransformersGenerator",
    "UnknownBackendError",
    "VLLMGenerator",
    "VLLMOptions",
    "load_generator",
]
