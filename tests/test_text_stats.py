"""The repetition and noise statistics behind the text filter."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gristmill.scoring import text_stats


def naive_duplicate_fraction(tokens: list[str], n: int) -> float:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = set()
    for start, gram in enumerate(grams):
        if counts[gram] > 1:
            covered.update(range(start, start + n))
    total = sum(len(t) for t in tokens)
    return sum(len(tokens[i]) for i in covered) / total


def naive_top_fraction(tokens: list[str], n: int) -> float:
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(len(t) for t in gram) / sum(len(t) for t in tokens)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 5, 10])
def test_hashed_ngram_fractions_match_a_direct_count(seed: int, n: int) -> None:
    rng = random.Random(seed)
    vocabulary = ["a", "bb", "ccc", "dddd", "the", "of", "river"]
    tokens = [rng.choice(vocabulary) for _ in range(rng.randint(20, 400))]
    index = text_stats.NgramIndex(tokens)
    assert index.duplicate_ngram_char_fraction(n) == pytest.approx(
        naive_duplicate_fraction(tokens, n))
    top = index.top_ngram_char_fraction(n)
    assert top == pytest.approx(naive_top_fraction(tokens, n))


def test_text_without_repeats_scores_zero() -> None:
    index = text_stats.NgramIndex(["one", "two", "three", "four", "five", "six", "seven", "eight"])
    assert index.duplicate_ngram_char_fraction(2) == 0.0
    assert index.top_ngram_char_fraction(2) == 0.0


def test_short_texts_have_no_ngrams() -> None:
    index = text_stats.NgramIndex(["only", "three", "words"])
    assert index.duplicate_ngram_char_fraction(5) == 0.0
    assert index.top_ngram_char_fraction(5) == 0.0


def test_duplicate_lines_are_counted_after_the_first() -> None:
    text = "alpha\nbeta\nalpha\n\nalpha\ngamma"
    assert text_stats.duplicate_line_fraction(text) == pytest.approx(2 / 5)


def test_control_characters_and_replacement_marks_are_non_printable() -> None:
    assert text_stats.non_printable_fraction("plain text\twith\nlines") == 0.0
    assert text_stats.non_printable_fraction("ab\x00\x07") == pytest.approx(0.5)
    assert text_stats.non_printable_fraction("caf\ufffd") == pytest.approx(0.25)
    assert text_stats.non_printable_fraction("zero\u200bwidth") == pytest.approx(1 / 10)


def test_words_are_lowercased_unicode_words() -> None:
    assert text_stats.words("Grüße, WORLD! 42") == ["grüße", "world", "42"]
