"""Pure text statistics the text filter decides on: no I/O, no models.

Repetition measures follow the Gopher rules (Rae et al., 2021): the share of lines that
repeat an earlier line, the share of word characters covered by the single most frequent
n-gram, and the share covered by n-grams that occur more than once. N-grams are compared
by a 64-bit rolling hash of word ids, so a 100k-word document costs milliseconds.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_NON_PRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs"})
_ALLOWED_CONTROLS = frozenset("\n\r\t")
_HASH_BASE = np.uint64(1_000_003)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def duplicate_line_fraction(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


class NgramIndex:
    """Word ids and lengths of one text, for repeated n-gram queries."""

    def __init__(self, tokens: list[str]) -> None:
        vocabulary: dict[str, int] = {}
        self.ids = np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for t in tokens),
                               dtype=np.uint64, count=len(tokens))
        self.lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        self.total_chars = int(self.lengths.sum())

    def _counts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(count of each window's n-gram, per window), windows in text order."""
        windows = len(self.ids) - n + 1
        hashes = np.zeros(windows, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                hashes = hashes * _HASH_BASE + self.ids[k:k + windows] + np.uint64(1)
        _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
        return counts[inverse], hashes

    def top_ngram_char_fraction(self, n: int) -> float:
        """Share of word characters covered by the most frequent n-gram's occurrences."""
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        per_window, _ = self._counts(n)
        best = int(np.argmax(per_window))
        if per_window[best] < 2:
            return 0.0
        gram_chars = int(self.lengths[best:best + n].sum())
        return float(per_window[best] * gram_chars / self.total_chars)

    def duplicate_ngram_char_fraction(self, n: int) -> float:
        """Share of word characters inside n-grams that occur more than once."""
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        per_window, _ = self._counts(n)
        starts = (per_window > 1).astype(np.int64)
        covered = np.convolve(starts, np.ones(n, dtype=np.int64))[: len(self.ids)] > 0
        return float(self.lengths[covered].sum() / self.total_chars)


@lru_cache(maxsize=1)
def _non_printable_pattern() -> re.Pattern[str]:
    """One character class of every control, format, private, surrogate or unassigned
    code point (tab and newlines excepted), plus U+FFFD, built once from unicodedata."""
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        bad = char == "\ufffd" or (char not in _ALLOWED_CONTROLS
                                   and unicodedata.category(char) in _NON_PRINTABLE_CATEGORIES)
        if bad:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    parts = "".join(f"\\U{a:08x}-\\U{b:08x}" if a != b else f"\\U{a:08x}" for a, b in ranges)
    return re.compile(f"[{parts}]")


def non_printable_fraction(text: str) -> float:
    """Share of characters that are non-printable or U+FFFD (an earlier decoding error)."""
    if not text:
        return 0.0
    return len(_non_printable_pattern().findall(text)) / len(text)


def mean_word_length(tokens: list[str]) -> float:
    return sum(len(t) for t in tokens) / len(tokens) if tokens else 0.0
