"""Write rows in the ingest stage's `jsonl` format: one UTF-8 JSON object per line.

Non-ASCII text is kept as UTF-8 (readable, compact), except U+0085, U+2028 and U+2029: JSON
leaves them raw, but line splitters such as str.splitlines() treat them as line breaks.
"""

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

MetadataValue = str | int | list[str]

_LINE_BREAK_ESCAPES = str.maketrans({char: f"\\u{ord(char):04x}" for char in "\x85\u2028\u2029"})


def write_jsonl(path: Path, rows: Iterable[Mapping[str, MetadataValue]]) -> int:
    """Write rows and return how many were written (builders report it in the marker)."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False)
            out.write(line.translate(_LINE_BREAK_ESCAPES) + "\n")
            count += 1
    return count
