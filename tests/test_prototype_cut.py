"""The prototype cut on the workers keeps exactly the rows select_prototypes keeps in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gristmill.config import RuntimeConfig
from gristmill.scoring.pruning import select_prototypes, tiebreak_keys
from gristmill.stages import prototype_cut as cut_module
from gristmill.stages.lsh_dedup import DECISION_SCHEMA, shard_refs
from gristmill.stages.prototype_cut import order_bits, prototype_cut
from gristmill.stages.prune import PrototypeConfig
from gristmill.stages.routed_files import RoutedFiles
from gristmill.storage.fs import resolve
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = pytest.mark.usefixtures("ray_local")
RUNTIME = RuntimeConfig(progress=False)
ROWS = 700
PARTITIONS = 3


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, RoutedFiles, pa.Table]:
    """700 scored rows over 8 shards and 5 clusters, scores rounded so many tie (and one
    -0.0), every 9th row removed by dedup (decisions routed to its shard)."""
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(ROWS), 2)
    scores[5] = -0.0
    table = pa.table({"id": [f"row-{i:04d}" for i in range(ROWS)],
                      "cluster": pa.array(rng.integers(0, 5, ROWS), pa.int32()),
                      "centroid_distance": pa.array(scores, pa.float32())})
    root = tmp_path_factory.mktemp("cut")
    write_table(str(root / "scored"), table, max_rows=90)
    dataset = Dataset.open(str(root / "scored"))
    removed = RoutedFiles(resolve(str(root / "removed")), DECISION_SCHEMA)
    for shard in shard_refs(dataset, RUNTIME):
        ids = shard.read(["id"]).column("id").to_pylist()
        gone = [i for i in ids if int(i[4:]) % 9 == 0]
        removed.write(pa.table({"id": gone, "reason": ["exact_duplicate"] * len(gone),
                                "duplicate_of": ["row-0001"] * len(gone),
                                "score": [1.0] * len(gone),
                                "matched": pa.nulls(len(gone), pa.string())}),
                      np.full(len(gone), shard.index, np.int64), "test")
    alive = table.filter(pa.array([i % 9 != 0 for i in range(ROWS)]))
    return dataset, removed, alive


@pytest.mark.parametrize(("strategy", "fraction", "balance", "fetch"), [
    ("hard", 0.37, False, 4096), ("easy", 0.37, False, 4096), ("hard", 0.61, True, 4096),
    ("easy", 0.5, True, 0), ("hard", 0.37, False, 20), ("hard", 0.0, True, 4096),
    ("easy", 1.0, False, 4096),
])
def test_the_cut_on_workers_keeps_what_the_in_memory_cut_keeps(
        pool: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str,
        fraction: float, balance: bool, fetch: int) -> None:
    """fetch 0 walks every digit of the 128-bit keys; 20 settles groups part way."""
    dataset, removed, alive = pool
    monkeypatch.setattr(cut_module, "FETCH", fetch)
    config = PrototypeConfig(strategy=strategy, keep_fraction=fraction, balance=balance)
    found = prototype_cut(shard_refs(dataset, RUNTIME), removed, config, id_column="id",
                          partitions=PARTITIONS, work=resolve(str(tmp_path / "work")),
                          runtime=RUNTIME)
    pruned = pa.concat_tables([found.pruned.read(p) for p in range(PARTITIONS)])

    ids = alive.column("id").to_pylist()
    scores = alive.column("centroid_distance").to_numpy().astype(np.float64)
    keep = select_prototypes(scores, fraction, hard=strategy == "hard",
                             labels=alive.column("cluster").to_numpy(), balance=balance,
                             tiebreak=tiebreak_keys(ids))
    assert sorted(pruned.column("id").to_pylist()) == sorted(
        i for i, k in zip(ids, keep, strict=True) if not k)
    reason = "pruned_easy" if strategy == "hard" else "pruned_hard"
    assert set(pruned.column("reason").to_pylist()) <= {reason}
    summary = found.summary
    edges = np.histogram_bin_edges(scores, bins=40)
    assert summary["kept_counts"] == np.histogram(scores[keep], edges)[0].tolist()
    assert summary["pruned_counts"] == np.histogram(scores[~keep], edges)[0].tolist()
    every = dataset.to_table(columns=["cluster"]).column("cluster").to_numpy()
    assert summary["cluster_sizes"] == np.bincount(every).tolist()
    rounds = len(list((tmp_path / "work" / "_phases").glob("round-*.json")))
    searched = 0.0 < fraction < 1.0
    assert rounds == {0: 16 * searched, 20: rounds, 4096: 1 * searched}[fetch]
    assert fetch != 20 or 1 < rounds < 16


def test_order_bits_sort_as_the_scores_do() -> None:
    scores = np.array([3.5, -2.0, -0.0, 0.0, 1e-300, -1e300, 2.0, -2.5, np.inf, -np.inf])
    by_bits = np.argsort(order_bits(scores), kind="stable")
    assert scores[by_bits].tolist() == sorted(scores.tolist())
    assert order_bits(np.array([-0.0]))[0] == order_bits(np.array([0.0]))[0]
