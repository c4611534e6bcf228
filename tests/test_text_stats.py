"""The repetition and noise statistics behind the text filter."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.scoring import text_stats
from gristmill.stages.text_filter import TextFilter, TextFilterConfig


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


small_vocabulary_texts = st.lists(st.sampled_from(["a", "bb", "ccc", "the", "of", "river"]),
                                  min_size=0, max_size=300)


@settings(max_examples=200, deadline=None)
@given(tokens=small_vocabulary_texts)
def test_the_duplicate_ngram_share_never_grows_with_n(tokens: list[str]) -> None:
    """The text filter stops early on this: a low share for n clears every larger n."""
    index = text_stats.NgramIndex(tokens)
    shares = [index.duplicate_ngram_char_fraction(n) for n in range(1, 12)]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(shares))


@settings(max_examples=100, deadline=None)
@given(tokens=small_vocabulary_texts,
       limits=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_the_early_stop_decides_as_checking_every_n(tokens: list[str],
                                                    limits: list[float]) -> None:
    config = TextFilterConfig(max_top_ngram_fraction={}, max_duplicate_line_fraction=None,
                              max_non_printable_fraction=None,
                              max_duplicate_ngram_fraction=dict(zip(range(5, 11), limits,
                                                                    strict=False)))
    index = text_stats.NgramIndex(tokens)
    first_failing = next((n for n, limit in sorted(config.max_duplicate_ngram_fraction.items())
                          if index.duplicate_ngram_char_fraction(n) > limit), None)
    verdict = TextFilter(config)._repetition_or_noise(" ".join(tokens), tokens)
    if first_failing is None:
        assert verdict is None
    else:
        assert verdict is not None and f"repeated {first_failing}-grams" in verdict[1]


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
