"""Stream a stored mixture: the `mix` step's index, resolved against its domain datasets.

The `mix` step stores where each sample is (step, domain, epoch, loss weight, shard, row: a
few bytes a sample, as Megatron's blended datasets keep theirs), not the rows, and pins each
domain dataset by content in its manifest summary. This stream reads the index in order and
gathers every step's rows from the domains, so a trainer gets the same batches as from
`MixtureStream`, and a changed domain is refused instead of silently giving other rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from torch.utils.data import IterableDataset, get_worker_info

from gristmill.loading.mixture import (
    INDEX_SCHEMA,
    MIXTURE_COLUMNS,
    MixtureError,
    Slots,
    gather_slots,
    with_mixture_columns,
)
from gristmill.loading.shard_cache import ShardCache
from gristmill.loading.stream import Batch, StreamFormat, format_batch
from gristmill.storage.manifest import content_sha256
from gristmill.storage.reader import Dataset

INDEX_FORMAT = "gristmill-mixture-index/1"


def index_summary(domains: list[Dataset], names: list[str], columns: list[str]) -> dict:
    """What a stored index needs to be read back: its format, the columns to gather, and
    each domain dataset pinned by content."""
    return {"format": INDEX_FORMAT, "columns": columns,
            "domains": [{"name": name, "uri": d.uri, "sha256": content_sha256(d.manifest)}
                        for name, d in zip(names, domains, strict=True)]}


class MixtureIndexStream(IterableDataset):
    """Batches of a stored mixture, step by step. Use with `DataLoader(stream,
    batch_size=None)`; worker w of W builds the steps s with s % W == w. The `mix` step
    stores one rank's stream (world size 1): ranks of a multi-GPU run that must not share
    samples read `MixtureStream(config, rank=r, world_size=n)` instead."""

    def __init__(self, uri: str, *, start_step: int = 0, format: StreamFormat = "arrow") -> None:
        self.index = Dataset.open(uri)
        summary = self.index.manifest.summary
        if summary.get("format") != INDEX_FORMAT or not self.index.schema.equals(INDEX_SCHEMA):
            raise MixtureError(f"{uri} is not a stored mixture index (a `mix` step's output)")
        self.names = [d["name"] for d in summary["domains"]]
        self.columns: list[str] = summary["columns"]
        self.domains = [_pinned(d) for d in summary["domains"]]
        first = self.domains[0].schema
        self.schema = pa.schema([first.field(c) for c in self.columns])
        self.output_schema = pa.schema([*self.schema, *MIXTURE_COLUMNS])
        self.start_step = start_step
        self.format = format

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.start_step, "index": self.index.uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("index") != self.index.uri:
            raise MixtureError(f"this state was saved while reading {state.get('index')}")
        self.start_step = int(state["step"])

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        workers, me = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        caches = [ShardCache(d, columns=self.columns) for d in self.domains]
        labels = {name: i for i, name in enumerate(self.names)}
        for step, rows in self._steps():
            if step < self.start_step or (step - self.start_step) % workers != me:
                continue
            slots = Slots(step, np.array([labels[n] for n in rows["domain"]]),
                          rows["domain_epoch"], rows["loss_weight"], rows["shard"],
                          rows["row"])
            table = gather_slots(slots, caches, self.schema)
            if worker is None:
                self.start_step = step + 1
            yield format_batch(with_mixture_columns(table, slots, self.names), self.format)

    def _steps(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(step, its index rows as arrays), in order; a step may span index batches."""
        pending: list[pa.RecordBatch] = []
        for batch in self.index.iter_batches():
            if batch.num_rows == 0:
                continue
            steps = batch.column("step").to_numpy()
            cuts = np.flatnonzero(np.diff(steps)) + 1
            for start, stop in zip([0, *cuts], [*cuts, len(steps)], strict=True):
                piece = batch.slice(start, stop - start)
                if pending and pending[0].column("step")[0] != piece.column("step")[0]:
                    yield _arrays(pending)
                    pending = []
                pending.append(piece)
        if pending:
            yield _arrays(pending)


def _arrays(batches: list[pa.RecordBatch]) -> tuple[int, dict[str, np.ndarray]]:
    table = pa.Table.from_batches(batches)
    rows = {name: table.column(name).to_numpy() for name in table.column_names}
    return int(rows["step"][0]), rows


def _pinned(domain: dict[str, str]) -> Dataset:
    dataset = Dataset.open(domain["uri"])
    found = content_sha256(dataset.manifest)
    if found != domain["sha256"]:
        raise MixtureError(f"domain {domain['name']!r} ({domain['uri']}) now holds content "
                           f"{found[:12]}; the index was drawn over {domain['sha256'][:12]}: "
                           "run the mix step again")
    return dataset
