"""Configs, results and errors shared by every inference backend.

Configs are frozen pydantic models so they validate from YAML, pickle to Ray workers, and
hash into stage configs; loaded models never live on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple, Protocol, Self, runtime_checkable

from pydantic import Field, model_validator

from gristmill.config import FrozenModel

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
FinishReason = Literal["stop", "length"]

DEFAULT_GGUF_CACHE = "~/.cache/gristmill/gguf"


@dataclass(frozen=True)
class ModelPath:
    """Marks a config field that names a model on disk (`Annotated[str | None, ModelPath()]`):
    cache keys take the model's content in its place, so a moved copy is reused and new
    weights at the same path are not (see gristmill.inference.identity)."""

    embedded: Literal["llm", "embedder"] | None = None
    """The packaged model that None stands for; unset: None means no model."""
    file_field: str | None = None
    """A sibling field naming the one file inside the folder that is the model (a GGUF)."""


@dataclass(frozen=True)
class PinnedPath:
    """Marks a path whose content a sibling checksum field already pins (a classifier head
    and its sha256): cache keys leave the path out, so a moved copy is reused."""


class InferenceError(RuntimeError):
    """Base of the errors this package raises on purpose."""


class BackendUnavailableError(InferenceError):
    """The backend's libraries (or hardware) are not present in this environment."""


class UnknownBackendError(InferenceError, ValueError):
    """A config names a backend this package does not have."""


class ModelNotFoundError(InferenceError, FileNotFoundError):
    """A model path that does not exist or does not hold a loadable model."""


class PromptTooLongError(InferenceError, ValueError):
    """A prompt over `max_prompt_tokens`: the caller must trim (see `count_tokens`)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"prompt {index} has {tokens} tokens, over max_prompt_tokens={limit}; "
                         "trim it first (Generator.count_tokens counts what the model sees)")
        self.index, self.tokens, self.limit = index, tokens, limit


class VLLMOptions(FrozenModel):
    """Settings only the vllm backend reads (passed to ray.data.llm)."""

    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments (tensor_parallel_size, gpu_memory_utilization, ...)")
    concurrency: int = Field(default=1, ge=1, description="vLLM engine replicas (one per GPU set)")
    accelerator_type: str | None = Field(default=None, description="e.g. 'H100'; None = any GPU")


class GeneratorConfig(FrozenModel):
    """Which causal LM to run and how to decode; the same config drives every backend."""

    backend: Literal["transformers", "vllm"] = "transformers"
    model: Annotated[str | None, ModelPath(embedded="llm", file_field="gguf_file")] = Field(
        default=None, description="HF model folder or .gguf file; None = embedded SmolLM2-135M")
    gguf_file: str | None = Field(default=None, description="GGUF file name inside `model`")
    device: Device = "auto"
    dtype: DType = Field(default="auto", description="auto: bfloat16 on GPU, float32 on CPU")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate call")
    max_new_tokens: int = Field(default=64, ge=1)
    num_beams: int = Field(default=1, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    num_return_sequences: int = Field(default=1, ge=1, description="Completions per prompt (n)")
    stop: list[str] = Field(
        default_factory=list, description="Cut each completion at the first of these strings")
    max_prompt_tokens: int = Field(
        default=1024, ge=1, description="Longer prompts are an error; callers trim beforehand")
    use_chat_template: bool = True
    system_prompt: str | None = Field(
        default=None, description="System message for the chat template; None = the model's")
    seed: int | None = Field(default=0, description="Seeds torch at every generate call")
    gguf_cache_dir: str | None = Field(
        default=DEFAULT_GGUF_CACHE,
        description="Where a GGUF is kept once converted to an HF folder (parsing it takes "
                    "tens of seconds, the folder loads in one); None = always parse the GGUF")
    vllm: VLLMOptions = VLLMOptions()

    @model_validator(mode="after")
    def _decoding_is_coherent(self) -> Self:
        n, beams = self.num_return_sequences, self.num_beams
        if not self.do_sample and n > beams:
            raise ValueError(f"num_return_sequences={n} needs do_sample=true or "
                             f"num_beams >= {n}: greedy decoding has one answer per prompt")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self


class EmbedderConfig(FrozenModel):
    """Which sentence-transformers model embeds text, and how."""

    model: Annotated[str | None, ModelPath(embedded="embedder")] = Field(
        default=None, description="sentence-transformers folder; None = embedded all-MiniLM-L6-v2")
    device: Device = "auto"
    batch_size: int = Field(default=64, ge=1)
    normalize: bool = Field(default=True, description="Unit-length vectors (cosine = dot)")
    max_seq_length: int | None = Field(
        default=None, ge=1, description="Tokens kept per text; None = the model's own limit")


class Generation(NamedTuple):
    """One completion: its text (stop string removed), tokens generated, and why it ended."""

    text: str
    tokens: int
    finish_reason: FinishReason


@runtime_checkable
class Generator(Protocol):
    """Batched prompts in, `num_return_sequences` completions per prompt out."""

    def generate(self, prompts: list[str],
                 seeds: list[int] | None = None) -> list[list[Generation]]: ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def close(self) -> None: ...
