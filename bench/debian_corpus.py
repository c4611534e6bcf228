"""Real English text for benchmarks at 100 MB - 1 GB, built from Debian's documentation packages.

The packages come from Debian's archive (`apt-get download`, unpacked with `dpkg-deb -x`), so
the corpus is the same on any machine that reaches the registry. HTML is reduced to its text,
gzipped pages are opened, and documents whose text repeats another's are dropped. Sizes above
the unique text are padded with perturbed copies (sentences shuffled, about one word in ten
dropped or swapped for another word of the corpus), never exact copies, so a dedup or a
repetition rule sees near-duplicates, as in a crawl.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

PACKAGES = ["linux-doc-6.1", "debian-handbook", "perl-doc", "nodejs-doc", "postgresql-doc-15",
            "octave-doc", "python3.11-doc", "git-doc", "debian-reference-en", "ruby3.1-doc",
            "golang-1.19-doc", "erlang-doc"]
TEXT_SUFFIXES = (".html", ".htm", ".txt", ".rst", ".pod", ".md", ".xml")
MIN_DOCUMENT_CHARS = 200
SKIPPED_TAGS = {"script", "style", "head", "nav"}
BLOCK_TAGS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt",
              "dd", "section", "table", "blockquote"}


class _TextOfHtml(HTMLParser):
    """Collects a page's visible text, one line per block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in SKIPPED_TAGS:
            self._skipping += 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_TAGS and self._skipping:
            self._skipping -= 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip()
             for line in "".join(parser.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def unpack(packages: list[str], scratch: Path) -> Path:
    """Download and unpack each package once; later calls reuse the tree."""
    debs, tree = scratch / "debs", scratch / "tree"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True,
                       capture_output=True)
    if not tree.exists():
        partial = scratch / "tree.partial"
        partial.mkdir(parents=True, exist_ok=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        partial.rename(tree)
    return tree


def _document_text(path: Path) -> str | None:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if not name.endswith(TEXT_SUFFIXES):
        return None
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    return html_to_text(text) if name.endswith((".html", ".htm", ".xml")) else text


def unique_documents(tree: Path) -> Iterator[tuple[str, str]]:
    """(source path, text) for every document whose text was not seen before."""
    seen: set[bytes] = set()
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            text = _document_text(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if text is None or len(text) < MIN_DOCUMENT_CHARS:
            continue
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            yield str(path.relative_to(tree)), text


def perturb(text: str, vocabulary: list[str], rng: random.Random, rate: float = 0.1) -> str:
    """A near-duplicate: sentences shuffled, about `rate` of the words dropped or replaced."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    rng.shuffle(sentences)
    words = []
    for word in " ".join(sentences).split(" "):
        roll = rng.random()
        if roll < rate / 2:
            continue
        words.append(rng.choice(vocabulary) if roll < rate else word)
    return " ".join(words)


def write_corpus(out: Path, target_bytes: int, scratch: Path, files: int = 16,
                 seed: int = 0) -> dict:
    """`files` JSONL files of about equal size: unique documents, then perturbed copies.

    Several files, not one, so a peer that splits work by file (DataTrove) uses every core.
    The corpus's description lands beside the folder (`<out>.json`), not in it, so tools that
    read every file of the folder see only the documents.
    """
    meta_path = out.with_name(out.name + ".json")
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    documents = list(unique_documents(unpack(PACKAGES, scratch)))
    rng = random.Random(seed)
    vocabulary = [w for _, t in documents[:2000] for w in t.split()[:200]]
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    sinks = [(partial / f"part-{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    written, count, unique = 0, 0, 0
    while written < target_bytes:
        for source, text in documents:
            if written >= target_bytes:
                break
            first_pass = count < len(documents)
            body = text if first_pass else perturb(text, vocabulary, rng)
            line = json.dumps({"id": f"doc-{count}", "text": body, "source": source},
                              ensure_ascii=False) + "\n"
            sinks[count % files].write(line)
            written += len(line.encode())
            count += 1
            unique += first_pass
    for sink in sinks:
        sink.close()
    meta = {"bytes": written, "documents": count, "unique_documents": unique,
            "perturbed_copies": count - unique, "files": files, "packages": PACKAGES,
            "seed": seed}
    partial.rename(out)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta
