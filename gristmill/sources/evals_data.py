"""Text sets shipped inside the PyPI `evals` wheel, read straight from the zip (never installed).

schelling_point/{owt,wikipedia}_5.jsonl: 1,000 passages each under key '0', with keys '1'..'10'
holding sentence-shuffled copies (a ready-made near-duplicate set). The shuffled copies end
every sentence with a period while the passage's last sentence often has none, so copies match
their passage as bags of words, not as bags of whitespace tokens.
text_compression/samples.jsonl: 400 texts from 8 sources, with numeric fields stored as strings.
"""

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

from gristmill.sources.downloads import pip_wheel
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PROJECT = "evals"
VERSION = "3.0.1.post1"
COPIES = 10
PASSAGES = "passages.jsonl"
SHUFFLED = "shuffled.jsonl"
SAMPLES = "samples.jsonl"

_MEMBERS = {
    "owt": "evals/registry/data/schelling_point/owt_5.jsonl",
    "wikipedia": "evals/registry/data/schelling_point/wikipedia_5.jsonl",
    "text_compression": "evals/registry/data/text_compression/samples.jsonl",
}


def _read_member(dataset: str) -> list[dict[str, str]]:
    wheel = pip_wheel(dataset, PROJECT, VERSION)
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read(_MEMBERS[dataset]).decode("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _shuffled_rows(records: list[dict[str, str]]) -> Iterator[dict[str, MetadataValue]]:
    for index, record in enumerate(records):
        for copy in range(1, COPIES + 1):
            yield {"text": record[str(copy)], "passage_idx": index, "copy": copy}


def _schelling_point(dataset: str, dest: Path) -> dict[str, int]:
    records = _read_member(dataset)
    passages = ({"text": r["0"], "passage_idx": i} for i, r in enumerate(records))
    return {
        "passages": write_jsonl(dest / PASSAGES, passages),
        "shuffled": write_jsonl(dest / SHUFFLED, _shuffled_rows(records)),
    }


def build_owt(dest: Path) -> dict[str, int]:
    """Write OpenWebText passages and their shuffled copies."""
    return _schelling_point("owt", dest)


def build_wikipedia(dest: Path) -> dict[str, int]:
    """Write Wikipedia passages and their shuffled copies."""
    return _schelling_point("wikipedia", dest)


def _sample_row(record: dict[str, str]) -> dict[str, MetadataValue]:
    row: dict[str, MetadataValue] = dict(record)
    row["length"] = int(record["length"])
    return row


def build_text_compression(dest: Path) -> dict[str, int]:
    """Write the 400 text-compression samples; `type` names the text's origin dataset."""
    records = _read_member("text_compression")
    return {"rows": write_jsonl(dest / SAMPLES, (_sample_row(r) for r in records))}
