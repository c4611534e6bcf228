"""Prototype pruning and SemDeDup as pure functions over numpy arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gristmill.config import RuntimeConfig
from gristmill.scoring.duplicates import (
    Duplicate,
    exact_duplicates,
    follow_survivors,
    minhash_duplicates,
    semantic_duplicates,
)
from gristmill.scoring.pruning import (
    assign,
    effective_clusters,
    keep_hard,
    resolve_keep_fraction,
    select_prototypes,
    tiebreak_keys,
    train_spherical_kmeans,
)
from gristmill.scoring.semdedup import semdedup
from gristmill.stages.dedup import DedupConfig, read_decisions, semantic_pass
from gristmill.storage.fs import resolve
from gristmill.storage.reader import Dataset
from gristmill.storage.vectors import vector_array, vectors_of
from gristmill.storage.writer import write_table


def blobs(centers: int, per: int, spread: float, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim))
    return np.concatenate([m + spread * rng.normal(size=(per, dim)) for m in means])


def naive_semdedup(vectors: np.ndarray, distances: np.ndarray, eps: float) -> np.ndarray:
    """The definition, row by row: farthest first, drop a row close to any kept row."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    kept: list[int] = []
    duplicate_of = np.full(len(vectors), -1)
    for row in np.lexsort((np.arange(len(vectors), dtype=np.uint64), -distances)):
        if kept and (sims := unit[kept] @ unit[row]).max() > 1 - eps:
            duplicate_of[row] = kept[int(sims.argmax())]
        else:
            kept.append(int(row))
    return duplicate_of


def test_the_row_nearest_a_centroid_scores_easiest_in_its_cluster() -> None:
    vectors = blobs(4, 50, 0.3)
    centroids = train_spherical_kmeans(vectors, 4, seed=1)
    labels, distances = assign(vectors, centroids)
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        unit = vectors[members] / np.linalg.norm(vectors[members], axis=1, keepdims=True)
        nearest = members[np.argmax(unit @ centroids[cluster])]
        assert members[np.argmin(distances[members])] == nearest
    planted = np.concatenate([vectors, centroids[:1] * 5.0])
    labels, distances = assign(planted, centroids)
    assert distances[-1] == pytest.approx(0.0, abs=1e-5)
    assert distances[-1] == distances.min()


def test_keep_hard_and_keep_easy_select_the_expected_halves() -> None:
    scores = np.random.default_rng(3).permutation(100).astype(np.float64)
    hard = select_prototypes(scores, 0.5, hard=True)
    easy = select_prototypes(scores, 0.5, hard=False)
    assert set(scores[hard]) == set(range(50, 100))
    assert set(scores[easy]) == set(range(50))
    assert not (hard & easy).any()


def test_balance_keeps_the_same_share_of_every_cluster() -> None:
    labels = np.repeat([0, 1], [80, 20])
    scores = np.concatenate([np.linspace(0.5, 1.0, 80), np.linspace(0.0, 0.1, 20)])
    global_cut = select_prototypes(scores, 0.5, hard=True, labels=labels)
    balanced = select_prototypes(scores, 0.5, hard=True, labels=labels, balance=True)
    assert global_cut[labels == 1].sum() == 0
    assert balanced[labels == 0].sum() == 40 and balanced[labels == 1].sum() == 10
    assert (scores[balanced & (labels == 1)] >= 0.05).all()


def test_auto_keeps_hard_examples_when_data_is_abundant_and_easy_when_scarce() -> None:
    assert keep_hard("auto", pool_rows=10_000, budget_rows=1_000) is True
    assert keep_hard("auto", pool_rows=500, budget_rows=1_000) is False
    assert keep_hard("easy", pool_rows=10_000, budget_rows=1) is False
    with pytest.raises(ValueError, match="budget_rows"):
        keep_hard("auto", pool_rows=10, budget_rows=None)
    fractions = [resolve_keep_fraction(None, pool, 1_000, 0.2) for pool in (500, 2_000, 50_000)]
    assert fractions == [1.0, 0.5, 0.2]


def test_ties_are_broken_by_id_not_by_row_order() -> None:
    ids = [f"row{i}" for i in range(20)]
    scores = np.zeros(20)
    keep = select_prototypes(scores, 0.25, hard=True, tiebreak=tiebreak_keys(ids))
    order = np.random.default_rng(0).permutation(20)
    shuffled = select_prototypes(scores[order], 0.25, hard=True,
                                 tiebreak=tiebreak_keys([ids[i] for i in order]))
    assert {ids[i] for i in np.flatnonzero(keep)} == {ids[order[i]] for i in
                                                      np.flatnonzero(shuffled)}


def test_fewer_rows_than_clusters_cuts_k_and_an_empty_pool_is_an_error() -> None:
    vectors = blobs(2, 3, 0.1)
    centroids = train_spherical_kmeans(vectors, 50)
    assert centroids.shape == (6, 16)
    assert effective_clusters(50, 6) == 6
    with pytest.raises(ValueError, match="no vectors to cluster"):
        train_spherical_kmeans(np.zeros((0, 16), np.float32), 4)


def test_an_identical_corpus_collapses_to_one_row() -> None:
    vectors = np.tile(blobs(1, 1, 0.0), (30, 1))
    centroids = train_spherical_kmeans(vectors, 5)
    labels, distances = assign(vectors, centroids)
    assert len(set(labels.tolist())) == 1
    result = semdedup(vectors, distances, eps=0.01)
    assert result.kept.sum() == 1
    assert (select_prototypes(distances, 0.5, hard=True).sum()) == 15


@pytest.mark.parametrize("block_rows", [3, 16, 4096])
def test_semdedup_blocks_give_the_definitions_answer(block_rows: int) -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(40, 12))
    copies = base[rng.integers(0, 40, 80)] + 0.02 * rng.normal(size=(80, 12))
    vectors = np.concatenate([base, copies]).astype(np.float32)
    distances = rng.random(len(vectors))
    result = semdedup(vectors, distances, eps=0.01, block_rows=block_rows)
    np.testing.assert_array_equal(result.duplicate_of, naive_semdedup(vectors, distances, 0.01))
    assert 40 <= result.kept.sum() < 120


def test_semdedup_keeps_the_farthest_copy_by_default_and_the_nearest_on_request() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.001], [1.0, -0.001], [0.0, 1.0]], np.float32)
    distances = np.array([0.2, 0.5, 0.1, 0.3])
    farthest = semdedup(vectors, distances, eps=0.01)
    nearest = semdedup(vectors, distances, eps=0.01, survivor="nearest")
    assert farthest.kept.tolist() == [False, True, False, True]
    assert farthest.duplicate_of.tolist() == [1, -1, 1, -1]
    assert nearest.kept.tolist() == [False, False, True, True]
    assert semdedup(vectors, distances, eps=0.0).kept.all()


def test_exact_and_minhash_passes_keep_the_smallest_id_in_any_order() -> None:
    found = exact_duplicates(["b", "a", "c"], ["k1", "k1", "k2"])
    assert found == {"b": Duplicate("exact_duplicate", "a", 1.0)}
    signatures = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [9, 9, 9, 9]], np.uint64)
    forward = minhash_duplicates(["z", "y", "x"], signatures, 0.5)
    backward = minhash_duplicates(["x", "y", "z"], signatures[::-1], 0.5)
    assert forward == backward == {"z": Duplicate("near_duplicate", "y", 1.0)}


def test_duplicate_chains_point_at_the_row_that_was_kept() -> None:
    removed = {"c": Duplicate("near_duplicate", "b", 0.9),
               "b": Duplicate("semantic_duplicate", "a", 0.97)}
    resolved = follow_survivors(removed)
    assert resolved["c"].duplicate_of == "a" and resolved["c"].matched == "b"
    assert resolved["b"].duplicate_of == "a" and resolved["b"].matched == ""


def scored_dataset(uri: str, order: np.ndarray, shard_rows: int) -> Dataset:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(30, 8))
    vectors = np.concatenate([base, base[:15] + 0.01 * rng.normal(size=(15, 8))])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"r{i:03d}" for i in range(len(vectors))]
    table = pa.table({"id": ids, "cluster": pa.array(np.arange(len(ids)) % 3, pa.int32()),
                      "centroid_distance": pa.array(rng.random(len(ids)), pa.float32()),
                      "embedding": vector_array(vectors)}).take(pa.array(order))
    write_table(uri, table, max_rows=shard_rows)
    return Dataset.open(uri)


@pytest.mark.usefixtures("ray_local")
def test_semantic_decisions_on_workers_do_not_depend_on_layout(tmp_path) -> None:
    """Shards and partitions change where clusters are deduplicated, never the result,
    which is SemDeDup's run on each whole cluster."""
    identity = np.arange(45)
    shuffled = np.random.default_rng(1).permutation(45)
    runs = []
    for name, order, shard_rows, partitions in (("a", identity, 45, 1), ("b", shuffled, 4, 3)):
        config = DedupConfig(eps=0.01, block_rows=5, partitions=partitions)
        dataset = scored_dataset(str(tmp_path / name), order, shard_rows)
        found = semantic_pass(dataset, None, config, id_column="id", vector_column="embedding",
                              work=resolve(str(tmp_path / f"work-{name}")),
                              runtime=RuntimeConfig(progress=False))
        runs.append(read_decisions(found, len(dataset.shards)))
    table = Dataset.open(str(tmp_path / "a")).to_table()
    expected = {}
    for cluster in range(3):
        rows = table.filter(pc.equal(table.column("cluster"), cluster))
        expected.update(semantic_duplicates(
            rows.column("id").to_pylist(), vectors_of(rows.column("embedding")),
            rows.column("centroid_distance").to_numpy(), 0.01, block_rows=5))
    assert runs[0] == runs[1] == expected
    assert len(expected) > 0
