"""The repetition and noise statistics behind the text filter."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.scoring import text_stats
from gristmill.stages.text_filter import TextFilter, TextFilterConfig


def ngram_index(tokens: list[str]) -> text_stats.NgramIndex:
    """The index of a text made of these words (each already a lowercase word)."""
    return text_stats.word_table(pa.array([" ".join(tokens)])).ngrams(0)


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
def test_hashed_ngram_fractions_match_a_direct_count(seed: int) -> None:
    """One index asked for several n in any order (hashes are extended or restarted)."""
    rng = random.Random(seed)
    vocabulary = ["a", "bb", "ccc", "dddd", "the", "of", "river"]
    tokens = [rng.choice(vocabulary) for _ in range(rng.randint(20, 400))]
    index = ngram_index(tokens)
    for n in (5, 2, 10, 3, 3, 1):
        assert index.duplicate_ngram_char_fraction(n) == pytest.approx(
            naive_duplicate_fraction(tokens, n))
        assert index.top_ngram_char_fraction(n) == pytest.approx(naive_top_fraction(tokens, n))


small_vocabulary_texts = st.lists(st.sampled_from(["a", "bb", "ccc", "the", "of", "river"]),
                                  min_size=0, max_size=300)


@settings(max_examples=200, deadline=None)
@given(tokens=small_vocabulary_texts)
def test_the_duplicate_ngram_share_never_grows_with_n(tokens: list[str]) -> None:
    """The text filter stops early on this: a low share for n clears every larger n."""
    index = ngram_index(tokens)
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
    index = ngram_index(tokens)
    first_failing = next((n for n, limit in sorted(config.max_duplicate_ngram_fraction.items())
                          if index.duplicate_ngram_char_fraction(n) > limit), None)
    verdict = TextFilter(config)._repetition_or_noise(" ".join(tokens), index)
    if first_failing is None:
        assert verdict is None
    else:
        assert verdict is not None and f"repeated {first_failing}-grams" in verdict[1]


@settings(max_examples=200, deadline=None)
@given(tokens=small_vocabulary_texts, shorter=st.integers(1, 4), longer=st.integers(2, 8))
def test_the_top_ngram_bound_is_never_under_the_exact_share(tokens: list[str], shorter: int,
                                                             longer: int) -> None:
    index = ngram_index(tokens)
    index.top_ngram_char_fraction(shorter)
    exact = naive_top_fraction(tokens, longer) if len(tokens) >= longer else 0.0
    assert index.top_ngram_char_bound(longer) >= exact - 1e-12


@settings(max_examples=150, deadline=None)
@given(tokens=small_vocabulary_texts, limits=st.lists(st.floats(0.0, 1.0), min_size=3,
                                                      max_size=3))
def test_skipping_top_ngrams_under_their_bound_decides_as_checking_every_n(
        tokens: list[str], limits: list[float]) -> None:
    config = TextFilterConfig(max_top_ngram_fraction=dict(zip((2, 3, 4), limits, strict=True)),
                              max_duplicate_ngram_fraction={},
                              max_duplicate_line_fraction=None, max_non_printable_fraction=None)
    first_failing = next((n for n, limit in sorted(config.max_top_ngram_fraction.items())
                          if len(tokens) >= n and naive_top_fraction(tokens, n) > limit), None)
    verdict = TextFilter(config)._repetition_or_noise(" ".join(tokens), ngram_index(tokens))
    if first_failing is None:
        assert verdict is None
    else:
        assert verdict is not None and f"top {first_failing}-gram" in verdict[1]


def test_text_without_repeats_scores_zero() -> None:
    index = ngram_index(["one", "two", "three", "four", "five", "six", "seven", "eight"])
    assert index.duplicate_ngram_char_fraction(2) == 0.0
    assert index.top_ngram_char_fraction(2) == 0.0


def test_short_texts_have_no_ngrams() -> None:
    index = ngram_index(["only", "three", "words"])
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


def test_words_are_lowercased_unicode_words_counted_per_text() -> None:
    table = text_stats.word_table(pa.array(["Grüße, WORLD! 42 grüße", None, "", " .. ",
                                            "snake_case x"]))
    assert table.counts.tolist() == [4, 0, 0, 0, 2]
    assert table.lengths.tolist() == [5, 5, 2, 5, 10, 1]
    assert table.chars.tolist() == [17, 0, 0, 0, 11]
    assert table.ids[0] == table.ids[3]
    assert len(set(table.ids.tolist())) == 5


MIXED_SCRIPT = "abcXYZ019_üßÉé αβγ ΔΕ 漢字 ,.;!?-'\"()\t\n \u00a0\u2014"


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(alphabet=MIXED_SCRIPT, max_size=80), min_size=1, max_size=8))
def test_the_word_table_cuts_words_as_pythons_unicode_word_pattern(texts: list[str]) -> None:
    """Arrow's cut equals re's lowercased \\w+ words, id for id and length for length."""
    table = text_stats.word_table(pa.array(texts))
    expected = [re.findall(r"\w+", text.lower()) for text in texts]
    assert table.counts.tolist() == [len(words) for words in expected]
    flat = [word for words in expected for word in words]
    assert table.lengths.tolist() == [len(word) for word in flat]
    first_id = {}
    for word, word_id in zip(flat, table.ids.tolist(), strict=True):
        assert first_id.setdefault(word, word_id) == word_id
    assert len(set(first_id.values())) == len(first_id)
