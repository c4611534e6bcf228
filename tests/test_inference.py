"""gristmill.inference: the real embedded SmolLM2-135M and MiniLM, few and short generations.

The generator loads once for the module (the GGUF is converted to an HF folder under
~/.cache/gristmill/gguf the first time, ~40 s; later loads take seconds). Generation runs
on one torch thread: on this 2-core machine, two OpenMP threads beside another busy
process are ~8x slower than one.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gristmill.inference import (
    BackendUnavailableError,
    Embedder,
    EmbedderConfig,
    Generation,
    Generator,
    GeneratorConfig,
    ModelNotFoundError,
    PromptTooLongError,
    TransformersGenerator,
    UnknownBackendError,
    load_generator,
)

SHORT = "Write a caption for a photo of a red bicycle."
LONG = ("Say hello in French, then describe the weather in Paris in spring in one long "
        "sentence.")
MAX_NEW = 16
no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def generator() -> Iterator[TransformersGenerator]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = TransformersGenerator(GeneratorConfig(max_new_tokens=MAX_NEW, device="cpu")).load()
    yield gen
    gen.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def greedy(generator: TransformersGenerator) -> list[list[Generation]]:
    return generator.generate([SHORT, LONG])


def variant(generator: TransformersGenerator, **changes: object) -> TransformersGenerator:
    """Another decoding config on the same loaded model (models are shared per process)."""
    other = TransformersGenerator(generator.config.with_(**changes))
    assert other.model is generator.model
    return other


def test_greedy_is_deterministic_across_calls(generator: TransformersGenerator,
                                              greedy: list[list[Generation]]) -> None:
    assert isinstance(generator, Generator)
    assert [len(g) for g in greedy] == [1, 1]
    assert all(g[0].text.strip() for g in greedy)
    assert generator.generate([SHORT, LONG]) == greedy


def test_left_padding_gives_the_same_output_alone_and_batched(
        generator: TransformersGenerator, greedy: list[list[Generation]]) -> None:
    counts = generator.count_tokens([SHORT, LONG])
    assert counts[0] < counts[1]  # SHORT is padded on the left inside the batch
    assert generator.generate([SHORT]) == greedy[:1]


def test_finish_reasons_and_token_counts(generator: TransformersGenerator,
                                         greedy: list[list[Generation]]) -> None:
    tokenizer = generator.tokenizer
    by_reason = {g[0].finish_reason: g[0] for g in greedy}
    assert set(by_reason) == {"stop", "length"}, greedy
    length = by_reason["length"]
    assert length.tokens == MAX_NEW
    stopped = by_reason["stop"]  # ended on EOS, which counts as a generated token
    assert stopped.tokens < MAX_NEW
    assert stopped.tokens == len(tokenizer(stopped.text, add_special_tokens=False).input_ids) + 1


def test_count_tokens_counts_what_the_model_sees(generator: TransformersGenerator) -> None:
    tokenizer = generator.tokenizer
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": SHORT}],
                                             tokenize=False, add_generation_prompt=True)
    assert generator.count_tokens([SHORT]) == [len(tokenizer(rendered).input_ids)]
    raw = variant(generator, use_chat_template=False)
    assert raw.count_tokens([SHORT, ""]) == [len(tokenizer(SHORT).input_ids), 0]
    assert generator.count_tokens([]) == []


def test_prompt_over_the_cap_is_an_error(generator: TransformersGenerator) -> None:
    capped = variant(generator, max_prompt_tokens=generator.count_tokens([SHORT])[0])
    with pytest.raises(PromptTooLongError, match=r"prompt 1 has \d+ tokens"):
        capped.generate([SHORT, LONG])


def test_stop_strings_cut_the_text(generator: TransformersGenerator) -> None:
    out = variant(generator, stop=[" "], max_new_tokens=8).generate([SHORT, LONG])
    for (gen,) in out:
        assert " " not in gen.text and gen.finish_reason == "stop"
        assert 0 < gen.tokens <= 8


def test_sampling_returns_n_seeded_generations(generator: TransformersGenerator) -> None:
    sampler = variant(generator, do_sample=True, temperature=0.9, num_return_sequences=3,
                      max_new_tokens=8, seed=7)
    (gens,) = sampler.generate([SHORT])
    assert len(gens) == 3 and len({g.text for g in gens}) > 1
    assert sampler.generate([SHORT]) == [gens]


def test_beam_search(generator: TransformersGenerator) -> None:
    out = variant(generator, num_beams=3, num_return_sequences=2, max_new_tokens=8).generate(
        [SHORT])
    assert len(out) == 1 and len(out[0]) == 2
    assert all(0 < g.tokens <= 8 and g.text for g in out[0])


def test_generator_pickles_without_its_model(generator: TransformersGenerator) -> None:
    blob = pickle.dumps(generator)
    assert len(blob) < 10_000
    clone = pickle.loads(blob)
    assert clone.config == generator.config and clone._model is None


@pytest.mark.slow
def test_gguf_cache_folder_matches_the_gguf(generator: TransformersGenerator,
                                            greedy: list[list[Generation]]) -> None:
    direct = TransformersGenerator(generator.config.with_(gguf_cache_dir=None))
    try:
        assert direct.generate([SHORT, LONG]) == greedy
    finally:
        direct.close()


@no_gpu
def test_gpu_generation_in_bfloat16() -> None:
    gen = TransformersGenerator(GeneratorConfig(device="cuda", max_new_tokens=8))
    assert gen.model.dtype == torch.bfloat16
    assert len(gen.generate([SHORT, LONG])) == 2
    gen.close()


# --- errors: no model load ---


def test_vllm_backend_says_how_to_install_it() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(BackendUnavailableError, match="pip install vllm"):
        load_generator(GeneratorConfig(backend="vllm"))


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="transformers"):
        GeneratorConfig(backend="llamacpp")
    with pytest.raises(UnknownBackendError, match="llamacpp"):
        load_generator(GeneratorConfig.model_construct(backend="llamacpp"))


def test_missing_model_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_generator(GeneratorConfig(model=str(tmp_path / "nope")))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load_generator(GeneratorConfig(model=str(tmp_path)))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_generator(GeneratorConfig(model=str(tmp_path), gguf_file="m.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf"):
        load_generator(GeneratorConfig(model=str(tmp_path / "weights.bin")))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Embedder(EmbedderConfig(model=str(tmp_path / "nope")))


def test_incoherent_decoding_is_rejected() -> None:
    with pytest.raises(ValidationError, match="do_sample"):
        GeneratorConfig(num_return_sequences=2)
    with pytest.raises(ValidationError, match="empty"):
        GeneratorConfig(stop=[""])
    config = GeneratorConfig(stop=["\n"], num_beams=2, num_return_sequences=2)
    assert pickle.loads(pickle.dumps(config)) == config


# --- embedder ---


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(EmbedderConfig(device="cpu")).load()


def test_embedder_gives_normalized_float32_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed(["a red bicycle", "a cat asleep on a sofa", "tax law"])
    assert embedder.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_similar_sentences_are_closer(embedder: Embedder) -> None:
    a, b, c = embedder.embed(["A man rides a red bicycle down the street.",
                              "Someone is cycling along a road on a red bike.",
                              "The quarterly tax report is due in April."])
    assert a @ b > a @ c + 0.3


def test_embedder_variants_share_one_model(embedder: Embedder) -> None:
    # all-MiniLM-L6-v2 ends in its own Normalize module, so normalize=False changes nothing
    # for it; the flag matters for models without one (Contriever).
    raw = Embedder(EmbedderConfig(device="cpu", normalize=False, max_seq_length=16))
    assert raw.model is embedder.model
    assert raw.embed(["a red bicycle"]).shape == (1, 384)
    assert raw.model.max_seq_length == 16
    embedder.embed(["a red bicycle"])
    assert embedder.model.max_seq_length == 256  # its own limit again
    assert pickle.loads(pickle.dumps(raw))._model is None
