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


class RowSeededSampler:
    """A last logits processor that samples each row from its own seeded generator (with
    temperature and top-p) and leaves only that token possible, so HF's own sampling step
    picks it. Row r is prompt r // n's (r % n)-th completion."""

    def __init__(self, seeds: list[int], n: int, temperature: float, top_p: float) -> None:
        self.seeds, self.n, self.temperature, self.top_p = seeds, n, temperature, top_p
        self.generators: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if not self.generators:
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(
                    (self.seeds[r // self.n] * 1_000_003 + r % self.n) % 2**63)
                for r in range(scores.shape[0])]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        ordered, order = probs.sort(dim=-1, descending=True)
        drop = ordered.cumsum(dim=-1) - ordered >= self.top_p  # the nucleus keeps the top one
        ordered = ordered.masked_fill(drop, 0.0)
        picked = torch.stack([order[r, torch.multinomial(ordered[r], 1, generator=g)]
                              for r, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, picked.view(-1, 1), 0.0)


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

    def generate(self, prompts: list[str],
                 seeds: list[int] | None = None) -> list[list[Generation]]:
        """`num_return_sequences` completions per prompt, in prompt order. With `seeds` (one
        per prompt, sampling only) each prompt samples from its own seeded stream, so its
        completions do not depend on the batch it shares."""
        import torch

        cfg = self.config
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        rendered = render_prompts(self.tokenizer, cfg, prompts)
        check_lengths(count_rendered(self.tokenizer, cfg, rendered), cfg.max_prompt_tokens)
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)  # same prompts + config -> same completions
        out: list[list[Generation]] = []
        for start in range(0, len(rendered), cfg.batch_size):
            stop = start + cfg.batch_size
            out.extend(self._generate_batch(rendered[start:stop],
                                            None if seeds is None else seeds[start:stop]))
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

    def _generate_batch(self, rendered: list[str],
                        seeds: list[int] | None = None) -> list[list[Generation]]:
        import torch

        cfg = self.config
        enc = self.tokenizer(rendered, return_tensors="pt", padding=True,
                             add_special_tokens=add_special_tokens(cfg)).to(self.model.device)
        gen = self._generation_config()
        extra: dict[str, Any] = {"tokenizer": self.tokenizer} if gen.stop_strings else {}
        if seeds is not None and cfg.do_sample and cfg.num_beams == 1:
            from transformers import LogitsProcessorList

            gen.update(temperature=1.0, top_p=1.0, top_k=0)  # the sampler does both itself
            extra["logits_processor"] = LogitsProcessorList([RowSeededSampler(
                seeds, cfg.num_return_sequences, cfg.temperature, cfg.top_p)])
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
