"""near_dup: normalized keys, MinHash estimates of Jaccard, LSH groups and n-gram overlap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.scoring.near_dup import (
    EMPTY_SIGNATURE_VALUE,
    MinHasher,
    connected_min_labels,
    exact_key,
    jaccard,
    leader_verified_groups,
    lsh_params,
    near_duplicate_groups,
    near_duplicate_pairs,
    ngram_overlap,
    normalize_text,
    word_ngrams,
)

BASE = ("The river rose slowly through the night and by morning the farmers along the valley "
        "had moved their cattle to the higher fields while the children watched from the bridge "
        "as branches fences and a small rowing boat drifted past toward the sea")


def random_texts(count: int, words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocabulary, words)) for _ in range(count)]


def edit(text: str, changes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    tokens = text.split()
    for position in rng.choice(len(tokens), changes, replace=False):
        tokens[position] = f"edited{position}"
    return " ".join(tokens)


def true_jaccard(a: str, b: str, n: int = 5) -> float:
    grams_a, grams_b = word_ngrams(a, n), word_ngrams(b, n)
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def test_normalization_ignores_case_punctuation_spacing_and_unicode_form() -> None:
    assert normalize_text("  Hello,\tWORLD!!  ﬁne ") == "hello world fine"
    assert exact_key("Hello, world.") == exact_key("hello   WORLD")
    assert exact_key("hello world") != exact_key("hello word")


def test_signatures_are_uint64_one_row_per_text_and_batch_independent() -> None:
    hasher = MinHasher(num_perm=64, ngram=5, seed=3)
    texts = random_texts(5, 60, seed=0)
    together = hasher.signatures(texts)
    assert together.shape == (5, 64) and together.dtype == np.uint64
    alone = np.stack([hasher.signatures([t])[0] for t in texts])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, MinHasher(num_perm=64, seed=3).signatures(texts))
    assert not np.array_equal(together, MinHasher(num_perm=64, seed=4).signatures(texts))


def test_minhash_estimates_the_true_jaccard_of_word_ngrams() -> None:
    hasher = MinHasher(num_perm=256)
    errors = []
    for seed, base in enumerate(random_texts(30, 120, seed=1)):
        other = edit(base, changes=1 + seed, seed=seed)
        estimate = jaccard(*hasher.signatures([base, other]))
        errors.append(estimate - true_jaccard(base, other))
    assert abs(float(np.mean(errors))) < 0.02
    assert float(np.max(np.abs(errors))) < 0.15


def test_texts_shorter_than_the_ngram_and_empty_texts() -> None:
    hasher = MinHasher(ngram=5)
    signatures = hasher.signatures(["two words", "Two, WORDS.", "other two", "", "   "])
    assert jaccard(signatures[0], signatures[1]) == 1.0
    assert jaccard(signatures[0], signatures[2]) < 0.1
    assert (signatures[3] == EMPTY_SIGNATURE_VALUE).all()
    assert jaccard(signatures[3], signatures[4]) == 1.0
    assert jaccard(signatures[0], signatures[3]) == 0.0


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_bands_catch_pairs_at_the_threshold_and_few_far_below(threshold: float) -> None:
    """Candidates are verified, so the bands lean towards recall: a pair at the threshold
    collides in some band nine times in ten, a pair 0.3 below it less than half the time."""
    bands, rows = lsh_params(threshold, 128)
    assert bands * rows <= 128

    def collide(s: float) -> float:
        return 1 - (1 - s**rows) ** bands

    assert collide(threshold - 0.3) < 0.5 and collide(threshold) >= 0.9


def test_groups_join_near_copies_and_separate_distinct_texts() -> None:
    originals = random_texts(40, 100, seed=2)
    copies = [edit(t, changes=1, seed=i) for i, t in enumerate(originals[:10])]
    far = [edit(t, changes=60, seed=i) for i, t in enumerate(originals[10:20])]
    texts = originals + copies + far
    groups = near_duplicate_groups(MinHasher().signatures(texts), threshold=0.7)
    for i in range(10):
        assert groups[40 + i] == groups[i] == i
    assert len(set(groups[:40].tolist())) == 40
    assert all(groups[50 + i] == 50 + i for i in range(10))


def test_group_partition_does_not_depend_on_row_order() -> None:
    originals = random_texts(30, 80, seed=5)
    texts = originals + [edit(t, changes=1, seed=i) for i, t in enumerate(originals[:15])]
    signatures = MinHasher().signatures(texts)
    groups = near_duplicate_groups(signatures, 0.8)
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = near_duplicate_groups(signatures[order], 0.8)
    restored = np.empty_like(shuffled)
    restored[order] = order[shuffled]

    def partition(labels: np.ndarray) -> set[frozenset[int]]:
        return {frozenset(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels)}

    assert partition(groups) == partition(restored)


def test_a_corpus_of_one_text_repeated_is_one_group() -> None:
    signatures = np.repeat(MinHasher().signatures([BASE]), 500, axis=0)
    groups = near_duplicate_groups(signatures, 0.8)
    assert (groups == 0).all()


def test_union_find_labels_are_component_minima() -> None:
    pairs = np.array([[5, 3], [3, 9], [1, 2], [9, 7]])
    labels = connected_min_labels(10, pairs)
    assert labels.tolist() == [0, 1, 1, 3, 4, 3, 6, 3, 8, 3]


def test_ngram_overlap_is_containment() -> None:
    question = "how many apples does tom have left after eating two"
    document = f"Intro text. {question.upper()}? More words follow here."
    assert ngram_overlap(question, document, 5) == 1.0
    assert ngram_overlap(document, question, 5) < 1.0
    assert ngram_overlap("", document, 5) == 0.0
    assert ngram_overlap(question, "nothing in common at all here", 5) == 0.0


def _chain(*edits: slice) -> np.ndarray:
    """128-slot signatures, each row the one before with the slots of its slice changed."""
    rows = [np.arange(128, dtype=np.uint64)]
    for slots in edits:
        row = rows[-1].copy()
        row[slots] += 1000
        rows.append(row)
    return np.stack(rows)


def test_a_chain_whose_ends_are_unalike_keeps_its_far_end() -> None:
    signatures = _chain(slice(0, 18), slice(110, None))
    first, middle, far = signatures
    assert jaccard(first, middle) == jaccard(middle, far) == 110 / 128
    assert jaccard(first, far) == 92 / 128
    pairs = near_duplicate_pairs(signatures, 0.8)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 2)]
    assert near_duplicate_groups(signatures, 0.8).tolist() == [0, 0, 0]
    assert leader_verified_groups(signatures, pairs, 0.8).tolist() == [0, 0, 2]


def test_members_unlike_their_leader_are_grouped_again_among_themselves() -> None:
    signatures = _chain(slice(0, 20), slice(110, None), slice(20, 30))
    leader, _, second, third = signatures
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    assert all(jaccard(signatures[a], signatures[b]) >= 0.8 for a, b in pairs)
    assert jaccard(leader, second) < 0.8 and jaccard(leader, third) < 0.8
    assert leader_verified_groups(signatures, pairs, 0.8).tolist() == [0, 0, 2, 2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=16, max_size=16), min_size=1,
                max_size=30),
       st.sampled_from([0.5, 0.6, 0.75]))
def test_leader_verified_groups_remove_only_rows_like_their_survivor(
        rows: list[list[int]], threshold: float) -> None:
    signatures = np.array(rows, np.uint64)
    n = len(signatures)
    pairs = np.array([(a, b) for a in range(n) for b in range(a + 1, n)
                      if np.mean(signatures[a] == signatures[b]) >= threshold],
                     np.int64).reshape(-1, 2)
    labels = leader_verified_groups(signatures, pairs, threshold)
    kept = labels == np.arange(n)
    assert (labels <= np.arange(n)).all() and kept[labels].all()
    for row in np.flatnonzero(~kept):
        assert np.mean(signatures[row] == signatures[labels[row]]) >= threshold
    assert not any(kept[a] and kept[b] for a, b in pairs.tolist())
