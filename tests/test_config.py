"""Config loading: YAML plus key.path=value overrides into frozen pydantic models."""

from __future__ import annotations

from pathlib import Path

import pytest

from gristmill.config import ConfigError, load_config
from gristmill.flows.curate import CurateParams
from gristmill.flows.fuse_captions import FuseCaptionsParams


def test_yaml_and_overrides_build_nested_models(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("sources: [brown]\ntext_filter:\n  min_words: 10\n")
    params = load_config(CurateParams, path, ["text_filter.languages=[en, de]",
                                               "runtime.ray.num_cpus=2"])
    assert params.sources == ["brown"]
    assert params.text_filter.min_words == 10
    assert params.text_filter.languages == ["en", "de"]
    assert params.runtime.ray.num_cpus == 2


def test_configs_are_immutable_and_with_returns_a_validated_copy() -> None:
    params = CurateParams()
    changed = params.text_filter.with_(min_words=5)
    assert changed.min_words == 5 and params.text_filter.min_words == 50
    with pytest.raises(ValueError):
        params.text_filter.with_(min_words=-1)


@pytest.mark.parametrize("override", ["no_equals_sign", "=value"])
def test_malformed_overrides_are_refused(override: str) -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(CurateParams, None, [override])


def test_unknown_keys_are_refused_so_typos_do_not_pass_silently() -> None:
    with pytest.raises(ConfigError, match="min_wrods"):
        load_config(CurateParams, None, ["text_filter.min_wrods=3"])


def test_the_shipped_demo_config_validates() -> None:
    params = load_config(CurateParams, Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert params.sources == ["brown", "owt", "owt_shuffled", "spam_assassin"]
    assert params.captions.enabled and params.datastore is not None
    assert params.quality is not None and params.quality.law.rescale


@pytest.mark.parametrize(("flow", "name"), [
    ("quality_filter", "quality.yaml"), ("prune", "prune.yaml"),
    ("synthesize_questions", "scalequest.yaml"), ("build_datastore", "datastore.yaml")])
def test_every_shipped_flow_config_validates(flow: str, name: str) -> None:
    from gristmill.flows.registry import FLOWS

    load_config(FLOWS[flow].params, Path(__file__).parents[1] / "configs" / name)


@pytest.mark.parametrize(("name", "backend", "beams"),
                         [("captions.yaml", "transformers", 1), ("gpu.yaml", "vllm", 1)])
def test_the_shipped_caption_configs_validate(name: str, backend: str, beams: int) -> None:
    params = load_config(FuseCaptionsParams, Path(__file__).parents[1] / "configs" / name)
    generator = params.config.generator
    assert (generator.backend, generator.num_beams, generator.do_sample) == (backend, beams,
                                                                            False)
