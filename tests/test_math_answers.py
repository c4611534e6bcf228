"""Final-answer extraction, normalization and voting, on hand cases and on real solutions:
GSM8K reference answers (`#### N`) and CHAMP model solutions ending in \\boxed{}."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.scoring.math_answers import (
    answers_match,
    extract_answer,
    hash_answer,
    last_boxed,
    majority_vote,
    normalize_answer,
)
from gristmill.sources import resolve


def _rows(source: str) -> list[dict]:
    return [json.loads(line) for path in resolve(source).files
            for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize(("text", "boxed"), [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"first \boxed{3}, then fixed: \boxed{4}", "4"),
    (r"\boxed{\left(\frac{\sqrt{3}}{2}, 1\right)}", r"\left(\frac{\sqrt{3}}{2}, 1\right)"),
    (r"\fbox{7}", "7"),
    (r"the answer is \boxed 9.", "9."),
    (r"cut off \boxed{\frac{1}{2", None),
    ("no box at all", None),
])
def test_last_boxed_matches_nested_braces(text: str, boxed: str | None) -> None:
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(("a", "b"), [
    (r"\frac{1}{2}", "0.5"), (r"\dfrac12", "1/2"), (r"\tfrac{3}{4}", "0.75"),
    ("1,000", "1000"), (r"\$18.00", "18"), (r"12 \text{ cm}", "12"), ("5 dollars", "5"),
    ("x = 5", "5"), ("10 + 12 + 18 = 40", "40"), (r"50\%", "50"), (r"90^\circ", "90"),
    (r"\left( 1, 2 \right)", "(1,2)"),
    (r"\frac{\sqrt{3}}{2}", r"\dfrac{\sqrt{3}}{2}"), ("$-4$", "-4"),
])
def test_equivalent_spellings_normalize_alike(a: str, b: str) -> None:
    assert answers_match(a, b)


@pytest.mark.parametrize(("a", "b"), [("1/2", "1/3"), ("12", "120"), ("(1,2)", "(2,1)"),
                                      (r"\sqrt{2}", "2"), ("-4", "4")])
def test_different_values_do_not_match(a: str, b: str) -> None:
    assert not answers_match(a, b)


def test_no_answer_never_matches() -> None:
    assert normalize_answer(None) is None and normalize_answer("  $ $ ") is None
    assert not answers_match(None, None)
    assert extract_answer(None) is None and extract_answer("") is None
    assert extract_answer("We get 12 apples, so that is the answer.") is None


def test_gsm8k_reference_answers_extract_to_their_final_answer() -> None:
    rows = _rows("gsm8k")
    assert len(rows) == 100
    for row in rows:
        assert hash_answer(row["answer"]) is not None
        assert answers_match(extract_answer(row["answer"]), row["final_answer"]), row["answer"]


def test_champ_model_solutions_yield_a_boxed_answer() -> None:
    rows = _rows("champ_model_solutions")
    assert len(rows) > 1000
    extracted = [extract_answer(row["text"]) for row in rows]
    assert sum(a is not None for a in extracted) / len(rows) > 0.99
    numeric_refs = [(a, r["reference_answer"]) for a, r in zip(extracted, rows, strict=True)
                    if normalize_answer(r["reference_answer"]).lstrip("-").isdigit()]
    right = sum(answers_match(a, ref) for a, ref in numeric_refs)
    # the models are often wrong, but a broken extractor would match (almost) none
    assert 0.15 < right / len(numeric_refs) < 0.95


def test_champ_reference_solutions_contain_their_answer() -> None:
    """The reference answer of numeric CHAMP problems, boxed, comes back out unchanged."""
    for row in _rows("champ"):
        answer = row["answer"]
        if normalize_answer(answer).lstrip("-").isdigit():
            solution = f"{row['solution']}\nTherefore the answer is $\\boxed{{{answer}}}$."
            assert answers_match(extract_answer(solution), answer)


def test_majority_vote_counts_normalized_answers() -> None:
    vote = majority_vote([r"\frac{1}{2}", "0.5", "3", None, "1/2"])
    assert vote.answer == "1/2" and vote.votes == 3 and vote.answered == 4 and not vote.tie


def test_majority_vote_tie_goes_to_the_first_answer_and_is_flagged() -> None:
    assert majority_vote(["7", "8", "8", "7"]) == ("7", 2, 4, True)
    assert majority_vote([None, "8", "7"]).answer == "8"


def test_majority_vote_without_answers() -> None:
    assert majority_vote([None, None]) == (None, 0, 0, False)
    assert majority_vote([]) == (None, 0, 0, False)
