"""The vllm backend: the prompts run as a Ray Data pipeline through `ray.data.llm`.

vLLM engines run as GPU actors that Ray Data schedules; this process only renders the
prompts (so both backends see identical text), builds the processor once, and gathers the
completions back in prompt order. ray.data.llm keeps one completion per row, so `n`
completions are `n` rows, each with its own seed.
"""

from __future__ import annotations

import importlib
from typing import Any

from gristmill.inference.config import BackendUnavailableError, Generation, GeneratorConfig
from gristmill.inference.models import load_tokenizer, resolve_generator_source
from gristmill.inference.prompts import check_lengths, count_rendered, cut_at_stop, render_prompts

INSTALL_HINT = ("the vllm backend needs `pip install vllm` on GPU workers (and ray.data.llm's "
                "own dependencies: `pip install 'ray[llm]'`); use backend=transformers "
                "without them")
_INDEX, _REPLICA, _SEED = "gm_index", "gm_replica", "gm_seed"


def require_vllm() -> None:
    """Raise BackendUnavailableError unless vllm and ray.data.llm both import."""
    for module in ("vllm", "ray.data.llm"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise BackendUnavailableError(f"{INSTALL_HINT} ({module}: {err})") from err


class _Preprocess:
    """Row -> the columns vLLMEngineStage reads; a class so Ray pickles it plainly."""

    def __init__(self, sampling: dict[str, Any], seed: int | None) -> None:
        self.sampling, self.seed = sampling, seed

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.sampling)
        base = row[_SEED] if row[_SEED] is not None else self.seed
        if base is not None:  # distinct per replica, or n samples would be identical
            params["seed"] = int(base) + int(row[_REPLICA])
        return {"prompt": row["prompt"], "sampling_params": params}


def _postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {_INDEX: row[_INDEX], _REPLICA: row[_REPLICA], "text": row["generated_text"],
            "tokens": int(row["num_generated_tokens"])}


class VLLMGenerator:
    """GPU generation at scale; the same config and results as TransformersGenerator."""

    def __init__(self, config: GeneratorConfig) -> None:
        require_vllm()
        if config.num_beams > 1:
            raise ValueError("the vllm backend has no beam search through ray.data.llm; "
                             "use num_beams=1 or backend=transformers")
        if config.device == "cpu":
            raise ValueError("the vllm backend runs on GPUs; use backend=transformers on CPU")
        self.config = config
        self.source = resolve_generator_source(config)
        self._processor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_processor": None}

    @property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.source, self.config.gguf_cache_dir)

    def count_tokens(self, texts: list[str]) -> list[int]:
        rendered = render_prompts(self.tokenizer, self.config, texts)
        return count_rendered(self.tokenizer, self.config, rendered)

    def sampling_params(self) -> dict[str, Any]:
        """vllm.SamplingParams fields: temperature 0 is vLLM's greedy decoding."""
        cfg = self.config
        params: dict[str, Any] = {"max_tokens": cfg.max_new_tokens,
                                  "temperature": cfg.temperature if cfg.do_sample else 0.0}
        if cfg.do_sample:
            params["top_p"] = cfg.top_p
        if cfg.stop:
            params["stop"] = list(cfg.stop)
        return params

    def processor(self) -> Any:
        """The ray.data.llm processor (built once): usable on any Ray Dataset with `prompt`."""
        if self._processor is None:
            from ray.data.llm import build_processor, vLLMEngineProcessorConfig

            cfg = self.config
            dtype = "bfloat16" if cfg.dtype == "auto" else cfg.dtype
            engine = {"dtype": dtype, "max_model_len": cfg.max_prompt_tokens + cfg.max_new_tokens,
                      **cfg.vllm.engine_kwargs}
            processor_config = vLLMEngineProcessorConfig(
                model_source=str(self.source.path),  # vLLM reads a .gguf file itself
                engine_kwargs=engine,
                batch_size=cfg.batch_size,
                concurrency=cfg.vllm.concurrency,
                accelerator_type=cfg.vllm.accelerator_type,
                # prompts arrive rendered; vLLM tokenizes and detokenizes inside the engine
                chat_template_stage=False,
                tokenize_stage=False,
                detokenize_stage=False,
            )
            self._processor = build_processor(
                processor_config, preprocess=_Preprocess(self.sampling_params(), cfg.seed),
                postprocess=_postprocess)
        return self._processor

    def generate(self, prompts: list[str],
                 seeds: list[int] | None = None) -> list[list[Generation]]:
        """`seeds`, one per prompt, make each prompt's samples independent of the others
        (identical prompts with different seeds give different completions)."""
        import ray

        from gristmill.runtime import ensure_ray
        from gristmill.storage.ray_io import configure_ray_data

        cfg = self.config
        rendered = render_prompts(self.tokenizer, cfg, prompts)
        check_lengths(count_rendered(self.tokenizer, cfg, rendered), cfg.max_prompt_tokens)
        if not rendered:
            return []
        ensure_ray()
        configure_ray_data()
        n = cfg.num_return_sequences
        if seeds is not None and len(seeds) != len(rendered):
            raise ValueError(f"{len(seeds)} seeds for {len(rendered)} prompts")
        rows = [{_INDEX: i, _REPLICA: j, _SEED: None if seeds is None else seeds[i] * n,
                 "prompt": p} for i, p in enumerate(rendered) for j in range(n)]
        done = sorted(self.processor()(ray.data.from_items(rows)).take_all(),
                      key=lambda r: (r[_INDEX], r[_REPLICA]))
        out: list[list[Generation]] = [[] for _ in rendered]
        for row in done:
            text, cut = cut_at_stop(row["text"], cfg.stop)
            # ray.data.llm drops vLLM's finish_reason: a completion short of the cap stopped
            length = not cut and row["tokens"] >= cfg.max_new_tokens
            out[row[_INDEX]].append(Generation(text, row["tokens"], "length" if length else "stop"))
        return out

    def close(self) -> None:
        self._processor = None
