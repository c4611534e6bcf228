"""ShardStream: one seeded order at any worker count, exact resume, ranks that split an epoch.

Small real datasets written with write_table; DataLoader workers are real processes, so the
tests that start them are few and small. The rest simulate a worker by patching
`get_worker_info`, which is all a worker changes in the stream.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from gristmill.loading import stream as stream_module
from gristmill.loading.sample_order import SampleOrder
from gristmill.loading.shard_cache import ShardCache
from gristmill.loading.stream import (
    ShardStream,
    StreamLoader,
    StreamStateError,
    local_batch_count,
    to_hf_dataset,
    to_hf_iterable,
)
from gristmill.storage.errors import ChecksumMismatchError, CorruptShardError, SchemaMismatchError
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

ROWS = 2000


def make_rows(rows: int, *, start: int = 0, seed: int = 0) -> pa.Table:
    """An `idx` column and text of very uneven length, so byte-bounded shards are uneven."""
    rng = np.random.default_rng(seed)
    scale = np.array([20, 300, 80, 500])[(np.arange(rows) // 500) % 4]
    lengths = rng.integers(0, scale)
    return pa.table({
        "idx": pa.array(np.arange(start, start + rows), pa.int64()),
        "text": [f"doc {start + i} " + "w" * int(n) for i, n in enumerate(lengths)],
    })


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> str:
    """2,000 rows in 7+ shards of uneven sizes."""
    folder = tmp_path_factory.mktemp("stream") / "uneven"
    write_table(str(folder), make_rows(ROWS), max_rows=400, max_bytes=40_000)
    rows = [shard.rows for shard in Dataset.open(str(folder)).shards]
    assert len(rows) >= 7 and len(set(rows)) > 2, rows
    return str(folder)


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another dataset with the same schema and idx continuing where `uneven` stops."""
    folder = tmp_path_factory.mktemp("stream") / "second"
    write_table(str(folder), make_rows(700, start=ROWS, seed=1), max_rows=250)
    return str(folder)


def idx_batches(batches: Iterator[dict]) -> list[list[int]]:
    return [batch["idx"].tolist() for batch in batches]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def _describe(batch: dict) -> tuple[str, int]:
    """A collate_fn (module level, so workers can unpickle it) that reports what it got."""
    return type(batch).__name__, len(batch["text"])


def as_worker(monkeypatch: pytest.MonkeyPatch, worker: int, workers: int) -> None:
    """Make the stream believe it runs in DataLoader worker `worker` of `workers`."""
    info = SimpleNamespace(id=worker, num_workers=workers)
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: info)


# --- order ----------------------------------------------------------------------------------

def test_same_order_with_0_1_2_4_workers(uneven: str) -> None:
    runs = {}
    for workers in (0, 1, 2, 4):
        stream = ShardStream(uneven, batch_size=90, seed=7, columns=["idx"])
        runs[workers] = idx_batches(StreamLoader(stream, num_workers=workers))
    assert runs[1] == runs[0] and runs[2] == runs[0] and runs[4] == runs[0]
    assert sorted(flat(runs[0])) == list(range(ROWS))
    assert len(runs[0]) == -(-ROWS // 90) and len(runs[0][-1]) == ROWS % 90


def test_seed_epoch_and_shuffle_decide_the_order(uneven: str) -> None:
    def order(epoch: int = 0, **kwargs: object) -> list[int]:
        stream = ShardStream(uneven, batch_size=128, columns=["idx"], **kwargs)
        stream.set_epoch(epoch)
        return flat(idx_batches(stream))

    base = order(seed=1)
    assert order(seed=1) == base
    assert sorted(base) == list(range(ROWS)) and base != list(range(ROWS))
    for other in (order(seed=2), order(epoch=1, seed=1)):
        assert other != base and sorted(other) == list(range(ROWS))
    assert order(shuffle=False) == list(range(ROWS))


@pytest.mark.parametrize(("rank", "world_size", "batch_size", "drop_last"),
                         [(0, 1, 64, False), (1, 2, 90, False), (2, 3, 33, True),
                          (0, 2, 700, False)])
def test_batches_are_the_sample_orders_positions(
        uneven: str, rank: int, world_size: int, batch_size: int, drop_last: bool) -> None:
    """An oracle straight from SampleOrder: local batch lb = global batch lb * world + rank."""
    shard_rows = [shard.rows for shard in Dataset.open(uneven).shards]
    first_idx = np.concatenate([[0], np.cumsum(shard_rows)])
    order = SampleOrder(shard_rows, seed=21, epoch=2)
    stream = ShardStream(uneven, batch_size=batch_size, seed=21, rank=rank,
                         world_size=world_size, drop_last=drop_last, columns=["idx"])
    stream.set_epoch(2)
    got = idx_batches(stream)
    expected = []
    for local in range(len(got)):
        start = (local * world_size + rank) * batch_size
        runs = order.locate(start, start + batch_size)
        expected.append([int(first_idx[shard] + row) for shard, rows in runs for row in rows])
    assert got == expected
    assert len(got) == local_batch_count(ROWS, batch_size, rank, world_size, drop_last)


def test_every_row_once_with_batches_spanning_shards(uneven: str) -> None:
    stream = ShardStream(uneven, batch_size=700, seed=3)
    batches = idx_batches(stream)
    assert [len(b) for b in batches] == [700, 700, 600]
    assert sorted(flat(batches)) == list(range(ROWS))
    assert len(stream) == 3


def test_drop_last_single_rank(uneven: str) -> None:
    stream = ShardStream(uneven, batch_size=300, seed=3, drop_last=True)
    batches = idx_batches(stream)
    assert [len(b) for b in batches] == [300] * 6 and len(stream) == 6
    assert len(set(flat(batches))) == 1800


def test_two_ranks_two_workers_cover_the_epoch_once(uneven: str) -> None:
    seen: list[int] = []
    counts = []
    for rank in (0, 1):
        stream = ShardStream(uneven, batch_size=90, seed=5, rank=rank, world_size=2,
                             columns=["idx"])
        batches = idx_batches(StreamLoader(stream, num_workers=2))
        counts.append(len(batches))
        assert len(batches) == len(stream)
        seen += flat(batches)
    assert sorted(seen) == list(range(ROWS))  # all rows, none twice
    assert counts == [12, 11]  # 23 global batches: the last one goes to rank 0
    full = []
    for rank in (0, 1):
        stream = ShardStream(uneven, batch_size=90, seed=5, rank=rank, world_size=2,
                             columns=["idx"], drop_last=True)
        full.append(idx_batches(StreamLoader(stream, num_workers=2)))
    assert [len(batches) for batches in full] == [11, 11]
    assert len(set(flat(full[0]) + flat(full[1]))) == 22 * 90


@pytest.mark.parametrize("batch_size", [90, 128, 1000])
def test_drop_last_gives_every_rank_the_same_full_batches(uneven: str, batch_size: int) -> None:
    per_rank = []
    for rank in (0, 1):
        stream = ShardStream(uneven, batch_size=batch_size, seed=5, rank=rank, world_size=2,
                             drop_last=True, columns=["idx"])
        per_rank.append(idx_batches(stream))
    expected = ROWS // (batch_size * 2)
    assert [len(b) for b in per_rank] == [expected, expected]
    assert all(len(batch) == batch_size for batches in per_rank for batch in batches)
    rows = flat(per_rank[0]) + flat(per_rank[1])
    assert len(rows) == len(set(rows)) == expected * batch_size * 2


@pytest.mark.parametrize(("world_size", "workers"), [(1, 3), (2, 2), (3, 4)])
def test_worker_shares_interleave_into_the_rank_order(
        uneven: str, monkeypatch: pytest.MonkeyPatch, world_size: int, workers: int) -> None:
    """Round-robin over workers' outputs rebuilds the rank's order (what DataLoader does)."""
    for rank in range(world_size):
        whole = idx_batches(ShardStream(uneven, batch_size=37, seed=2, rank=rank,
                                        world_size=world_size))
        shares = []
        for worker in range(workers):
            as_worker(monkeypatch, worker, workers)
            shares.append(idx_batches(ShardStream(uneven, batch_size=37, seed=2, rank=rank,
                                                  world_size=world_size)))
        monkeypatch.undo()
        merged = [shares[i % workers][i // workers] for i in range(len(whole))]
        assert merged == whole
        assert sum(len(share) for share in shares) == len(whole)


def test_local_batch_count_matches_the_ranks_share() -> None:
    for total in (0, 1, 99, 100, 101, 1000):
        for world in (1, 2, 3):
            counts = [local_batch_count(total, 10, rank, world, False) for rank in range(world)]
            assert sum(counts) == -(-total // 10)
            assert len({local_batch_count(total, 10, r, world, True)
                        for r in range(world)}) == 1


# --- prefetch -------------------------------------------------------------------------------

@pytest.mark.parametrize(("world_size", "workers", "batch_size"),
                         [(1, 1, 64), (2, 2, 25), (3, 2, 17), (1, 4, 25), (1, 2, 900), (2, 3, 400)])
def test_prefetch_reads_ahead_only_shards_the_worker_uses(
        uneven: str, monkeypatch: pytest.MonkeyPatch, world_size: int, workers: int,
        batch_size: int) -> None:
    """Every shard read ahead is used by that worker; when a worker's stride is shorter than
    a shard, every shard after its first batch was read ahead (the trainer never waits)."""
    calls: list[tuple[str, int]] = []
    real_get, real_prefetch = ShardCache.get, ShardCache.prefetch

    def get(self: ShardCache, index: int) -> pa.Table:
        calls.append(("get", index))
        return real_get(self, index)

    def prefetch(self: ShardCache, index: int) -> None:
        calls.append(("prefetch", index))
        real_prefetch(self, index)

    monkeypatch.setattr(ShardCache, "get", get)
    monkeypatch.setattr(ShardCache, "prefetch", prefetch)
    smallest = min(shard.rows for shard in Dataset.open(uneven).shards)
    for rank in range(world_size):
        for worker in range(workers):
            as_worker(monkeypatch, worker, workers)
            calls.clear()
            stream = ShardStream(uneven, batch_size=batch_size, seed=4, rank=rank,
                                 world_size=world_size, columns=["idx"])
            reader = stream.reader(0, worker=worker, workers=workers)
            first_batch = {shard for local in reader.batches[:1]
                           for shard, _ in reader.order.locate(*reader.bounds(local))}
            list(stream)
            prefetched: set[int] = set()
            for position, (kind, index) in enumerate(calls):
                if kind == "prefetch":
                    assert ("get", index) in calls[position:]
                    prefetched.add(index)
            new_shards = {index for kind, index in calls if kind == "get"} - first_batch
            if batch_size * world_size * workers < smallest:
                assert new_shards <= prefetched


# --- resume ---------------------------------------------------------------------------------

def test_resume_with_workers_yields_exactly_the_rest(uneven: str) -> None:
    def make() -> ShardStream:
        return ShardStream(uneven, batch_size=64, seed=11, columns=["idx"])

    full = idx_batches(StreamLoader(make(), num_workers=2))
    loader = StreamLoader(make(), num_workers=2)
    head = []
    for batch in loader:
        head.append(batch["idx"].tolist())
        if len(head) == 7:
            break
    state = loader.state_dict()
    assert state["batches_consumed"] == 7 and state["epoch"] == 0
    resumed = StreamLoader(make(), num_workers=2)
    resumed.load_state_dict(state)
    assert head + idx_batches(resumed) == full
    other_workers = StreamLoader(make(), num_workers=0)  # the resume point is worker-free
    other_workers.load_state_dict(state)
    assert idx_batches(other_workers) == full[7:]


def test_resume_in_process_from_the_streams_own_state(uneven: str) -> None:
    def make() -> ShardStream:
        return ShardStream(uneven, batch_size=50, seed=12, rank=1, world_size=2,
                           columns=["idx"])

    full = idx_batches(make())
    stream = make()
    iterator = iter(stream)
    head = [next(iterator)["idx"].tolist() for _ in range(5)]
    state = stream.state_dict()
    assert state["batches_consumed"] == 5
    restored = make()
    restored.load_state_dict(state)
    restored.set_epoch(0)  # a loop's set_epoch of the same epoch keeps the resume point
    assert head + idx_batches(restored) == full


def test_resume_across_the_epoch_boundary(uneven: str) -> None:
    def make() -> ShardStream:
        return ShardStream(uneven, batch_size=128, seed=13, columns=["idx"])

    reference = make()
    epoch0 = idx_batches(StreamLoader(reference))
    epoch1 = idx_batches(StreamLoader(reference))  # the loader moved on to epoch 1 itself
    assert epoch0 != epoch1 and sorted(flat(epoch1)) == list(range(ROWS))

    loader = StreamLoader(make())
    assert idx_batches(loader) == epoch0
    state = loader.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (1, 0)
    after_epoch = StreamLoader(make())
    after_epoch.load_state_dict(state)
    assert idx_batches(after_epoch) == epoch1

    loader = StreamLoader(make())
    list(loader)
    head = []
    for batch in loader:
        head.append(batch["idx"].tolist())
        if len(head) == 3:
            break
    mid = StreamLoader(make())
    mid.load_state_dict(loader.state_dict())
    assert head + idx_batches(mid) == epoch1
    assert mid.state_dict()["epoch"] == 2


def test_set_epoch_to_another_epoch_starts_it_from_the_top(uneven: str) -> None:
    stream = ShardStream(uneven, batch_size=128, seed=13, columns=["idx"])
    iterator = iter(stream)
    next(iterator)
    stream.set_epoch(3)
    assert stream.state_dict()["batches_consumed"] == 0
    assert len(idx_batches(stream)) == len(stream)


# --- formats and sources --------------------------------------------------------------------

@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("stream") / "typed"
    rows = 300
    table = pa.table({
        "idx": pa.array(range(rows), pa.int64()),
        "score": pa.array(np.linspace(0, 1, rows), pa.float32()),
        "flag": pa.array([i % 3 == 0 for i in range(rows)]),
        "small": pa.array([i % 7 for i in range(rows)], pa.int16()),
        "text": [f"t{i}" for i in range(rows)],
        "blob": [bytes([i % 256]) for i in range(rows)],
        "tokens": pa.array([list(range(i % 5)) for i in range(rows)], pa.list_(pa.int32())),
        "emb": pa.array([[float(i)] * 4 for i in range(rows)], pa.list_(pa.float32(), 4)),
    })
    write_table(str(folder), table, max_rows=70)
    return str(folder)


def test_torch_format(typed: str) -> None:
    batch = next(iter(ShardStream(typed, batch_size=32, seed=1)))
    assert batch["idx"].dtype == torch.int64 and batch["idx"].shape == (32,)
    assert batch["score"].dtype == torch.float32
    assert batch["flag"].dtype == torch.bool
    assert batch["small"].dtype == torch.int16
    assert isinstance(batch["text"], list) and all(isinstance(t, str) for t in batch["text"])
    assert batch["text"] == [f"t{i}" for i in batch["idx"].tolist()]
    assert batch["blob"] == [bytes([i % 256]) for i in batch["idx"].tolist()]
    assert [t.tolist() for t in batch["tokens"]] == [list(range(i % 5))
                                                     for i in batch["idx"].tolist()]
    assert batch["emb"].shape == (32, 4) and batch["emb"].dtype == torch.float32
    assert batch["emb"][:, 0].tolist() == [float(i) for i in batch["idx"].tolist()]
    assert batch["flag"].tolist() == [i % 3 == 0 for i in batch["idx"].tolist()]


def test_numpy_and_arrow_formats(typed: str) -> None:
    numpy_batch = next(iter(StreamLoader(ShardStream(typed, batch_size=16, format="numpy",
                                                     columns=["idx", "text"]))))
    assert set(numpy_batch) == {"idx", "text"}
    assert isinstance(numpy_batch["idx"], np.ndarray) and numpy_batch["idx"].dtype == np.int64
    assert numpy_batch["text"].dtype == object
    arrow = next(iter(StreamLoader(ShardStream(typed, batch_size=16, format="arrow"))))
    assert isinstance(arrow, pa.RecordBatch) and arrow.num_rows == 16
    assert arrow.schema.equals(Dataset.open(typed).schema)
    assert numpy_batch["idx"].tolist() == arrow.column("idx").to_pylist()


def test_worker_arrow_batches_pickle_only_their_rows(
        uneven: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's batch crosses a pipe: it must not drag its whole shard along."""
    as_worker(monkeypatch, 0, 2)
    stream = ShardStream(uneven, batch_size=50, seed=1, format="arrow")
    batch = next(iter(stream))
    assert len(pickle.dumps(batch)) < 2 * batch.nbytes + 4096


def test_collate_fn_gets_the_streams_format_with_or_without_workers(typed: str) -> None:
    def run(workers: int) -> list[tuple[str, int]]:
        stream = ShardStream(typed, batch_size=100, seed=1, columns=["idx", "text"])
        loader = StreamLoader(stream, num_workers=workers, collate_fn=_describe)
        return list(loader)

    assert run(0) == run(2) == [("dict", 100), ("dict", 100), ("dict", 100)]


def test_torch_refuses_integer_nulls(tmp_path: Path) -> None:
    write_table(str(tmp_path / "nulls"), pa.table({"n": pa.array([1, None, 3], pa.int64())}))
    with pytest.raises(ValueError, match=r"'n'.*nulls"):
        next(iter(ShardStream(str(tmp_path / "nulls"), batch_size=3)))
    arrow = next(iter(ShardStream(str(tmp_path / "nulls"), batch_size=3, format="arrow")))
    assert arrow.column("n").null_count == 1


def test_two_datasets_stream_as_one(uneven: str, second: str) -> None:
    ordered = flat(idx_batches(ShardStream([uneven, second], batch_size=256, shuffle=False)))
    assert ordered == list(range(ROWS + 700))
    mixed = idx_batches(ShardStream([uneven, second], batch_size=256, seed=9))
    assert sorted(flat(mixed)) == list(range(ROWS + 700))
    assert any(min(b) < ROWS <= max(b) for b in mixed)  # shards of both datasets interleave


def test_remote_dataset(memory_uri: str) -> None:
    write_table(memory_uri, make_rows(500), max_rows=120)
    batches = idx_batches(StreamLoader(ShardStream(memory_uri, batch_size=64, seed=1)))
    assert sorted(flat(batches)) == list(range(500))


def test_to_hf_dataset(uneven: str, second: str) -> None:
    hf = to_hf_dataset(uneven)
    assert hf.num_rows == ROWS and hf["idx"][:5] == [0, 1, 2, 3, 4]
    assert hf[ROWS - 1]["text"].startswith(f"doc {ROWS - 1} ")
    assert to_hf_dataset([uneven, second]).num_rows == ROWS + 700


def test_to_hf_iterable_splits_by_node(uneven: str) -> None:
    ranks = [[row["idx"] for row in to_hf_iterable(uneven, rank=r, world_size=2)]
             for r in (0, 1)]
    assert all(ranks) and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(ROWS))
    assert [row["idx"] for row in to_hf_iterable(uneven)] == list(range(ROWS))


# --- errors ---------------------------------------------------------------------------------

def test_clear_errors(uneven: str, typed: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no datasets"):
        ShardStream([], batch_size=8)
    with pytest.raises(ValueError, match=r"unknown column.*'nope'"):
        ShardStream(uneven, batch_size=8, columns=["idx", "nope"])
    with pytest.raises(ValueError, match="batch_size"):
        ShardStream(uneven, batch_size=0)
    with pytest.raises(ValueError, match="format"):
        ShardStream(uneven, batch_size=8, format="pandas")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        ShardStream(uneven, batch_size=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="persistent_workers"):
        StreamLoader(ShardStream(uneven, batch_size=8), num_workers=1, persistent_workers=True)
    with pytest.raises(ValueError, match="batch_size"):
        StreamLoader(ShardStream(uneven, batch_size=8), batch_size=4)
    write_table(str(tmp_path / "other"), pa.table({"idx": pa.array([1.0])}))
    with pytest.raises(SchemaMismatchError, match="'idx'"):
        ShardStream([uneven, str(tmp_path / "other")], batch_size=8, columns=["idx"])


def test_state_from_other_data_or_layout_is_refused(uneven: str, second: str) -> None:
    state = ShardStream(uneven, batch_size=64).state_dict()
    with pytest.raises(StreamStateError, match="other data"):
        ShardStream(second, batch_size=64).load_state_dict(state)
    with pytest.raises(StreamStateError, match="other data"):
        ShardStream([uneven, second], batch_size=64).load_state_dict(state)
    with pytest.raises(StreamStateError, match="batch_size=64"):
        ShardStream(uneven, batch_size=32).load_state_dict(state)
    with pytest.raises(StreamStateError, match="world_size"):
        ShardStream(uneven, batch_size=64, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(StreamStateError, match="seed"):
        ShardStream(uneven, batch_size=64, seed=1).load_state_dict(state)
    with pytest.raises(StreamStateError, match="missing"):
        ShardStream(uneven, batch_size=64).load_state_dict({"epoch": 0})
    with pytest.raises(StreamStateError, match="outside"):
        ShardStream(uneven, batch_size=64).load_state_dict({**state, "batches_consumed": 999})


@pytest.mark.slow
def test_spawned_workers_give_the_same_order(uneven: str) -> None:
    """Workers started by spawn get the stream pickled, not forked: same batches."""
    def run(**kwargs: object) -> list[list[int]]:
        stream = ShardStream(uneven, batch_size=128, seed=3, columns=["idx"])
        return idx_batches(StreamLoader(stream, **kwargs))

    assert run(num_workers=2, multiprocessing_context="spawn") == run()


@pytest.mark.parametrize("damage", ["flipped byte", "flipped schema byte", "deleted"])
def test_a_damaged_shard_is_a_typed_error_naming_it(uneven: str, tmp_path: Path,
                                                    damage: str) -> None:
    """Verified by default: no wrong row reaches the trainer, and no raw Arrow or OS error."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in Path(uneven).iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    victim = sorted(copy.glob("part-*.arrow"))[2]
    data = bytearray(victim.read_bytes())
    if damage == "deleted":
        victim.unlink()
    else:
        data[len(data) // 2 if damage == "flipped byte" else 20] ^= 0x01
        victim.write_bytes(bytes(data))
    error = CorruptShardError if damage == "deleted" else ChecksumMismatchError
    with pytest.raises(error, match=re.escape(victim.name)):
        list(ShardStream(str(copy), batch_size=64, shuffle=False, format="arrow"))
