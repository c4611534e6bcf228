"""The transformers backend: batched `generate` on CPU or GPU, from an HF folder or a GGUF."""

from __future__ import annotations

import copy
from typing import Any

from gristmill.inference.config import Generation, GeneratorConfig
from gristmill.inference.models import (
    load_causal_lm,
    load_tokenizer,
    release,
    resolve_device,
    resolve_dtype,
    resolve_generator_source,
)
from gristmill.inference.prompts import (
    add_special_tokens,
    check_lengths,
    count_rendered,
    cut_at_stop,
    render_prompts,
)


class TransformersGenerator:
    """Loads lazily (or in `load()`, from a stage's setup) and pickles without its model."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.source = resolve_generator_source(config)  # a bad path fails here, not on a worker
        self._tokenizer: Any = None
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None, "_model": None}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.source, self.config.gguf_cache_dir)
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            device = resolve_device(self.config.device)
            self._model = load_causal_lm(self.source, self.config.gguf_cache_dir, device,
                                         resolve_dtype(self.config.dtype, device))
        return self._model

    def load(self) -> TransformersGenerator:
        """Load tokenizer and model now (a stage's setup()) rather than on the first batch."""
        _ = self.tokenizer, self.model
        return self

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each prompt costs as the model sees it (chat template included)."""
        rendered = render_prompts(self.tokenizer, self.config, texts)
        return count_rendered(self.tokenizer, self.config, rendered)

    def generate(self, prompts: list[str]) -> list[list[Generation]]:
        """`num_return_sequences` completions per prompt, in prompt order."""
        import torch

        cfg = self.config
        rendered = render_prompts(self.tokenizer, cfg, prompts)
        check_lengths(count_rendered(self.tokenizer, cfg, rendered), cfg.max_prompt_tokens)
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)  # same prompts + config -> same completions
        out: list[list[Generation]] = []
        for start in range(0, len(rendered), cfg.batch_size):
            out.extend(self._generate_batch(rendered[start:start + cfg.batch_size]))
        return out

    def _generation_config(self) -> Any:
        cfg = self.config
        gen = copy.deepcopy(self.model.generation_config)
        settings: dict[str, Any] = dict(
            max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=cfg.do_sample,
            num_return_sequences=cfg.num_return_sequences,
            pad_token_id=self.tokenizer.pad_token_id)
        if cfg.do_sample:  # top_k=0: nucleus sampling only, as vLLM does by default
            settings.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        if cfg.stop and cfg.num_beams == 1:
            settings["stop_strings"] = cfg.stop  # stop early; the text is cut below either way
        gen.update(**settings)
        return gen

    def _generate_batch(self, rendered: list[str]) -> list[list[Generation]]:
        import torch

        cfg = self.config
        enc = self.tokenizer(rendered, return_tensors="pt", padding=True,
                             add_special_tokens=add_special_tokens(cfg)).to(self.model.device)
        gen = self._generation_config()
        extra = {"tokenizer": self.tokenizer} if gen.stop_strings else {}
        with torch.inference_mode():
            sequences = self.model.generate(**enc, generation_config=gen, **extra)
        new = sequences[:, enc["input_ids"].shape[1]:].tolist()
        eos = gen.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        done = [self._finish(ids, eos_ids, gen.pad_token_id) for ids in new]
        n = cfg.num_return_sequences
        return [done[i:i + n] for i in range(0, len(done), n)]

    def _finish(self, ids: list[int], eos_ids: set[int], pad_id: int | None) -> Generation:
        """Count the tokens generated (through EOS), decode the rest, cut at a stop string."""
        end = next((i for i, t in enumerate(ids) if t in eos_ids), None)
        if end is not None:
            body, tokens = ids[:end], end + 1
        else:
            body = ids
            while body and pad_id is not None and body[-1] == pad_id:
                body = body[:-1]  # a row that stopped early on a stop string is padded
            tokens = len(body)
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        text, cut = cut_at_stop(text, self.config.stop)
        stopped = end is not None or cut or tokens < self.config.max_new_tokens
        return Generation(text, tokens, "stop" if stopped else "length")

    def close(self) -> None:
        """Free the model (and drop it from the per-process cache)."""
        release(self._model, self._tokenizer)
        self._model = self._tokenizer = None
