"""near_dup_keys (map stage): each row's normalized-text key and MinHash signature, the two
columns exact and MinHash dedup (stages/lsh_dedup.py) group on, computed where the rows are.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from gristmill.scoring.near_dup import MinHasher, exact_key
from gristmill.stages.base import (
    STRING_TYPES,
    AddColumnsStage,
    Split,
    StageConfig,
    attach_reasons,
    require_columns,
)


class NearDupKeysConfig(StageConfig):
    text_column: str = "text"
    num_perm: int = 128
    ngram: int = 5
    minhash_seed: int = 1


def near_dup_columns(hasher: MinHasher, texts: list[str]) -> dict[str, pa.Array]:
    """`exact_key` and `minhash` (fixed_size_list<uint64, num_perm>) for the texts."""
    signatures = hasher.signatures(texts)
    return {"exact_key": pa.array([exact_key(t) for t in texts], pa.string()),
            "minhash": pa.FixedSizeListArray.from_arrays(
                pa.array(signatures.ravel(), pa.uint64()), hasher.num_perm)}


class NearDupKeys(AddColumnsStage[NearDupKeysConfig]):
    """Adds `exact_key` and `minhash`; never rejects (a null text hashes as empty)."""

    name: ClassVar[str] = "near_dup_keys"

    def setup(self) -> None:
        cfg = self.config
        self.hasher = MinHasher(num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.minhash_seed)

    def added(self) -> list[pa.Field]:
        return [pa.field("exact_key", pa.string()),
                pa.field("minhash", pa.list_(pa.uint64(), self.config.num_perm))]

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {self.config.text_column: STRING_TYPES})

    def process(self, batch: pa.Table) -> Split:
        texts = [t or "" for t in batch.column(self.config.text_column).to_pylist()]
        kept = self.with_added(batch, near_dup_columns(self.hasher, texts))
        return Split(kept, attach_reasons(kept.slice(0, 0), [], [], self.name))
