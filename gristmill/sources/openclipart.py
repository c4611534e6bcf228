"""Open Clip Art (Debian `openclipart-svg`): SVG images with noisy, alt-text-like RDF metadata.

Every SVG carries a cc:Work with dc:title (sometimes empty), an optional dc:description and
keywords as dc:subject/rdf:Bag/rdf:li. The package also holds symlinks that alias other
images; they are skipped. The SVGs are kept under svg/ for later captioning stages.
"""

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from gristmill.sources.debian import package_members
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PACKAGE = "openclipart-svg"
SVG_ROOT = "/usr/share/openclipart/svg"
SVG_FOLDER = "svg"
OUTPUT = "openclipart.jsonl"
CAPTIONS = "captions.jsonl"

_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
}
_SENTENCE_END = (".", "!", "?", ":")

logger = logging.getLogger(__name__)


def _text(element: ET.Element | None, path: str) -> str:
    found = element.find(path, _NS) if element is not None else None
    return " ".join("".join(found.itertext()).split()) if found is not None else ""


def caption(title: str, description: str) -> str:
    """The alt-text-like string: the title, then the description when there is one."""
    if not title or not description:
        return title or description
    separator = " " if title.endswith(_SENTENCE_END) else ". "
    return f"{title}{separator}{description}"


def metadata_row(svg: bytes, svg_path: PurePosixPath) -> dict[str, MetadataValue]:
    """Read the cc:Work metadata of one SVG; raises ET.ParseError on malformed XML."""
    work = ET.fromstring(svg).find(".//rdf:RDF/cc:Work", _NS)
    title = _text(work, "dc:title")
    description = _text(work, "dc:description")
    bag = work.findall("dc:subject/rdf:Bag/rdf:li", _NS) if work is not None else []
    keywords = [text for item in bag if (text := " ".join("".join(item.itertext()).split()))]
    return {
        "text": caption(title, description),
        "alt_text_title": title,
        "description": description,
        "keywords": keywords,
        "creator": _text(work, "dc:creator/cc:Agent/dc:title"),
        "topic": svg_path.parent.relative_to(SVG_FOLDER).as_posix(),
        "svg_path": svg_path.as_posix(),
    }


def _rows(dest: Path, counts: dict[str, int]) -> Iterator[dict[str, MetadataValue]]:
    for relative, member, content in package_members("openclipart", PACKAGE, SVG_ROOT):
        if member.issym() or member.islnk():
            counts["links_skipped"] += 1
            continue
        if content is None or relative.suffix != ".svg":
            continue
        svg_path = SVG_FOLDER / relative
        target = dest / svg_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        counts["svg_files"] += 1
        try:
            yield metadata_row(content, svg_path)
        except ET.ParseError as exc:
            counts["unparsable"] += 1
            logger.warning("openclipart: skipping metadata of %s: %s", svg_path, exc)


def caption_pair(row: dict[str, MetadataValue]) -> dict[str, MetadataValue] | None:
    """A CapsFusion input: title + keywords as the noisy alt-text, the description as the
    well-formed sentence; None for images without a description."""
    description = str(row["description"])
    if not description:
        return None
    keywords = ", ".join(str(k) for k in row["keywords"])  # type: ignore[union-attr]
    alt_text = ", ".join(part for part in (str(row["alt_text_title"]), keywords) if part)
    if not alt_text:
        return None
    return {"text": alt_text, "synthetic_caption": description,
            "image_path": row["svg_path"], "topic": row["topic"]}


def build(dest: Path) -> dict[str, int]:
    """Extract the SVGs, write one metadata row per parsable SVG, and the caption pairs."""
    counts = {"svg_files": 0, "links_skipped": 0, "unparsable": 0}
    rows = list(_rows(dest, counts))
    written = write_jsonl(dest / OUTPUT, rows)
    pairs = write_jsonl(dest / CAPTIONS, (p for r in rows if (p := caption_pair(r))))
    return {"rows": written, "caption_pairs": pairs, **counts}
