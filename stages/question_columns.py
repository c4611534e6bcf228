"""Column helpers the ScaleQuest question stages share: typed appends and derived ids."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

STRING_TYPES = (pa.string(), pa.large_string())


def derived_id(parent: str | None, text: str) -> str:
    """A stable id for a row made from `parent`: two generations of the same text from
    different seeds stay distinct rows (exact dedup, not the id, decides which survives)."""
    return hashlib.blake2b(f"{parent or ''}\n{text}".encode(), digest_size=16).hexdigest()


def extend_schema(schema: pa.Schema, added: list[pa.Field]) -> pa.Schema:
    """`schema` with `added` appended, replacing any column of the same name."""
    names = {f.name for f in added}
    return pa.schema([*(f for f in schema if f.name not in names), *added])


def with_columns(batch: pa.Table, added: list[pa.Field], values: dict[str, Any]) -> pa.Table:
    """Append (or replace) the `added` columns, building each from a list or an array."""
    batch = batch.drop_columns([f.name for f in added if f.name in batch.column_names])
    for field in added:
        column = values[field.name]
        if not isinstance(column, pa.Array | pa.ChunkedArray):
            column = pa.array(column, field.type)
        batch = batch.append_column(field, column)
    return batch


def prompts_that_fit(generator: Any, prompts: dict[int, str],
                     limit: int) -> tuple[dict[int, str], dict[int, int]]:
    """Split prompts into those within `limit` tokens and the token counts of the rest, so an
    over-long question is a rejected row instead of an error for the whole batch."""
    order = sorted(prompts)
    counts = generator.count_tokens([prompts[i] for i in order]) if order else []
    fit = {i: prompts[i] for i, c in zip(order, counts, strict=True) if c <= limit}
    over = {i: c for i, c in zip(order, counts, strict=True) if c > limit}
    return fit, over


def overlay_default(data: Any, field: str, default: Any) -> Any:
    """Fill a partly given nested config (e.g. `generator: {max_new_tokens: 64}` in YAML)
    from the stage's own default instead of the bare model's, so the paper's decoding
    settings survive an override of one knob."""
    if isinstance(data, dict) and isinstance(data.get(field), dict):
        return {**data, field: {**default.model_dump(), **data[field]}}
    return data
