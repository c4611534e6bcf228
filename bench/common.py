"""Helpers every benchmark script shares: how busy the machine was, and atomic results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_average() -> list[float]:
    """Other work on a small shared machine skews timings: record how busy it was."""
    return [round(load, 2) for load in os.getloadavg()]


def write_json(path: Path, report: dict[str, Any], indent: int = 2) -> None:
    """Temp file then rename, so a crashed run never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=indent) + "\n")
    tmp.replace(path)
