"""chunk: documents -> fixed-length word passages for the retrieval datastore (MassiveDS).

A document is split on whitespace into passages of `words_per_passage` words; a last piece
shorter than `merge_tail_below` words joins the passage before it, so no passage is a
fragment. Each passage keeps the document's metadata columns, gains a stable `id` (hash of
the parent id and its position), `parent_id`, `passage_index`, `word_count`, and the
datastore `shard_id` its document hashes to, so all passages of a document sit in one shard
and the assignment is the same on every run and machine. A title, when present, is prepended
to every passage (it is not counted in the passage's words).
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import pyarrow as pa
from pydantic import Field

from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    attach_reasons,
    require_columns,
)
from gristmill.stages.ingest import text_hash

ADDED = {"parent_id": pa.string(), "passage_index": pa.int32(), "word_count": pa.int32(),
         "shard_id": pa.int32()}


class ChunkConfig(StageConfig):
    """Passage length, tail merging, title handling and how documents map to shards."""

    text_column: str = "text"
    id_column: str = "id"
    title_column: str | None = Field(
        default="title", description="Prepended to each passage when the column exists")
    words_per_passage: int = Field(default=256, ge=1, description="MassiveDS: 256 words")
    merge_tail_below: int = Field(
        default=128, ge=0,
        description="A last piece with fewer words joins the previous passage; 0 never merges")
    num_shards: int = Field(default=8, ge=1, description="Datastore shards documents hash to")


def split_words(text: str, size: int, merge_tail_below: int) -> list[list[str]]:
    """Whitespace words in runs of `size`; a short tail merges into the run before it."""
    words = text.split()
    pieces = [words[i:i + size] for i in range(0, len(words), size)]
    if len(pieces) > 1 and len(pieces[-1]) < merge_tail_below:
        tail = pieces.pop()
        pieces[-1] = pieces[-1] + tail
    return pieces


def shard_of(parent_id: str, num_shards: int) -> int:
    """A stable shard for a document: the same on every run, spread evenly by the hash."""
    digest = hashlib.blake2b(parent_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def passage_id(parent_id: str, index: int) -> str:
    return hashlib.blake2b(f"{parent_id}:{index}".encode(), digest_size=16).hexdigest()


class Chunk(MapStage[ChunkConfig]):
    name: ClassVar[str] = "chunk"
    fan_out: ClassVar[bool] = True

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {self.config.text_column: STRING_TYPES,
                                            self.config.id_column: STRING_TYPES})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        base = [f for f in input_schema if f.name not in ADDED]
        return pa.schema([*base, *(pa.field(n, t) for n, t in ADDED.items())])

    def process(self, batch: pa.Table) -> Split:
        cfg = self.config
        title_column = cfg.title_column if cfg.title_column in batch.column_names else None
        texts = batch.column(cfg.text_column).to_pylist()
        ids = batch.column(cfg.id_column).to_pylist()
        titles = batch.column(title_column).to_pylist() if title_column else [None] * len(ids)
        take: list[int] = []
        out: dict[str, list] = {"text": [], "id": [], **{name: [] for name in ADDED}}
        empty: list[int] = []
        for row, (text, parent, title) in enumerate(zip(texts, ids, titles, strict=True)):
            pieces = split_words(text or "", cfg.words_per_passage, cfg.merge_tail_below)
            if not pieces:
                empty.append(row)
                continue
            shard = shard_of(parent, cfg.num_shards)
            prefix = f"{title.strip()}\n" if isinstance(title, str) and title.strip() else ""
            for index, words in enumerate(pieces):
                take.append(row)
                out["text"].append(prefix + " ".join(words))
                out["id"].append(passage_id(parent, index))
                out["parent_id"].append(parent)
                out["passage_index"].append(index)
                out["word_count"].append(len(words))
                out["shard_id"].append(shard)
        kept = batch.drop_columns([c for c in ADDED if c in batch.column_names])
        kept = kept.take(pa.array(take, pa.int64()))
        kept = kept.set_column(kept.schema.get_field_index(cfg.text_column), cfg.text_column,
                               pa.array(out["text"], batch.schema.field(cfg.text_column).type))
        kept = kept.set_column(kept.schema.get_field_index(cfg.id_column), cfg.id_column,
                               pa.array(out["id"], batch.schema.field(cfg.id_column).type))
        if "text_hash" in kept.column_names:  # a passage's content is its own text
            kept = kept.set_column(kept.schema.get_field_index("text_hash"), "text_hash",
                                   pa.array([text_hash(t) for t in out["text"]], pa.string()))
        for name, dtype in ADDED.items():
            kept = kept.append_column(pa.field(name, dtype), pa.array(out[name], dtype))
        rejected = attach_reasons(batch.take(pa.array(empty, pa.int64())),
                                  ["empty_text"] * len(empty), [None] * len(empty), self.name)
        return Split(kept, rejected)
