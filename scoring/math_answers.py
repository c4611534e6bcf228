"""Final answers of math solutions: find them, put them in one canonical form, and vote.

A solution's answer is the last `\\boxed{...}` (braces matched, so `\\boxed{\\frac{1}{2}}`
survives), else a GSM8K-style `#### N` line. Normalizing strips what does not change the
value (dollar signs, `\\left`, spacing commands, units in `\\text{}` or as trailing words,
thousands separators, a leading `x =`) and writes numbers, fractions and `\\frac` forms as one
exact rational, so `0.5`, `1/2`, `\\frac12` and `\\dfrac{1}{2}` agree in a vote.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import NamedTuple

BOX_COMMANDS = ("\\boxed", "\\fbox")
_HASH_ANSWER = re.compile(r"####\s*([^\n]+?)\s*$", re.MULTILINE)
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_GROUP = r"(\{(?:[^{}]|\{[^{}]*\})*\}|\d)"
_FRAC = re.compile(r"\\[dt]?frac\s*" + _GROUP + r"\s*" + _GROUP)
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d)")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|\\degree|°")
_VARIABLE_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?=\S)")
_NUMBER_THEN_WORDS = re.compile(r"^(-?[\d.,/]+)\s*(?:[a-zA-Z][a-zA-Z. ]*)$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)(?:/(?:\d+\.?\d*|\.\d+))?$")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at `start`, and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox`, or `\\boxed 5`); None if there is
    none or its braces never close (a cut-off generation)."""
    starts = [(text.rfind(command), command) for command in BOX_COMMANDS]
    start, command = max(starts)
    if start < 0:
        return None
    rest = start + len(command)
    while rest < len(text) and text[rest] == " ":
        rest += 1
    if rest < len(text) and text[rest] == "{":
        found = _braced(text, rest)
        return found[0].strip() if found else None
    bare = re.match(r"[^\s$]+", text[rest:])
    return bare.group(0) if bare else None


def hash_answer(text: str) -> str | None:
    """The answer on the last `#### N` line (GSM8K's format)."""
    found = _HASH_ANSWER.findall(text)
    return found[-1] if found else None


def extract_answer(text: str | None) -> str | None:
    """The boxed answer, else the `####` answer, else None (no final answer given)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    return hash_answer(text)


def _fractions(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        top, bottom = (g[1:-1] if g.startswith("{") else g for g in match.groups())
        return f"({top})/({bottom})"

    previous = None
    while previous != text:
        previous, text = text, _FRAC.sub(one, text)
    return text


def _exact(text: str) -> str | None:
    """A plain number or a/b as a canonical exact rational; None if it is not one."""
    plain = re.sub(r"^\((-?[\d.]+)\)/\((-?[\d.]+)\)$", r"\1/\2", text)
    if not _NUMBER.match(plain):
        return None
    try:
        value = Fraction(plain)
    except (ValueError, ZeroDivisionError):
        return None
    return str(value.numerator) if value.denominator == 1 else \
        f"{value.numerator}/{value.denominator}"


def normalize_answer(answer: str | None) -> str | None:
    """One canonical spelling per value, for comparing and voting; None for an empty answer."""
    if answer is None:
        return None
    text = answer.strip().strip("$").strip()
    text = _TEXT_COMMAND.sub(r" \1", text)
    text = _SPACING.sub("", _SIZING.sub("", text))
    text = _DEGREES.sub("", text).replace("\\%", "").replace("%", "")
    text = text.replace("\\$", "").replace("$", "")
    text = _SQRT_SHORT.sub(r"\\sqrt{\1}", _fractions(text))
    text = _VARIABLE_PREFIX.sub("", text.strip())
    text = _THOUSANDS.sub("", text).strip().rstrip(".").strip()
    unit = _NUMBER_THEN_WORDS.match(text)
    if unit:
        text = unit.group(1).rstrip(".,")
    text = re.sub(r"\s+", "", text)
    if not text:
        return None
    last = text.rsplit("=", 1)[-1]  # "2+3=5": a worked chain ends in its value
    return _exact(text) or _exact(last) or text


def answers_match(a: str | None, b: str | None) -> bool:
    """Whether two raw answers say the same thing once normalized (None never matches)."""
    left, right = normalize_answer(a), normalize_answer(b)
    return left is not None and left == right


class Vote(NamedTuple):
    """A majority vote's outcome: the winning normalized answer (None if no sample had one),
    its votes, how many samples had any answer, and whether the top count was shared."""

    answer: str | None
    votes: int
    answered: int
    tie: bool


def majority_vote(answers: list[str | None]) -> Vote:
    """Most common normalized answer; a tie goes to the answer given first, so the result
    does not depend on dict order, and is flagged. Samples with no answer do not vote."""
    normalized = [normalize_answer(a) for a in answers]
    counts = Counter(a for a in normalized if a is not None)
    if not counts:
        return Vote(None, 0, 0, False)
    top = max(counts.values())
    leaders = [a for a in dict.fromkeys(normalized) if a is not None and counts[a] == top]
    return Vote(leaders[0], top, sum(counts.values()), len(leaders) > 1)
