"""Reference sets for the embedding-classifier quality scorer: positive and negative texts
from datasets or sources, a held-out split by id hash, and the trained linear head with its
held-out ROC AUC (written as a file whose sha256 pins it in the scorer's config).
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import Field

from gristmill.config import FrozenModel
from gristmill.inference import Embedder, EmbedderConfig
from gristmill.scoring.quality import (
    roc_auc,
    train_linear_head,
)
from gristmill.stages.base import (
    STRING_TYPES,
    require_columns,
)
from gristmill.stages.quality_scorers import (
    EmbeddingClassifierScorerConfig,
)
from gristmill.storage.fs import resolve, write_bytes_atomic
from gristmill.storage.reader import Dataset


class ReferenceSets(FrozenModel):
    """Labelled reference texts for the embedding classifier: rows whose label is in
    `positive` are what good data looks like, rows in `negative` what to filter out. A
    stable hash of each row's id holds out a share to measure the classifier on."""

    uri: str = Field(title="Reference dataset", description="A dataset with text and labels")
    text_column: str = "text"
    label_column: str = "label"
    positive: list[str] = Field(default_factory=lambda: ["ham"], min_length=1)
    negative: list[str] = Field(default_factory=lambda: ["spam"], min_length=1)
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)
    max_rows_per_class: int | None = Field(
        default=None, ge=2, description="Cap per class and split (embedding costs CPU time)")
    c: float = Field(default=1.0, gt=0, description="Inverse L2 strength of the regression")
    seed: int = 0


class ClassifierReport(FrozenModel):
    train_positive: int
    train_negative: int
    holdout_positive: int
    holdout_negative: int
    holdout_auc: float | None


def _held_out(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    digests = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in ids]
    draws = np.array([int.from_bytes(d, "big") for d in digests], dtype=np.float64) / 2.0**64
    return draws < fraction


def reference_texts(refs: ReferenceSets) -> dict[tuple[str, bool], list[str]]:
    """(split, positive) -> texts, split being "train" or "holdout"."""
    dataset = Dataset.open(refs.uri)
    require_columns(dataset.schema, "reference classifier",
                    {refs.text_column: STRING_TYPES, refs.label_column: STRING_TYPES,
                     "id": STRING_TYPES})
    table = dataset.to_table(columns=["id", refs.text_column, refs.label_column])
    labels = table.column(refs.label_column).to_pylist()
    texts = table.column(refs.text_column).to_pylist()
    held = _held_out(table.column("id").to_pylist(), refs.holdout_fraction, refs.seed)
    groups: dict[tuple[str, bool], list[str]] = {(s, p): [] for s in ("train", "holdout")
                                                 for p in (True, False)}
    cap = refs.max_rows_per_class
    for i in np.random.default_rng(refs.seed).permutation(len(texts)):  # a cap takes a sample
        text, label = texts[i], labels[i]
        if label in refs.positive or label in refs.negative:
            group = groups[("holdout" if held[i] else "train", label in refs.positive)]
            if text and text.strip() and (cap is None or len(group) < cap):
                group.append(text)
    return groups


def train_reference_classifier(refs: ReferenceSets, embedder: EmbedderConfig,
                               output: str) -> tuple[EmbeddingClassifierScorerConfig,
                                                     ClassifierReport]:
    """Train the linear head on the reference split, write it to `output`, and measure ROC
    AUC on the held-out split: the scorer config that points at (and hashes) the head."""
    groups = reference_texts(refs)
    model = Embedder(embedder)
    head = train_linear_head(model.embed(groups[("train", True)]),
                             model.embed(groups[("train", False)]), c=refs.c)
    auc = None
    if groups[("holdout", True)] and groups[("holdout", False)]:
        held = groups[("holdout", True)] + groups[("holdout", False)]
        labels = np.array([True] * len(groups[("holdout", True)])
                          + [False] * len(groups[("holdout", False)]))
        auc = roc_auc(head.decision(model.embed(held)), labels)
    data = head.to_bytes()
    write_bytes_atomic(resolve(output), data)
    config = EmbeddingClassifierScorerConfig(
        text_column=refs.text_column, classifier=resolve(output).uri(),
        classifier_sha256=hashlib.sha256(data).hexdigest(), embedder=embedder)
    report = ClassifierReport(
        train_positive=len(groups[("train", True)]), train_negative=len(groups[("train", False)]),
        holdout_positive=len(groups[("holdout", True)]),
        holdout_negative=len(groups[("holdout", False)]), holdout_auc=auc)
    return config, report
