"""A stream that mixes several domain datasets by a temperature schedule over training steps.

Every step draws its batch's domain counts from p_i(T(step)) with a generator seeded by
(seed, step), so any step's batch can be rebuilt from the step number alone: resuming needs
nothing but the step, and every rank and worker agrees without talking to the others. Each
domain keeps an absolute read counter; its rows come in that domain's own seeded epoch
order (`SampleOrder`), and a domain that runs out either starts its next epoch ("repeat")
or leaves the mixture ("stop"). Every sample is tagged with its `domain`, and with a
`loss_weight` that is w_i(T) = p_i(T)/p_i(1) in the scalarization mode (1.0 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import IterableDataset, get_worker_info

from gristmill.loading.sample_order import SampleOrder
from gristmill.loading.shard_cache import ShardCache
from gristmill.loading.stream import Batch, StreamFormat, format_batch
from gristmill.scoring.temperature import (
    CooldownSchedule,
    Schedule,
    scalarization_weights,
    temperature_probs,
)
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import conform

MIXTURE_COLUMNS = (pa.field("domain", pa.string()), pa.field("domain_epoch", pa.int32()),
                   pa.field("loss_weight", pa.float32()), pa.field("step", pa.int64()))
INDEX_SCHEMA = pa.schema([pa.field("step", pa.int64()), pa.field("domain", pa.string()),
                          pa.field("domain_epoch", pa.int32()),
                          pa.field("loss_weight", pa.float32()),
                          pa.field("shard", pa.int32()), pa.field("row", pa.int64())])
"""A stored mixture: one row per sample, naming the domain dataset's shard and row."""


class MixtureError(ValueError):
    """A mixture that cannot be drawn: empty or unknown domains, bad sizes or schema."""


class DomainSpec(BaseModel):
    """One domain: a committed dataset and, optionally, a size to use instead of counting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    uri: str
    size: float | None = Field(default=None, gt=0, description="Overrides the counted size")


class MixtureConfig(BaseModel):
    """Which domains, by what schedule, for how many steps of what batch size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domains: list[DomainSpec]
    schedule: Schedule = CooldownSchedule()
    total_steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=32, ge=1, description="Samples per step per rank")
    seed: int = 0
    size_by: str = Field(default="rows",
                         description='"rows", or a numeric column summed per domain (tokens)')
    mode: Literal["sample", "scalarize"] = Field(
        default="sample", description="sample: draw by p(T); scalarize: draw by p(1), "
                                      "weight losses by p(T)/p(1)")
    on_exhausted: Literal["repeat", "stop"] = "repeat"
    columns: list[str] | None = Field(
        default=None, description="Columns to keep; None = the columns all domains share")

    @field_validator("domains")
    @classmethod
    def _named_uniquely(cls, domains: list[DomainSpec]) -> list[DomainSpec]:
        names = [d.name for d in domains]
        if not domains or len(set(names)) != len(names):
            raise ValueError(f"need at least one domain, each with its own name; got {names}")
        return domains


class _Domain:
    """A domain's rows in epoch order, by absolute position (position // rows = epoch)."""

    def __init__(self, spec: DomainSpec, seed: int, columns: list[str]) -> None:
        self.name = spec.name
        self.dataset = Dataset.open(spec.uri)
        self.rows = self.dataset.num_rows
        self.seed = seed
        self.cache = ShardCache(self.dataset, columns=columns)
        self._orders: dict[int, SampleOrder] = {}

    def order(self, epoch: int) -> SampleOrder:
        if epoch not in self._orders:
            self._orders = {epoch: SampleOrder([s.rows for s in self.dataset.shards],
                                               seed=self.seed, epoch=epoch)}
        return self._orders[epoch]

    def locate(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of the rows at absolute positions [start, start + count), across
        epoch boundaries."""
        shards, rows = [], []
        position, end = start, start + count
        while position < end:
            epoch, offset = divmod(position, self.rows)
            stop = min(end - position, self.rows - offset) + offset
            for shard, found in self.order(epoch).locate(offset, stop):
                shards.append(np.full(len(found), shard, np.int32))
                rows.append(np.asarray(found, np.int64))
            position += stop - offset
        return np.concatenate(shards), np.concatenate(rows)

    def take(self, start: int, count: int) -> pa.Table:
        """Rows at absolute positions [start, start + count)."""
        return gather(self.cache, *self.locate(start, count))


def gather(cache: ShardCache, shards: np.ndarray, rows: np.ndarray) -> pa.Table:
    """The rows (shards[i], rows[i]) of a dataset, in that order: one take per shard."""
    pieces, slots = [], []
    for shard in np.unique(shards):
        where = np.flatnonzero(shards == shard)
        pieces.append(cache.get(int(shard)).take(pa.array(rows[where])))
        slots.append(where)
    return pa.concat_tables(pieces).take(pa.array(np.argsort(np.concatenate(slots))))


def _domain_size(dataset: Dataset, size_by: str) -> float:
    if size_by == "rows":
        return float(dataset.num_rows)
    if size_by not in dataset.schema.names:
        raise MixtureError(f"size_by column {size_by!r} is not in {dataset.uri} "
                           f"(columns: {dataset.schema.names})")
    total = sum(pc.sum(dataset.read_shard(i, columns=[size_by]).column(0)).as_py() or 0
                for i in range(len(dataset.shards)))
    return float(total)


class MixturePlan:
    """The deterministic per-step draw: which domains, how many rows of each, which weights."""

    def __init__(self, config: MixtureConfig, sizes: list[float], rows: list[int],
                 world_size: int = 1) -> None:
        if any(count == 0 for count in rows):
            empty = [d.name for d, n in zip(config.domains, rows, strict=True) if n == 0]
            raise MixtureError(f"domains with no rows cannot be mixed: {empty}")
        self.config = config
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.global_batch = config.batch_size * world_size

    def probabilities(self, step: int, active: np.ndarray | None = None) -> np.ndarray:
        """Sampling probabilities at `step` over the active domains (zeros elsewhere)."""
        active = np.ones(len(self.sizes), bool) if active is None else active
        temperature = 1.0 if self.config.mode == "scalarize" else \
            self.config.schedule.temperature(step, self.config.total_steps)
        probs = np.zeros(len(self.sizes))
        probs[active] = temperature_probs(self.sizes[active], temperature)
        return probs

    def row_probabilities(self, step: int, active: np.ndarray | None = None) -> np.ndarray:
        """Per-row draw probabilities that give each domain its share of the size unit: with
        sizes in tokens, a domain of long rows is drawn less often per row."""
        probs = self.probabilities(step, active)
        if self.config.size_by == "rows":
            return probs
        per_row = probs / (self.sizes / self.rows)
        return per_row / per_row.sum()

    def weights(self, step: int) -> np.ndarray:
        if self.config.mode == "sample":
            return np.ones(len(self.sizes))
        temperature = self.config.schedule.temperature(step, self.config.total_steps)
        return scalarization_weights(self.sizes, temperature)

    def draw(self, step: int, consumed: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(domain label per global-batch slot, rows drawn per domain), or None when every
        domain is used up ("stop" mode). `consumed` is each domain's read counter."""
        active = np.ones(len(self.sizes), bool)
        for attempt in range(len(self.sizes) + 1):
            if self.config.on_exhausted == "stop":
                active &= consumed < self.rows
            if not active.any():
                return None
            rng = np.random.default_rng([self.config.seed, step, attempt])
            counts = rng.multinomial(self.global_batch, self.row_probabilities(step, active))
            short = (self.config.on_exhausted == "stop") & (consumed + counts > self.rows)
            if not short.any():
                labels = rng.permutation(np.repeat(np.arange(len(self.sizes)), counts))
                return labels, counts
            active &= ~short
        return None


class MixtureStream(IterableDataset):
    """Batches of a mixture, step by step, for one rank: an iterable trainers can resume.

    Use with `DataLoader(stream, batch_size=None)`; DataLoader worker w of W builds the
    steps s with s % W == w, so the batches arrive in step order whatever W is.
    """

    def __init__(self, config: MixtureConfig, *, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, format: StreamFormat = "arrow") -> None:
        if not 0 <= rank < world_size:
            raise MixtureError(f"rank {rank} is outside world_size {world_size}")
        self.config = config
        self.format = format
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        datasets = [Dataset.open(d.uri) for d in config.domains]
        self.columns = _common_columns(config, datasets)
        self.schema = pa.schema([datasets[0].schema.field(c) for c in self.columns])
        self.output_schema = pa.schema([*self.schema, *MIXTURE_COLUMNS])
        sizes = [d.size or _domain_size(ds, config.size_by)
                 for d, ds in zip(config.domains, datasets, strict=True)]
        self.plan = MixturePlan(config, sizes, [ds.num_rows for ds in datasets], world_size)

    def state_dict(self) -> dict[str, Any]:
        """Where to resume: exact when iterated in this process. With DataLoader workers the
        trainer's own step counter is the state: `state_for_step(steps_done)`."""
        return self.state_for_step(self.start_step)

    def state_for_step(self, step: int) -> dict[str, Any]:
        return {"step": step, "seed": self.config.seed,
                "domains": [d.name for d in self.config.domains]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("domains") != [d.name for d in self.config.domains] \
                or state.get("seed") != self.config.seed:
            raise MixtureError("this state was saved by a mixture with other domains or seed")
        self.start_step = int(state["step"])

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        workers, me = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        for step, domains, slots in self._draws(lambda step: step >= self.start_step and (
                step - self.start_step) % workers == me):
            batch = with_mixture_columns(gather_slots(slots, [d.cache for d in domains],
                                                      self.schema),
                                         slots, [d.name for d in domains])
            if worker is None:
                self.start_step = step + 1
            yield format_batch(batch, self.format)

    def iter_index(self) -> Iterator[pa.RecordBatch]:
        """Each step's samples as (step, domain, epoch, weight, shard, row): where the rows
        are, not the rows, so a mixture is stored in a few bytes a sample."""
        names = np.array([d.name for d in self.config.domains], dtype=object)
        for step, _, slots in self._draws(lambda step: True):
            yield pa.record_batch([
                pa.array(np.full(len(slots.domain), step), pa.int64()),
                pa.array(names[slots.domain], pa.string()),
                pa.array(slots.epoch, pa.int32()), pa.array(slots.weight, pa.float32()),
                pa.array(slots.shard, pa.int32()), pa.array(slots.row, pa.int64())],
                schema=INDEX_SCHEMA)

    def _draws(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, list[_Domain], Slots]]:
        """Every step in order, with this rank's slots for the steps `wanted` picks; each
        domain's read counter advances over every step, picked or not."""
        domains = [_Domain(spec, self.config.seed * 1009 + i, self.columns)
                   for i, spec in enumerate(self.config.domains)]
        consumed = np.zeros(len(domains), dtype=np.int64)
        for step in range(self.config.total_steps):
            drawn = self.plan.draw(step, consumed)
            if drawn is None:
                return
            labels, counts = drawn
            if wanted(step):
                yield step, domains, self._slots(step, domains, labels, consumed)
            consumed += counts

    def _slots(self, step: int, domains: list[_Domain], labels: np.ndarray,
               consumed: np.ndarray) -> Slots:
        """This rank's samples of `step`, in batch order: domain, epoch, weight, and
        where each row is."""
        first = self.rank * self.config.batch_size
        mine = labels[first:first + self.config.batch_size]
        before = np.bincount(labels[:first], minlength=len(domains))
        shard = np.zeros(len(mine), np.int32)
        row = np.zeros(len(mine), np.int64)
        epoch = np.zeros(len(mine), np.int32)
        for index in np.unique(mine):
            where = np.flatnonzero(mine == index)
            start = int(consumed[index] + before[index])
            shard[where], row[where] = domains[index].locate(start, len(where))
            epoch[where] = (start + np.arange(len(where))) // domains[index].rows
        return Slots(step, mine, epoch, self.plan.weights(step)[mine], shard, row)


class Slots(NamedTuple):
    """One step's samples for one rank, in batch order."""

    step: int
    domain: np.ndarray
    epoch: np.ndarray
    weight: np.ndarray
    shard: np.ndarray
    row: np.ndarray


def gather_slots(slots: Slots, caches: list[ShardCache], schema: pa.Schema) -> pa.Table:
    """The rows the slots name, in batch order, in `schema`: one gather per domain."""
    pieces = []
    for index in np.unique(slots.domain):
        where = np.flatnonzero(slots.domain == index)
        rows = gather(caches[index], slots.shard[where], slots.row[where])
        pieces.append((where, conform(rows, schema)))
    order = np.argsort(np.concatenate([where for where, _ in pieces]))
    return pa.concat_tables([rows for _, rows in pieces]).take(pa.array(order))


def with_mixture_columns(table: pa.Table, slots: Slots, names: list[str]) -> pa.RecordBatch:
    """Rows in batch order, tagged with their domain, epoch, loss weight and step."""
    columns = (np.array(names, dtype=object)[slots.domain], slots.epoch, slots.weight,
               np.full(len(slots.domain), slots.step))
    for field, values in zip(MIXTURE_COLUMNS, columns, strict=True):
        table = table.append_column(field, pa.array(values, field.type))
    return table.combine_chunks().to_batches()[0]


def _common_columns(config: MixtureConfig, datasets: list[Dataset]) -> list[str]:
    if config.columns is not None:
        for spec, dataset in zip(config.domains, datasets, strict=True):
            missing = [c for c in config.columns if c not in dataset.schema.names]
            if missing:
                raise MixtureError(f"domain {spec.name!r} ({spec.uri}) lacks columns {missing}")
        return list(config.columns)
    shared = [c for c in datasets[0].schema.names
              if all(c in ds.schema.names for ds in datasets[1:])]
    reserved = {f.name for f in MIXTURE_COLUMNS}
    return [c for c in shared if c not in reserved]

