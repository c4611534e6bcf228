"""Read a stage's rejected rows back whole, also when they were written by id.

With `storage.rejected_rows: ids`, a stage over a committed dataset writes, for each row it
drops, only its `id`, the columns the stage itself made (a score, `duplicate_of`) and why;
the row itself stays in that input, which the rejected dataset's lineage pins by content.
This joins the two again, one input batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from gristmill.stages.base import StageInputError
from gristmill.stages.chain import BY_ID
from gristmill.storage.manifest import content_sha256
from gristmill.storage.reader import Dataset


def is_by_id(rejected: Dataset) -> bool:
    return (rejected.schema.metadata or {}).get(b"gristmill.rejects") == BY_ID[
        b"gristmill.rejects"]


def rejected_rows(uri: str) -> Iterator[pa.Table]:
    """The rejected dataset at `uri`, every row whole with what the stage found and why, in
    input order. Holds the by-id dataset (ids and the stage's own columns) in memory, never
    the input's rows."""
    rejected = Dataset.open(uri)
    if not is_by_id(rejected):
        yield from (pa.Table.from_batches([b]) for b in rejected.iter_batches())
        return
    lineage = rejected.manifest.lineage
    if lineage is None or len(lineage.inputs) != 1:
        raise StageInputError(f"{uri} holds rejects by id but names no single input dataset")
    source = Dataset.open(lineage.inputs[0].uri)
    if content_sha256(source.manifest) != lineage.inputs[0].content_sha256:
        raise StageInputError(f"{source.uri} changed since {uri} was written: its rejected "
                              "rows can no longer be read back; rerun the stage")
    found = rejected.to_table()
    found_columns = [name for name in found.column_names if name != "id"]
    ids = found.column("id")
    for batch in source.iter_batches():
        table = pa.Table.from_batches([batch])
        positions = pc.index_in(table.column("id"), value_set=ids)
        hit = pc.is_valid(positions)
        if not pc.any(hit).as_py():
            continue
        rows = table.filter(hit).drop_columns(
            [name for name in found_columns if name in table.column_names])
        why = found.take(positions.filter(hit))
        for name in found_columns:
            rows = rows.append_column(why.schema.field(name), why.column(name))
        yield rows
