"""A sequence-classification model by path, scoring texts for the question stages.

Serves the difficulty scorer and the reward model: both are an HF folder with a
sequence-classification head. A one-logit head's logit is the score; with several labels the
score is the expected label index under the softmax (a rating scale). No such model ships in
any package, so the path is checked when the config is made: a missing model is a clear
error before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gristmill.inference.models import offline_hub, resolve_device


class ScorerModelNotFoundError(FileNotFoundError):
    """The configured scoring model's folder does not exist or holds no model config."""


def check_model_folder(path: str, what: str) -> str:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ScorerModelNotFoundError(
            f"{what} {path!r} is not a model folder (no config.json there): give the path of a "
            "local Hugging Face sequence-classification model, or leave it unset")
    return str(folder)


class SequenceScorer:
    """Loads lazily; `score(texts, pairs)` returns one float per text (or text pair)."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 8,
                 max_length: int = 2048) -> None:
        self.path, self.device, self.batch_size, self.max_length = path, device, batch_size, \
            max_length
        self._model: Any = None
        self._tokenizer: Any = None

    def load(self) -> SequenceScorer:
        offline_hub()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = resolve_device(self.device)  # type: ignore[arg-type]
        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForSequenceClassification.from_pretrained(self.path).to(device)
        self._model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model.eval()
        return self

    def render(self, question: str, response: str | None) -> str:
        """A (question, response) pair in the model's chat template when it has one."""
        if response is None:
            return question
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(
                [{"role": "user", "content": question},
                 {"role": "assistant", "content": response}], tokenize=False)
        return f"{question}\n\n{response}"

    def score(self, questions: list[str], responses: list[str | None] | None = None) -> list[float]:
        import torch

        if self._model is None:
            self.load()
        pairs = responses if responses is not None else [None] * len(questions)
        texts = [self.render(q, r) for q, r in zip(questions, pairs, strict=True)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self._tokenizer(texts[start:start + self.batch_size], return_tensors="pt",
                                  padding=True, truncation=True, max_length=self.max_length)
            with torch.inference_mode():
                logits = self._model(**enc.to(self._model.device)).logits.float()
            if logits.shape[-1] == 1:
                out.extend(logits[:, 0].tolist())
            else:
                labels = torch.arange(logits.shape[-1], dtype=torch.float32,
                                      device=logits.device)
                out.extend((logits.softmax(-1) * labels).sum(-1).tolist())
        return out
