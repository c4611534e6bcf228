"""CHAMP competition math problems (PyPI `champ-dataset`, read as a zip, never installed).

champ_dataset/dataset_files/v0.json holds 270 problems with a reference answer and a
step-by-step solution, plus the conversations of four models solving them (many wrong). Two
files come out: the problems, and every model solution that ends in a `\\boxed{}` answer (real
model output for testing answer extraction), each beside its problem's reference answer.
"""

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gristmill.sources.downloads import pip_wheel
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PROJECT = "champ-dataset"
VERSION = "1.0.0"
PROBLEMS_FILE = "champ_problems.jsonl"
SOLUTIONS_FILE = "champ_model_solutions.jsonl"

_MEMBER = "champ_dataset/dataset_files/v0.json"
_MODEL_PREFIX = "Model."


def _problems(data: dict[str, Any]) -> Iterator[dict[str, MetadataValue]]:
    for key, problem in sorted(data["problems"].items()):
        steps = [step["_text"] for step in problem["solution"]["steps"]]
        yield {"text": problem["_text"], "answer": problem["_answer"],
               "solution": "\n".join(steps), "category": problem["category"], "problem": key}


def _boxed_solutions(data: dict[str, Any]) -> Iterator[dict[str, MetadataValue]]:
    """Each conversation's first model reply that writes a boxed answer."""
    for key, problem in sorted(data["problems"].items()):
        for setting, conversation in sorted(problem["conversations"].items()):
            replies = [m for m in conversation["messages"]
                       if m["role"].startswith(_MODEL_PREFIX) and m["text"]]
            boxed = next((m for m in replies if "\\boxed" in m["text"]), None)
            if boxed is None:
                continue
            yield {"text": boxed["text"], "problem": key, "setting": setting,
                   "model": boxed["role"].removeprefix(_MODEL_PREFIX),
                   "reference_answer": problem["_answer"]}


def build(dest: Path) -> dict[str, int]:
    """Write the problems and the boxed model solutions as two jsonl files."""
    wheel = pip_wheel("champ", PROJECT, VERSION)
    with zipfile.ZipFile(wheel) as archive:
        data = json.loads(archive.read(_MEMBER).decode("utf-8"))
    return {"problems": write_jsonl(dest / PROBLEMS_FILE, _problems(data)),
            "model_solutions": write_jsonl(dest / SOLUTIONS_FILE, _boxed_solutions(data))}
