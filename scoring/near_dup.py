"""Exact and near-duplicate text detection: normalized-text keys and MinHash with LSH.

Exact duplicates share the hash of their normalized text. Near duplicates share many word
n-grams: MinHash estimates the Jaccard similarity of two texts' n-gram sets from `num_perm`
seeded minima over the n-grams' hashes, and LSH banding turns "similar" into "collide in at
least one band" so only colliding pairs are ever compared. Candidates are verified by their
estimated Jaccard, and verified pairs are joined into groups. The n-gram hashes are numpy
here; the `num_perm` minima are rensa's (Rust, one call for a whole batch: about 150x the
numpy universal hashes this module used before, for the same estimate). No I/O: the same
texts give the same signatures and groups in any process.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import xxhash

EMPTY_SIGNATURE_VALUE = np.uint64(np.iinfo(np.uint64).max)
"""Every slot of an empty text's signature: empty texts match only each other."""

_WORD = re.compile(r"\w+", re.UNICODE)
_MASK_32 = np.uint64(0xFFFFFFFF)
_NGRAM_BASE = np.uint64(0x100000001B3)
_PAIR_CHUNK = 1 << 15
PAIR_BUCKET_LIMIT = 64
"""Buckets up to this size verify every pair; larger ones compare members to leaders."""


def normalize_text(text: str) -> str:
    """Case, Unicode form, punctuation and spacing removed: what a copy-paste changes."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(folded))


def exact_key(text: str) -> str:
    """128-bit hex key of the normalized text: equal keys are exact duplicates."""
    return xxhash.xxh3_128_hexdigest(normalize_text(text).encode("utf-8"))


def words(text: str) -> list[str]:
    return normalize_text(text).split()


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The text's word n-grams; a text shorter than n words is one n-gram of all its words."""
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlap(a: str, b: str, n: int) -> float:
    """Share of a's word n-grams that also occur in b (containment of a in b), in [0, 1].

    Asymmetric on purpose: for decontamination, a short test question inside a long
    document scores 1.0 although their Jaccard similarity is small.
    """
    grams_a = word_ngrams(a, n)
    if not grams_a:
        return 0.0
    return len(grams_a & word_ngrams(b, n)) / len(grams_a)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads the polynomial n-gram hash over all 64 bits."""
    with np.errstate(over="ignore"):
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


class MinHasher:
    """Word n-gram MinHash signatures: (n, num_perm) uint64, one row per text."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        if num_perm < 1 or ngram < 1:
            raise ValueError(f"num_perm and ngram must be >= 1, got {num_perm}, {ngram}")
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed

    def shingle_hashes(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every text's word n-grams (a text shorter than `ngram` words is
        one n-gram), all texts in one array, and the number of shingles per text."""
        tokens = [words(t) for t in texts]
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        vocabulary: dict[str, int] = {}
        flat = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for ws in tokens
                            for w in ws), np.int64, int(lengths.sum()))
        word_hash = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in vocabulary),
                                np.uint64, len(vocabulary))
        ids = word_hash[flat]
        n = self.ngram
        counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
        ends = np.cumsum(lengths)
        starts = ends - lengths
        window_starts = np.repeat(starts, counts) + _ranks(counts)
        window_ends = np.minimum(window_starts + n, np.repeat(ends, counts))
        hashes = np.zeros(len(window_starts), np.uint64)
        padded = np.concatenate([ids, np.zeros(n, np.uint64)])
        with np.errstate(over="ignore"):
            for k in range(n):
                inside = window_starts + k < window_ends
                hashes = np.where(inside, hashes * _NGRAM_BASE + padded[window_starts + k],
                                  hashes)
        mixed = _mix64(hashes)
        return (mixed ^ (mixed >> np.uint64(32))) & _MASK_32, counts

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """Every text's shingle hashes, then rensa's `num_perm` seeded minima per text in one
        call; an empty text's row is all EMPTY_SIGNATURE_VALUE."""
        from rensa import RMinHash

        shingles, counts = self.shingle_hashes(texts)
        offsets = np.zeros(len(counts) + 1, np.uint64)
        np.cumsum(counts, out=offsets[1:])
        matrix = RMinHash.digest_matrix_from_flat_token_hashes(shingles, offsets, self.num_perm,
                                                               self.seed)
        out = np.array(matrix.to_rows(), np.uint64).reshape(len(counts), self.num_perm)
        out[counts == 0] = EMPTY_SIGNATURE_VALUE
        return out


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for every count c, concatenated."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - offsets


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float | np.ndarray:
    """Estimated Jaccard: the share of equal signature slots (broadcasts over rows)."""
    equal = np.asarray(sig_a) == np.asarray(sig_b)
    if equal.ndim == 1:
        return float(equal.mean())
    return equal.mean(axis=-1)


FALSE_POSITIVE_WEIGHT = 0.05
"""How much a false candidate counts against a missed one when bands are chosen. Every
candidate pair is verified by its estimated Jaccard, so a false candidate costs one
comparison while a missed pair loses a duplicate: at 0.8 and 128 permutations this picks
16 bands of 8 rows (a pair at Jaccard 0.8 collides with probability 0.95; with equal
weights, 9 bands of 14 rows, 0.33)."""


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm that minimise the weighted false-positive
    plus false-negative area of the banding S-curve 1 - (1 - s**rows)**bands around the
    threshold (FALSE_POSITIVE_WEIGHT)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    grid = np.linspace(0.0, 1.0, 2001)
    below, above = grid <= threshold, grid >= threshold
    best, best_cost = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        collide = 1.0 - (1.0 - grid**rows) ** bands
        cost = (FALSE_POSITIVE_WEIGHT * np.trapezoid(collide[below], grid[below])
                + (1 - FALSE_POSITIVE_WEIGHT) * np.trapezoid(1.0 - collide[above],
                                                               grid[above]))
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def band_keys(band: np.ndarray) -> np.ndarray:
    keys = np.zeros(len(band), np.uint64)
    with np.errstate(over="ignore"):
        for column in band.T:
            keys = _mix64(keys * _NGRAM_BASE + column)
    return keys


def _bucket_runs(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices of every bucket holding two or more rows, ascending inside each."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    runs = np.split(order, cuts)
    return [np.sort(run) for run in runs if len(run) > 1]


def bucket_pairs(runs: list[np.ndarray]) -> np.ndarray:
    """Every pair inside each bucket, grouped by bucket size so each size is one numpy op."""
    by_size: dict[int, list[np.ndarray]] = {}
    for run in runs:
        by_size.setdefault(len(run), []).append(run)
    pairs = [np.zeros((0, 2), np.int64)]
    for size, same in by_size.items():
        members = np.stack(same)
        left, right = np.triu_indices(size, 1)
        pairs.append(np.stack([members[:, left].ravel(), members[:, right].ravel()], axis=1))
    return np.concatenate(pairs)


def leader_pairs(run: np.ndarray, signatures: np.ndarray, threshold: float) -> np.ndarray:
    """Verified pairs of a large bucket: each member joins every earlier leader it matches,
    or becomes a leader. Linear in the bucket for a corpus of copies of one text."""
    leaders: list[int] = []
    pairs: list[tuple[int, int]] = []
    for row in run:
        if leaders:
            similar = jaccard(signatures[leaders], signatures[row]) >= threshold
            matched = [leaders[i] for i in np.flatnonzero(similar)]
            pairs.extend((leader, int(row)) for leader in matched)
            if matched:
                continue
        leaders.append(int(row))
    return np.array(pairs, np.int64).reshape(-1, 2)


def connected_min_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over the pairs, vectorized: roots are hooked under the smaller root and
    paths fully compressed until every pair agrees, so each row's label is the smallest row
    index of its connected component."""
    labels = np.arange(n, dtype=np.int64)
    left, right = pairs[:, 0], pairs[:, 1]
    while True:
        while not np.array_equal(labels, labels[labels]):
            labels = labels[labels]
        root_left, root_right = labels[left], labels[right]
        if np.array_equal(root_left, root_right):
            return labels
        low = np.minimum(root_left, root_right)
        np.minimum.at(labels, root_left, low)
        np.minimum.at(labels, root_right, low)


def near_duplicate_pairs(signatures: np.ndarray, threshold: float,
                         bands: int | None = None, rows: int | None = None) -> np.ndarray:
    """Verified near-duplicate pairs (row, row).

    Rows colliding in any LSH band are candidates; a candidate pair is kept when its
    estimated Jaccard is >= threshold. Buckets of up to 64 rows verify every pair, so the
    pairs do not depend on row order; a larger bucket (many copies of one text) compares each
    row, in row order, with the bucket's leaders so it stays linear.
    """
    signatures = np.asarray(signatures, np.uint64)
    num_perm = signatures.shape[1]
    if bands is None or rows is None:
        bands, rows = lsh_params(threshold, num_perm)
    if bands * rows > num_perm:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {num_perm}")
    small: list[np.ndarray] = []
    verified: list[np.ndarray] = []
    for band in range(bands):
        keys = band_keys(signatures[:, band * rows:(band + 1) * rows])
        for run in _bucket_runs(keys):
            if len(run) <= PAIR_BUCKET_LIMIT:
                small.append(run)
            else:
                verified.append(leader_pairs(run, signatures, threshold))
    candidates = np.unique(bucket_pairs(small), axis=0)
    keep = np.zeros(len(candidates), bool)
    for lo in range(0, len(candidates), _PAIR_CHUNK):
        chunk = candidates[lo:lo + _PAIR_CHUNK]
        keep[lo:lo + len(chunk)] = jaccard(signatures[chunk[:, 0]],
                                           signatures[chunk[:, 1]]) >= threshold
    verified.append(candidates[keep])
    return np.concatenate(verified)


def near_duplicate_groups(signatures: np.ndarray, threshold: float,
                          bands: int | None = None, rows: int | None = None) -> np.ndarray:
    """Group id per row: the smallest row index of its connected component of verified
    pairs (joined transitively, so a chain's ends may be far apart)."""
    pairs = near_duplicate_pairs(signatures, threshold, bands, rows)
    return connected_min_labels(len(signatures), pairs)


def leader_verified_groups(signatures: np.ndarray, pairs: np.ndarray,
                           threshold: float) -> np.ndarray:
    """Group id per row, where a row joins its component's leader (smallest index) only if
    its own estimated Jaccard to that leader reaches the threshold.

    A chain of overlapping texts is one connected component whose ends can be unalike;
    grouping transitively would remove them as copies of each other. Here each round takes
    the components of the pairs among undecided rows: the leaders stay, the members that
    match their leader join it, and the rest are grouped again among themselves (only pairs
    with both ends undecided) until no pair is left. Every round settles each component's
    leader, so it ends."""
    n = len(signatures)
    labels = np.arange(n, dtype=np.int64)
    while len(pairs):
        components = connected_min_labels(n, pairs)
        members = np.flatnonzero(components != np.arange(n))
        joined = jaccard(signatures[members], signatures[components[members]]) >= threshold
        labels[members[joined]] = components[members[joined]]
        undecided = np.zeros(n, bool)
        undecided[members[~joined]] = True
        pairs = pairs[undecided[pairs[:, 0]] & undecided[pairs[:, 1]]]
    return labels
