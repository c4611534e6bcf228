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
    """The rejected dataset at `uri`, every row whole with its reason, input order. Holds the
    rejected ids in memory (not the rows)."""
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
    ids = found.column("id")
    extra = [name for name in found.column_names if name != "id"]
    for batch in source.iter_batches():
        table = pa.Table.from_batches([batch])
        dropped = table.filter(pc.is_in(table.column("id"), value_set=ids))
        if dropped.num_rows:
            yield dropped.join(found, "id", join_type="left outer").select(
                [*table.column_names, *extra])
