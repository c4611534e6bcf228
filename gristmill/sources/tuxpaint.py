"""Tux Paint stamps (Debian `tuxpaint-stamps-default`): ~950 pictures with a short caption.

Each stamp is X.png or X.svg beside X.txt, whose first line is an English caption and whose
other lines are translations. The package is 161 MB, mostly sounds: only the captions and
images are kept (~36 MB).
"""

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from gristmill.sources.debian import package_members
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PACKAGE = "tuxpaint-stamps-default"
STAMP_ROOT = "/usr/share/tuxpaint/stamps"
IMAGE_FOLDER = "stamps"
OUTPUT = "tuxpaint.jsonl"
IMAGE_SUFFIXES = (".png", ".svg")


def caption(text: bytes) -> str:
    """The English caption: the first line of the stamp's .txt file."""
    lines = text.decode("utf-8", errors="replace").splitlines()
    return " ".join(lines[0].split()) if lines else ""


def _extract(dest: Path, counts: dict[str, int]) -> tuple[dict[str, str], set[str]]:
    captions: dict[str, str] = {}
    images: set[str] = set()
    for relative, _, content in package_members("tuxpaint", PACKAGE, STAMP_ROOT):
        if content is None:
            continue
        if relative.suffix == ".txt":
            captions[relative.with_suffix("").as_posix()] = caption(content)
        elif relative.suffix in IMAGE_SUFFIXES:
            target = dest / IMAGE_FOLDER / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            images.add(relative.as_posix())
            counts["images"] += 1
    return captions, images


def _rows(captions: dict[str, str], images: set[str],
          counts: dict[str, int]) -> Iterator[dict[str, MetadataValue]]:
    for stem, text in sorted(captions.items()):
        image = next((f"{stem}{s}" for s in IMAGE_SUFFIXES if f"{stem}{s}" in images), None)
        if image is None or not text:
            counts["unpaired"] += 1
            continue
        yield {"text": text, "image_path": (PurePosixPath(IMAGE_FOLDER) / image).as_posix(),
               "category": PurePosixPath(stem).parent.as_posix()}


def build(dest: Path) -> dict[str, int]:
    """Extract captions and images, and write one row per stamp that has both."""
    counts = {"images": 0, "unpaired": 0}
    captions, images = _extract(dest, counts)
    rows = write_jsonl(dest / OUTPUT, _rows(captions, images, counts))
    return {"rows": rows, **counts}
