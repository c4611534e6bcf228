"""The deterministic order in which a dataset's rows are visited in one epoch.

Two-level shuffle: the shards are permuted, then the rows within each shard, each from a
seed derived from (seed, epoch[, shard]). Any position of the epoch maps to a (shard, row)
without materializing a global permutation, so memory stays O(rows of one shard) however
large the dataset, and any reader (rank, worker, resumed run) computes the same order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class SampleOrder:
    """Epoch `epoch` of a dataset whose shards hold `shard_rows` rows each."""

    def __init__(self, shard_rows: list[int], *, seed: int, epoch: int,
                 shuffle: bool = True) -> None:
        self.shard_rows = list(shard_rows)
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        count = len(self.shard_rows)
        if shuffle:
            self.shards = np.random.default_rng([seed, epoch]).permutation(count)
        else:
            self.shards = np.arange(count)
        visited = np.asarray(self.shard_rows, dtype=np.int64)[self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(visited)])
        self.total = int(self.offsets[-1])
        self._rows = lru_cache(maxsize=4)(self._shard_permutation)

    def _shard_permutation(self, shard: int) -> np.ndarray:
        rows = self.shard_rows[shard]
        if not self.shuffle:
            return np.arange(rows)
        return np.random.default_rng([self.seed, self.epoch, shard]).permutation(rows)

    def locate(self, start: int, stop: int) -> list[tuple[int, np.ndarray]]:
        """Positions [start, stop) of the epoch as (shard index, row indices) runs."""
        start, stop = max(0, start), min(stop, self.total)
        runs: list[tuple[int, np.ndarray]] = []
        position = start
        while position < stop:
            slot = int(np.searchsorted(self.offsets, position, side="right")) - 1
            shard = int(self.shards[slot])
            first = position - int(self.offsets[slot])
            last = min(stop, int(self.offsets[slot + 1])) - int(self.offsets[slot])
            runs.append((shard, self._rows(shard)[first:last]))
            position += last - first
        return runs
