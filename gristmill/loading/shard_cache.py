"""Shard tables kept open for a streaming reader, with the next shard read ahead.

Local shards are memory-mapped, so opening one is cheap; the read-ahead asks the kernel to
load the next shard's pages (POSIX_FADV_WILLNEED) so a trainer's step does not wait on the
disk. Remote shards are downloaded by the read-ahead thread. At most `keep` tables are
held, so memory does not grow with the dataset.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from gristmill.storage.reader import Dataset


class ShardCache:
    """Tables of one dataset's shards by index: a small LRU plus one read-ahead."""

    def __init__(self, dataset: Dataset, *, columns: list[str] | None = None,
                 keep: int = 2, verify: bool = False) -> None:
        self.dataset = dataset
        self.columns = columns
        self.keep = keep
        self.verify = verify
        self._tables: OrderedDict[int, pa.Table] = OrderedDict()
        self._pending: dict[int, Future[pa.Table]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _read(self, index: int) -> pa.Table:
        location = self.dataset.shard_location(index)
        if location.is_local and hasattr(os, "posix_fadvise") and os.path.isfile(location.path):
            fd = os.open(location.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        return self.dataset.read_shard(index, columns=self.columns, verify=self.verify)

    def get(self, index: int) -> pa.Table:
        if index in self._tables:
            self._tables.move_to_end(index)
            return self._tables[index]
        future = self._pending.pop(index, None)
        table = future.result() if future is not None else self._read(index)
        self._tables[index] = table
        while len(self._tables) > self.keep:
            self._tables.popitem(last=False)
        return table

    def prefetch(self, index: int) -> None:
        """Start reading shard `index` in the background, if it is not already at hand."""
        if index in self._tables or index in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gm-prefetch")
        self._pending[index] = self._pool.submit(self._read, index)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self._tables.clear()

    def __getstate__(self) -> dict:
        """Pickle for DataLoader workers without tables, futures or threads."""
        state = dict(self.__dict__)
        state.update(_tables=OrderedDict(), _pending={}, _pool=None)
        return state
