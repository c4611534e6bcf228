"""Quality scorers: one number per row, higher is better, computed a batch at a time.

Scores are written once as a column and selected on many times (different budgets, cuts),
so a scorer only scores; deciding what to keep is the quality filter's job. Each scorer
returns, per row, a score or the reason it could not score the row (the stage rejects
those rows rather than writing NaN). Kinds, chosen by `kind` in the config:

- `heuristic`: Gopher-style text statistics mapped to [0, 1] and averaged with weights.
- `embedding_classifier`: logistic regression on sentence embeddings, trained from
  positive and negative reference texts; the score is the log-odds of "positive".
- `perplexity`: minus the mean per-token negative log-likelihood under a small causal LM.
- `clip`: cosine similarity of a CLIP image and its caption (a model path is required).

The math under them (features, the linear head, quantile buckets) is scoring/quality.py.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.inference import (
    Embedder,
    EmbedderConfig,
    GeneratorConfig,
    ModelNotFoundError,
    ModelPath,
    PinnedPath,
    TransformersGenerator,
)
from gristmill.scoring.quality import (
    HEURISTIC_FEATURES,
    LinearHead,
    QualityError,
    heuristic_features,
)


class Scores(NamedTuple):
    """Per row: the score (NaN where it could not be computed) and why not (None = scored)."""

    values: np.ndarray
    problems: list[str | None]


class Scorer(Protocol):
    def load(self) -> None: ...

    def columns(self) -> list[str]: ...

    def score(self, batch: pa.Table) -> Scores: ...


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _texts(batch: pa.Table, column: str) -> tuple[list[str], list[str | None]]:
    """Texts with None/blank replaced by "" and flagged as a problem."""
    texts = batch.column(column).to_pylist()
    problems = [None if isinstance(t, str) and t.strip() else "empty_text" for t in texts]
    return [t if p is None else "" for t, p in zip(texts, problems, strict=True)], problems



# ---- heuristics --------------------------------------------------------------------------

class HeuristicScorerConfig(_Config):
    """A weighted mean of heuristic features: no model, thousands of rows a second."""

    kind: Literal["heuristic"] = "heuristic"
    text_column: str = "text"
    target_words: int = Field(default=50, ge=1, description="Words for a full length score")
    weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(HEURISTIC_FEATURES, 1.0),
        description=f"Weight per feature; features: {', '.join(HEURISTIC_FEATURES)}")

    @model_validator(mode="after")
    def _known_weights(self) -> HeuristicScorerConfig:
        unknown = set(self.weights) - set(HEURISTIC_FEATURES)
        if unknown:
            raise ValueError(f"unknown heuristic features {sorted(unknown)}; "
                             f"known: {HEURISTIC_FEATURES}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"heuristic weights must be >= 0 with a positive sum: "
                             f"{self.weights}")
        return self


class HeuristicScorer:
    def __init__(self, config: HeuristicScorerConfig) -> None:
        self.config = config

    def load(self) -> None:
        """Nothing to load."""

    def columns(self) -> list[str]:
        return [self.config.text_column]

    def score(self, batch: pa.Table) -> Scores:
        texts, problems = _texts(batch, self.config.text_column)
        weights = self.config.weights
        total = sum(weights.values())
        values = np.full(len(texts), np.nan)
        for i, text in enumerate(texts):
            if problems[i] is None:
                features = heuristic_features(text, self.config.target_words)
                values[i] = sum(w * features[name] for name, w in weights.items()) / total
        return Scores(values, problems)


# ---- embedding classifier ----------------------------------------------------------------


class EmbeddingClassifierScorerConfig(_Config):
    """Log-odds of "positive" from a linear head over sentence embeddings. The head is a file
    (written by `train_linear_head(...).to_bytes()`); its sha256 keys the stage's cache."""

    kind: Literal["embedding_classifier"] = "embedding_classifier"
    text_column: str = "text"
    classifier: Annotated[str, PinnedPath()] = Field(description="URI of the trained head (.npz)")
    classifier_sha256: str = Field(description="Content hash of that file, checked on load")
    embedder: EmbedderConfig = EmbedderConfig(max_seq_length=256)


class EmbeddingClassifierScorer:
    def __init__(self, config: EmbeddingClassifierScorerConfig, head: LinearHead) -> None:
        self.config = config
        self.head = head
        self.embedder = Embedder(config.embedder)

    def load(self) -> None:
        self.embedder.load()

    def columns(self) -> list[str]:
        return [self.config.text_column]

    def score(self, batch: pa.Table) -> Scores:
        texts, problems = _texts(batch, self.config.text_column)
        values = np.full(len(texts), np.nan)
        rows = [i for i, p in enumerate(problems) if p is None]
        if rows:
            values[rows] = self.head.decision(self.embedder.embed([texts[i] for i in rows]))
        return Scores(values, problems)


# ---- perplexity ---------------------------------------------------------------------------


CHARS_PER_TOKEN_BOUND = 32
"""Text beyond max_tokens * this many characters cannot reach the scored tokens."""


class PerplexityScorerConfig(_Config):
    """Minus the mean token negative log-likelihood (nats) of the text's first tokens."""

    kind: Literal["perplexity"] = "perplexity"
    text_column: str = "text"
    generator: GeneratorConfig = Field(
        default=GeneratorConfig(), description="The LM (model path; None = embedded SmolLM2)")
    max_tokens: int = Field(default=256, ge=2, description="Tokens scored per text")
    batch_size: int = Field(default=8, ge=1)


class PerplexityScorer:
    """Per-token loss with the loaded HF model: texts are right-padded by hand so positions
    start at 0 for every row, and the first token (no context) is not scored."""

    def __init__(self, config: PerplexityScorerConfig) -> None:
        self.config = config
        self.generator = TransformersGenerator(config.generator)  # checks the path now

    def load(self) -> None:
        self.generator.load()

    def columns(self) -> list[str]:
        return [self.config.text_column]

    def score(self, batch: pa.Table) -> Scores:
        texts, problems = _texts(batch, self.config.text_column)
        tokenizer = self.generator.tokenizer
        chars = CHARS_PER_TOKEN_BOUND * self.config.max_tokens  # never tokenize a whole book
        ids = [tokenizer(t[:chars], add_special_tokens=False)["input_ids"][: self.config.max_tokens]
               if p is None else [] for t, p in zip(texts, problems, strict=True)]
        for i, row in enumerate(ids):
            if problems[i] is None and len(row) < 2:
                problems[i] = "too_few_tokens"
        values = np.full(len(texts), np.nan)
        rows = [i for i, p in enumerate(problems) if p is None]
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start:start + self.config.batch_size]
            values[chunk] = self._mean_log_likelihood([ids[i] for i in chunk])
        return Scores(values, problems)

    def _mean_log_likelihood(self, rows: list[list[int]]) -> np.ndarray:
        import torch

        model = self.generator.model
        width = max(map(len, rows))
        pad = self.generator.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device),
                           attention_mask=mask.to(model.device)).logits.float()
        targets = input_ids[:, 1:].to(logits.device)
        token_loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, reduction="none")
        weights = mask[:, 1:].to(logits.device).float()
        mean = (token_loss * weights).sum(1) / weights.sum(1)
        return -mean.cpu().numpy().astype(np.float64)


# ---- CLIP ---------------------------------------------------------------------------------


class ClipScorerConfig(_Config):
    """Cosine similarity of CLIP image and text embeddings. No CLIP model ships with
    gristmill: `model` must name a local Hugging Face CLIP folder."""

    kind: Literal["clip"] = "clip"
    model: Annotated[str, ModelPath()] = Field(
        description="Local folder of a Hugging Face CLIP model")
    text_column: str = "text"
    image_column: str = Field(default="image_path",
                              description="Image file paths (string) or encoded bytes")
    batch_size: int = Field(default=32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ClipScorer:
    def __init__(self, config: ClipScorerConfig) -> None:
        self.config = config
        folder = Path(config.model).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"CLIP model path {config.model!r} is not a model folder (no config.json); "
                "no CLIP model ships with gristmill: download one and name its folder")
        self.folder = folder
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        from gristmill.inference.models import offline_hub, resolve_device

        offline_hub()
        self.device = resolve_device(self.config.device)
        self._model = CLIPModel.from_pretrained(self.folder).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.processor = AutoImageProcessor.from_pretrained(self.folder)

    def columns(self) -> list[str]:
        return [self.config.text_column, self.config.image_column]

    def score(self, batch: pa.Table) -> Scores:
        if self._model is None:
            self.load()
        texts, problems = _texts(batch, self.config.text_column)
        images: list[Any] = []
        for i, source in enumerate(batch.column(self.config.image_column).to_pylist()):
            image = _open_image(source) if problems[i] is None else None
            if problems[i] is None and image is None:
                problems[i] = "unreadable_image"
            images.append(image)
        values = np.full(len(texts), np.nan)
        rows = [i for i, p in enumerate(problems) if p is None]
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start:start + self.config.batch_size]
            values[chunk] = self._similarity([texts[i] for i in chunk],
                                             [images[i] for i in chunk])
        return Scores(values, problems)

    def _similarity(self, texts: list[str], images: list[Any]) -> np.ndarray:
        import torch

        limit = self._model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit,
                                return_tensors="pt").to(self.device)
        pixels = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            text = self._model.get_text_features(input_ids=tokens["input_ids"],
                                                 attention_mask=tokens["attention_mask"])
            image = self._model.get_image_features(pixel_values=pixels["pixel_values"])
        text = torch.nn.functional.normalize(_tensor(text).float(), dim=-1)
        image = torch.nn.functional.normalize(_tensor(image).float(), dim=-1)
        return (text * image).sum(-1).cpu().numpy().astype(np.float64)


def _tensor(output: Any) -> Any:
    """Feature getters return a tensor, or in newer transformers an output with pooler_output."""
    return getattr(output, "pooler_output", output)


def _open_image(source: object) -> Any:
    """An RGB PIL image from a path or bytes; None when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, str) and source:
            image = Image.open(source)
        else:
            return None
        return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None


ScorerConfig = Annotated[
    HeuristicScorerConfig | EmbeddingClassifierScorerConfig | PerplexityScorerConfig
    | ClipScorerConfig, Field(discriminator="kind")]


def build_scorer(config: BaseModel, head: LinearHead | None = None) -> Scorer:
    """The scorer a config names (models are not loaded until `load()`); an embedding
    classifier needs its trained head."""
    if isinstance(config, HeuristicScorerConfig):
        return HeuristicScorer(config)
    if isinstance(config, EmbeddingClassifierScorerConfig):
        if head is None:
            raise QualityError("the embedding classifier scorer needs its trained head")
        return EmbeddingClassifierScorer(config, head)
    if isinstance(config, PerplexityScorerConfig):
        return PerplexityScorer(config)
    if isinstance(config, ClipScorerConfig):
        return ClipScorer(config)
    raise QualityError(f"unknown scorer config {type(config).__name__}")
