"""Pure text statistics the text filter decides on: no I/O, no models.

Repetition measures follow the Gopher rules (Rae et al., 2021): the share of lines that
repeat an earlier line, the share of word characters covered by the single most frequent
n-gram, and the share covered by n-grams that occur more than once. N-grams are compared
by a 64-bit rolling hash of the words' own string hashes, counted in a hash table (pandas'
factorize: half the time of sorting them), so a 100k-word document costs milliseconds.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np
import pandas as pd

_WORD = re.compile(r"\w+", re.UNICODE)
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_NON_PRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs"})
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
    """Word hashes and lengths of one text, for repeated n-gram queries.

    A word's id is Python's string hash (computed in C, cached on the string): equal words
    get equal ids within the process, and two different words collide with odds of 2**-64,
    so no vocabulary dict is built word by word.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.ids = np.fromiter(map(hash, tokens), dtype=np.int64,
                               count=len(tokens)).view(np.uint64)
        self.lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        self.total_chars = int(self.lengths.sum())

    def _counts(self, n: int) -> np.ndarray:
        """How often each window's n-gram occurs in the text, per window in text order."""
        windows = len(self.ids) - n + 1
        hashes = np.zeros(windows, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                hashes = hashes * _HASH_BASE + self.ids[k:k + windows] + np.uint64(1)
        codes, _ = pd.factorize(hashes)
        return np.bincount(codes)[codes]

    def top_ngram_char_fraction(self, n: int) -> float:
        """Share of word characters covered by the most frequent n-gram's occurrences."""
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        per_window = self._counts(n)
        best = int(np.argmax(per_window))
        if per_window[best] < 2:
            return 0.0
        gram_chars = int(self.lengths[best:best + n].sum())
        return float(per_window[best] * gram_chars / self.total_chars)

    def duplicate_ngram_char_fraction(self, n: int) -> float:
        """Share of word characters inside n-grams that occur more than once.

        Never grows with n: a word inside a repeated (n+1)-gram is inside one of the two
        n-grams that gram starts with or ends with, and both repeat where it does.
        """
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        per_window = self._counts(n)
        starts = (per_window > 1).astype(np.int64)
        covered = np.convolve(starts, np.ones(n, dtype=np.int64))[: len(self.ids)] > 0
        return float(self.lengths[covered].sum() / self.total_chars)


@lru_cache(maxsize=65536)
def _is_non_printable(char: str) -> bool:
    return char == "\ufffd" or unicodedata.category(char) in _NON_PRINTABLE_CATEGORIES


def non_printable_fraction(text: str) -> float:
    """Share of characters that are control, format, private-use, surrogate or unassigned
    (tab and newlines allowed), or U+FFFD, the mark of an earlier decoding error.

    ASCII controls are counted by one regex; only non-ASCII characters are looked up.
    """
    if not text:
        return 0.0
    bad = len(_ASCII_CONTROL.findall(text))
    non_ascii = Counter(_NON_ASCII.findall(text))
    bad += sum(count for char, count in non_ascii.items() if _is_non_printable(char))
    return bad / len(text)
