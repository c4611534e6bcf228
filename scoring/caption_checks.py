"""Checks on a fused caption: is it a caption at all, and did it keep the raw text's facts.

Pure text functions, no models. `guard` returns a reject reason (or None) for a generated
caption; `entity_retention` measures how many of the raw alt-text's names and numbers
(its real-world details, the reason to fuse at all) survived fusion.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_ENTITY = re.compile(r"\b(?:[A-Z][\w'\u2019-]*|\d+(?:[.,:]\d+)*)")
_WORD = re.compile(r"[\w'\u2019-]+")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?](?:\s+|$)")
_LEAD_IN = re.compile(r"^\s*(?:(?:the\s+)?(?:merged|fused|combined|new|final)\s+"
                      r"(?:sentence|caption)\s*(?:is)?\s*[:\-]\s*|(?:answer|caption|sentence)\s*:\s*)",
                      re.IGNORECASE)
_PROMPT_LABEL = re.compile(r"(?:^|\s)(?:[AB]|Sentence|Description [AB])\s*:", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(?:i\s*(?:am|'m)\s+sorry|i\s+(?:can(?:no|')t|am\s+unable|won't)|"
                      r"as\s+an\s+ai|cannot\s+(?:help|assist|comply)|i\s+apologi[sz]e)\b",
                      re.IGNORECASE)


COPIED_SPAN_WORDS = 4
"""An output of this many words or more found word for word inside the alt-text is a copy:
a model that cannot fuse often echoes the start of a keyword-stuffed alt-text."""
KEYWORD_LIST_SEGMENTS = 5
"""This many comma-separated pieces of under 2.5 words on average read as a keyword list."""


def clean_caption(text: str) -> str:
    """Strip a lead-in like 'Merged sentence:', wrapping quotes and whitespace."""
    text = _LEAD_IN.sub("", text.strip())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1]
    return " ".join(text.split())


def _normal(text: str) -> str:
    return " ".join(w.lower() for w in _WORD.findall(text))


def _repeated_trigram(words: list[str]) -> str | None:
    """A three-word run that occurs twice: a caption does not repeat itself, a looping small
    model does ("a tree, a tree, a tree")."""
    counts = Counter(zip(words, words[1:], words[2:], strict=False))
    trigram, count = counts.most_common(1)[0] if counts else (None, 0)
    return " ".join(trigram) if trigram is not None and count >= 2 else None


def guard(fused: str, raw: str, synthetic: str, *, min_words: int, max_words: int,
          max_sentences: int, examples: Sequence[str] = ()) -> tuple[str, str] | None:
    """(reason, detail) when `fused` is not a usable caption, else None. `examples` are the
    prompt's worked answers: a small model often copies one instead of fusing."""
    words = _WORD.findall(fused)
    if not words:
        return "empty_output", "the model returned no words"
    if _REFUSAL.search(fused):
        return "refusal", "the model declined instead of writing a caption"
    if _PROMPT_LABEL.search(fused):
        return "prompt_echo", "the output repeats the prompt's labels (A:, B:, Sentence:)"
    normal = _normal(fused)
    for example in examples:
        if _normal(example) and _normal(example) in normal:
            return "example_copied", "the output copies a worked example from the prompt"
    if _LIST_MARK.search(fused) or "\n" in fused.strip():
        return "not_a_caption", "a list or several lines, not one caption"
    sentences = len(_SENTENCE_END.findall(fused.strip() + " "))
    if sentences > max_sentences:
        return "not_a_caption", f"{sentences} sentences > max_sentences {max_sentences}"
    if len(words) < min_words:
        return "too_short", f"{len(words)} words < min_words {min_words}"
    if len(words) > max_words:
        return "too_long", f"{len(words)} words > max_words {max_words}"
    if (trigram := _repeated_trigram([w.lower() for w in words])) is not None:
        return "repetitive", f"'{trigram}' occurs more than once"
    copies = {_normal(raw): "the raw alt-text", _normal(synthetic): "the synthetic caption",
              _normal(f"{raw} {synthetic}"): "both inputs concatenated",
              _normal(f"{synthetic} {raw}"): "both inputs concatenated"}
    if normal in copies:
        return "copied_input", f"the output repeats {copies[normal]} verbatim"
    if len(words) >= COPIED_SPAN_WORDS and f" {normal} " in f" {_normal(raw)} ":
        return "copied_input", "the output is a stretch of the raw alt-text, word for word"
    segments = [s for s in fused.split(",") if s.strip()]
    if len(segments) >= KEYWORD_LIST_SEGMENTS and len(words) / len(segments) < 2.5:
        return "not_a_caption", f"{len(segments)} comma-separated keywords, not a sentence"
    return None


def entities(text: str) -> set[str]:
    """Capitalized words and numbers: the names, places, brands and figures of a text."""
    return {match.lower() for match in _ENTITY.findall(text)}


def entity_retention(raw: str, fused: str) -> float | None:
    """Share of the raw text's entities present in the fused caption (None if it has none)."""
    wanted = entities(raw)
    if not wanted:
        return None
    present = {w.lower() for w in _WORD.findall(fused)} | entities(fused)
    return len(wanted & present) / len(wanted)
