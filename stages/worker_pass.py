"""A pass over a committed dataset on the Ray workers that sends back summaries, not rows.

Global steps that only need aggregates of a column (histograms for exact quantiles, counts
per bucket) run their function once per shard where Ray schedules the read, and the driver
adds up the small tables that come back: it never holds, nor reads, the column itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from gristmill.config import RuntimeConfig
from gristmill.runtime import ensure_ray
from gristmill.storage.reader import Dataset


def map_shards(dataset: Dataset, summarize: Callable[[pa.Table], pa.Table],
               columns: list[str], runtime: RuntimeConfig) -> Iterator[pa.Table]:
    """Yield `summarize(rows)` for every shard (or block of one) of `dataset`, as workers
    finish them. `summarize` must not raise on bad rows: count them into its summary so the
    driver can refuse the input with a clear message."""
    from gristmill.storage.ray_io import read_ray

    ensure_ray(runtime.ray)
    shards = read_ray(dataset, columns=columns, verify=runtime.storage.verify_inputs)
    summaries = shards.map_batches(summarize, batch_size=None, batch_format="pyarrow",
                                   zero_copy_batch=True)
    yield from summaries.iter_batches(batch_size=None, batch_format="pyarrow")
