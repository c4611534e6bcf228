"""Content snapshot of every dataset under a folder, to check a refactor changed no output.

Why: a refactor changes code versions (so every cache key) but must not change what is
written. This hashes each committed dataset's rows and schema in manifest order (manifests
themselves differ by design: lineage, code versions, times), plus the bytes of every PNG and
FAISS index, and writes a JSON map {relative path: [rows out, hash]}.

Run: python bench/snapshot_outputs.py .gristmill/demo before.json  (then diff two snapshots)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pyarrow as pa

BINARY_SUFFIXES = {".faiss", ".png"}


def table_digest(folder: Path, manifest: dict) -> str:
    digest = hashlib.sha256()
    for shard in manifest.get("shards", []):
        name = shard.get("file", "") if isinstance(shard, dict) else ""
        if not name.endswith(".arrow"):
            continue
        with pa.memory_map(str(folder / name)) as source:
            table = pa.ipc.open_stream(source).read_all().combine_chunks()
        digest.update(str(table.schema).encode())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()[:16]


def snapshot(root: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in sorted(root.rglob("manifest.json")):
        manifest = json.loads(path.read_text())
        rows = (manifest.get("stats") or {}).get("rows_out")
        found[str(path.parent.relative_to(root))] = [rows, table_digest(path.parent, manifest)]
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in BINARY_SUFFIXES:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding the datasets (e.g. a demo run)")
    parser.add_argument("output", type=Path, help="where to write the JSON snapshot")
    args = parser.parse_args()
    found = snapshot(args.root)
    args.output.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(f"{len(found)} entries -> {args.output}")


if __name__ == "__main__":
    main()
