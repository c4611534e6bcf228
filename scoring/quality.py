"""Quality scoring math: pure functions over texts and numbers (no models, no I/O).

- heuristic features: Gopher-style text statistics mapped to [0, 1] (1 = clean prose);
- a linear head over sentence embeddings (logistic regression), its training and ROC AUC;
- exact quantile cuts into quality buckets (a radix select whose passes add up per-chunk
  histograms, so workers count and nothing holds the score column) and bucket assignment.

The scorers that run models over batches live in stages/quality_scorers.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from gristmill.scoring import text_stats


class QualityError(ValueError):
    """Reference sets, weights or inputs a scorer cannot work with."""



# ---- heuristics --------------------------------------------------------------------------

HEURISTIC_FEATURES = ("length", "word_length", "alphabetic", "printable", "unique_lines",
                      "top_ngram", "duplicate_ngrams")


def heuristic_features(text: str, target_words: int = 50) -> dict[str, float]:
    """Each feature in [0, 1], 1 = looks like clean prose (Gopher rule statistics)."""
    words = text_stats.word_table(pa.array([text], pa.string()))
    count = int(words.counts[0])
    raw_words = text.split()
    mean = int(words.chars[0]) / count if count else 0.0
    index = words.ngrams(0)
    duplicate = max((index.duplicate_ngram_char_fraction(n) for n in range(5, 11)), default=0.0)
    alphabetic = sum(any(c.isalpha() for c in w) for w in raw_words) / max(1, len(raw_words))
    return {
        "length": min(1.0, count / target_words),
        "word_length": 1.0 if 3.0 <= mean <= 10.0 else max(0.0, 1 - abs(mean - 6.5) / 6.5),
        "alphabetic": alphabetic,
        "printable": 1.0 - min(1.0, 10 * text_stats.non_printable_fraction(text)),
        "unique_lines": 1.0 - text_stats.duplicate_line_fraction(text),
        "top_ngram": 1.0 - index.top_ngram_char_fraction(2),
        "duplicate_ngrams": 1.0 - duplicate,
    }



# ---- embedding classifier ----------------------------------------------------------------


class LinearHead(NamedTuple):
    """A trained logistic regression over embeddings: score = vectors @ coef + intercept."""

    coef: np.ndarray
    intercept: float

    def decision(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.shape[1] != self.coef.shape[0]:
            raise QualityError(f"classifier expects {self.coef.shape[0]}-dim embeddings, got "
                               f"{vectors.shape[1]}: was it trained with another embedder?")
        return vectors.astype(np.float64) @ self.coef + self.intercept

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, coef=self.coef, intercept=np.array([self.intercept]))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearHead:
        with np.load(io.BytesIO(data)) as arrays:
            return cls(np.asarray(arrays["coef"], np.float64), float(arrays["intercept"][0]))


def train_linear_head(positives: np.ndarray, negatives: np.ndarray, *, c: float = 1.0,
                      max_iter: int = 1000) -> LinearHead:
    """Logistic regression, positives = 1, classes balanced so a small positive set counts."""
    from sklearn.linear_model import LogisticRegression

    if len(positives) < 2 or len(negatives) < 2:
        raise QualityError(f"need at least 2 positive and 2 negative reference texts, got "
                           f"{len(positives)} and {len(negatives)}")
    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    model = LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced").fit(x, y)
    return LinearHead(model.coef_[0].copy(), float(model.intercept_[0]))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(positive, bool), np.asarray(scores, np.float64)))


# ---- quality buckets ----------------------------------------------------------------------

KEY_BITS = 16
SIGN = np.uint64(1 << 63)


def _sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the same order as the float64 values (sign flipped, negatives inverted)."""
    bits = (np.ascontiguousarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    return np.where(bits & SIGN, ~bits, bits | SIGN)


def _key_value(key: int) -> float:
    bits = key ^ (1 << 63) if key >> 63 else ~key & 0xFFFF_FFFF_FFFF_FFFF
    return float(np.array([bits], np.uint64).view(np.float64)[0])


RadixPass = Callable[[int, list[int]], np.ndarray]
"""One pass of the radix select over every score: (level, distinct prefixes) -> counts of
the next 16-bit digit, one row of 2**16 per prefix."""


def radix_counts(scores: np.ndarray, level: int, prefixes: Sequence[int]) -> np.ndarray:
    """One chunk's share of a radix-select pass: per prefix (the digits the earlier passes
    chose), how many of its scores carry each next 16-bit digit. Shares add up, so a pass
    can run over any split of the scores on any number of workers."""
    keys = _sortable_keys(scores)
    shift = np.uint64(64 - KEY_BITS * (level + 1))
    digits = ((keys >> shift) & np.uint64(0xFFFF)).astype(np.intp)
    high = keys >> (shift + np.uint64(KEY_BITS)) if level else None
    counts = np.zeros((len(prefixes), 1 << KEY_BITS), np.int64)
    for row, prefix in enumerate(prefixes):
        chosen = digits if high is None else digits[high == np.uint64(prefix)]
        counts[row] = np.bincount(chosen, minlength=1 << KEY_BITS)
    return counts


def order_statistics(count_pass: RadixPass, rows: int, positions: list[int]) -> list[float]:
    """Exact k-th smallest values (0-based `positions`) of `rows` scores. A radix select on
    the scores' sortable 64-bit keys, 16 bits a pass: four passes of `count_pass`, memory
    65,536 counters per distinct prefix, whatever the number of rows."""
    prefixes = [0] * len(positions)
    remaining = list(positions)
    for level in range(64 // KEY_BITS):
        distinct = sorted(set(prefixes))  # targets on the same prefix share one histogram
        counts = count_pass(level, distinct)
        if level == 0 and int(counts[0].sum()) != rows:
            raise QualityError(f"expected {rows} scores, the passes counted "
                               f"{int(counts[0].sum())}")
        for t in range(len(positions)):
            cumulative = np.cumsum(counts[distinct.index(prefixes[t])])
            digit = int(np.searchsorted(cumulative, remaining[t], side="right"))
            remaining[t] -= int(cumulative[digit - 1]) if digit else 0
            prefixes[t] = (prefixes[t] << KEY_BITS) | digit
    return [_key_value(p) for p in prefixes]


def bucket_ranks(rows: int, fractions: list[float]) -> list[int]:
    """Rows in the top 1, 2, ..., K buckets: ceil(rows * cumulative fraction)."""
    if not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise QualityError(f"bucket fractions must be positive and sum to at most 1: "
                           f"{fractions}")
    ranks = [int(np.ceil(round(rows * c, 9))) for c in np.cumsum(fractions)]
    if rows < len(fractions) or ranks[0] < 1 or any(np.diff(ranks) <= 0):
        raise QualityError(
            f"{rows} scored rows cannot fill {len(fractions)} quality buckets of fractions "
            f"{fractions}: every bucket needs at least one row (score more rows or cut "
            "fewer, wider buckets)")
    return [min(r, rows) for r in ranks]


def bucket_thresholds(count_pass: RadixPass, rows: int, fractions: list[float]) -> list[float]:
    """Descending score cuts: bucket i holds scores in [cut_i, cut_{i-1}) (bucket 0: >= cut_0),
    cut_i being the score of the row ranked ceil(rows * (f_0 + ... + f_i)) from the top."""
    ranks = bucket_ranks(rows, fractions)
    return order_statistics(count_pass, rows, [rows - r for r in ranks])


def assign_buckets(scores: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Bucket per score: the number of cuts above it (0 = best, K = below every bucket)."""
    ascending = np.asarray(thresholds[::-1], dtype=np.float64)
    return len(thresholds) - np.searchsorted(ascending, scores, side="right")
