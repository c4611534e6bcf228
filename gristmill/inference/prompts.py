"""Prompt rendering, token counting and stop strings: the parts both backends share."""

from __future__ import annotations

from typing import Any

from gristmill.inference.config import GeneratorConfig, PromptTooLongError


def render_prompts(tokenizer: Any, config: GeneratorConfig, prompts: list[str]) -> list[str]:
    """The exact text the model sees: the chat template around each prompt when configured."""
    if not config.use_chat_template:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; "
                         "set use_chat_template=false to send prompts as raw text")
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    return [tokenizer.apply_chat_template([*system, {"role": "user", "content": p}],
                                          tokenize=False, add_generation_prompt=True)
            for p in prompts]


def add_special_tokens(config: GeneratorConfig) -> bool:
    """A chat template already writes its special tokens; raw prompts get the tokenizer's."""
    return not config.use_chat_template


def count_rendered(tokenizer: Any, config: GeneratorConfig, rendered: list[str]) -> list[int]:
    if not rendered:
        return []
    ids = tokenizer(rendered, add_special_tokens=add_special_tokens(config))["input_ids"]
    return [len(x) for x in ids]


def check_lengths(counts: list[int], limit: int) -> None:
    """Raise on the first prompt over the limit: silently truncating would change its meaning."""
    for index, tokens in enumerate(counts):
        if tokens > limit:
            raise PromptTooLongError(index, tokens, limit)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)
