"""The text a chat model sees just before a user message starts, from its own chat template.

ScaleQuest asks an instruct model for a question "from scratch": the prompt is only the
template's opening up to where a user turn's content begins, so the model writes the user
message itself. Rendering the template with a sentinel user message and cutting at the
sentinel gives that prefix for any template, with no per-model strings.
"""

from __future__ import annotations

from typing import Any

SENTINEL = "\u2063GRISTMILL_USER_TURN\u2063"


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template, or its rendering hides the user's text."""


def user_turn_prefix(tokenizer: Any, system_prompt: str | None = None) -> str:
    """Everything the template writes before the first user message's content."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("the generator's tokenizer has no chat template: a "
                                "from-scratch prompt needs one")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rendered = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": SENTINEL}], tokenize=False,
        add_generation_prompt=False)
    cut = rendered.find(SENTINEL)
    if cut < 0:
        raise ChatTemplateError("the chat template does not write the user message verbatim")
    return rendered[:cut]


def end_of_turn_strings(tokenizer: Any) -> list[str]:
    """What the template writes right after a user message's content (its end-of-turn
    marker), so generation stops where the question ends."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=False)
    tail = rendered[rendered.find(SENTINEL) + len(SENTINEL):].strip()
    marker = tail.split()[0] if tail else ""
    eos = getattr(tokenizer, "eos_token", None)
    return [s for s in dict.fromkeys([marker, eos]) if s]
