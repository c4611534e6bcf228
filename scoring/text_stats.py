"""Pure text statistics the text filter decides on: no I/O, no models.

Repetition measures follow the Gopher rules (Rae et al., 2021): the share of lines that
repeat an earlier line, the share of word characters covered by the single most frequent
n-gram, and the share covered by n-grams that occur more than once.

Words are cut by Arrow for many texts at once (`word_table`): lowercased, split on runs of
characters that are neither letters, digits nor "_", and kept as arrays of 64-bit ids and
lengths, never as Python strings (a 2.7 MB document's word list cost 39 MB and a third of
the filter's time). N-grams are compared by a 64-bit rolling hash of the word ids, counted in
a hash table (pandas' factorize: half the time of sorting them), so a 100k-word document
costs milliseconds.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_BETWEEN_WORDS = r"[^\p{L}\p{N}_]+"
"""RE2: a run of characters that are not letters, digits or "_" (Python's \\w, in Unicode)."""
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_NON_PRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs"})
_HASH_BASE = np.uint64(1_000_003)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads small codes over 64 bits."""
    with np.errstate(over="ignore"):
        mixed = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return mixed ^ (mixed >> np.uint64(31))


class WordTable:
    """The words of many texts as flat arrays: an id per word (equal words, equal ids),
    its length in characters, and where each text's words start."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> None:
        self.ids = ids
        self.lengths = lengths
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        chars_before = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.chars = chars_before[self.offsets[1:]] - chars_before[self.offsets[:-1]]

    def ngrams(self, row: int) -> NgramIndex:
        start, stop = self.offsets[row], self.offsets[row + 1]
        return NgramIndex(self.ids[start:stop], self.lengths[start:stop])


def word_table(texts: pa.Array | pa.ChunkedArray) -> WordTable:
    """Lowercased Unicode words of every text (a null text has none), cut in Arrow."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    pieces = pc.split_pattern_regex(pc.utf8_lower(texts), _BETWEEN_WORDS)
    flat = pieces.flatten()
    lengths = pc.utf8_length(flat).to_numpy().astype(np.int64)
    is_word = lengths > 0
    codes = pc.dictionary_encode(flat).indices.to_numpy()[is_word]
    parents = pc.list_parent_indices(pieces).to_numpy()[is_word]
    counts = np.bincount(parents, minlength=len(texts)).astype(np.int64)
    return WordTable(_mix64(codes), lengths[is_word], counts)


def duplicate_line_fraction(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line."""
    lines = [line for line in map(str.strip, text.splitlines()) if line]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


class NgramIndex:
    """Word ids and lengths of one text (a slice of a `WordTable`), for n-gram queries."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.ids = ids
        self.lengths = lengths
        self.total_chars = int(lengths.sum())
        self._hashed: tuple[int, np.ndarray] | None = None
        """The last window hashes made, (n, hashes): a longer n extends them word by word."""
        self._counted: tuple[int, np.ndarray] | None = None
        """The last per-window counts made, (n, counts): they bound longer n-grams' counts."""

    def _hashes(self, n: int) -> np.ndarray:
        """A 64-bit rolling hash of each window of n words, in text order."""
        done, hashes = 0, np.zeros(len(self.ids), dtype=np.uint64)
        if self._hashed is not None and self._hashed[0] <= n:
            done, hashes = self._hashed
        windows = len(self.ids) - n + 1
        with np.errstate(over="ignore"):
            for k in range(done, n):
                hashes = hashes[:windows] * _HASH_BASE + self.ids[k:k + windows] + np.uint64(1)
        self._hashed = (n, hashes[:windows])
        return self._hashed[1]

    def _counts(self, n: int) -> np.ndarray:
        """How often each window's n-gram occurs in the text, per window in text order."""
        codes, _ = pd.factorize(self._hashes(n))
        counts = np.bincount(codes)[codes]
        self._counted = (n, counts)
        return counts

    def top_ngram_char_bound(self, n: int) -> float:
        """An upper bound of `top_ngram_char_fraction(n)` from the counts of a shorter n-gram
        already counted (an n-gram occurs at most as often as the m-gram it starts with), so
        a text far under a limit skips the exact count; infinite when nothing shorter was
        counted (overlapping occurrences can take the share itself past 1).
        """
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        if self._counted is None or self._counted[0] >= n:
            return float("inf")
        windows = len(self.ids) - n + 1
        chars_before = np.concatenate([[0], np.cumsum(self.lengths)])
        window_chars = chars_before[n:] - chars_before[:windows]
        return float((self._counted[1][:windows] * window_chars).max() / self.total_chars)

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
