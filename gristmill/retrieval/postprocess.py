"""After retrieval (MassiveDS): subsample, drop short passages, decontaminate, dedup, rerank.

Candidates are walked best first and each filter only looks at what survived the ones
before, so the work stops once k passages are kept. Near duplicates are grouped by the
same MinHash dedup prune and question dedup use (scoring/duplicates.py), ranked by result
order, so each group's best-scoring passage is the one returned; the groups are formed over
the filtered candidates walked so far, regrouped as the run grows by half (a few regroupings
per query, however many candidates are duplicates) until it holds enough survivors.
Subsampling is a coin flip per passage keyed by (seed, passage id): the same coin a
datastore subsampled before indexing would use, so the top-k matches that smaller datastore
whenever at least k of the K candidates survive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import xxhash
from pydantic import BaseModel, Field

from gristmill.config import FrozenModel
from gristmill.scoring.duplicates import minhash_duplicates
from gristmill.scoring.near_dup import MinHasher, ngram_overlap

COIN_SCALE = float(2 ** 64)


class SearchOptions(FrozenModel):
    """Per-request knobs; defaults follow MassiveDS (K=1000, k=3, 13-gram MinHash at 0.8)."""

    k: int = Field(default=3, ge=1, description="Passages returned per query")
    candidates: int = Field(default=1000, ge=1, description="K: top-K taken from every shard")
    nprobe: int | None = Field(default=None, ge=1, le=65_536,
                               description="IVF lists; None = datastore's")
    min_words: int = Field(default=13, ge=0, description="Drop passages with fewer words")
    dedup: bool = True
    dedup_threshold: float = Field(default=0.8, gt=0, lt=1,
                                   description="MinHash Jaccard at which passages group")
    minhash_ngram: int = Field(default=13, ge=1, le=64)
    minhash_perms: int = Field(default=128, ge=1, le=1024)
    decontaminate_query: bool = Field(
        default=True, description="Treat the query itself as eval text to decontaminate against")
    decontam_ngram: int = Field(default=13, ge=1, le=64)
    decontam_threshold: float = Field(
        default=0.8, ge=0, le=1,
        description="Drop a passage when this share of the eval text's n-grams is in it, "
                    "or of its n-grams is in the eval text")
    subsample: float | None = Field(
        default=None, gt=0, le=1, description="Keep each passage with this probability")
    seed: int = 0
    rerank: bool = Field(
        default=False, description="Re-score survivors by their full inner product: stored "
                                   "vectors when the datastore keeps them, else re-embedded text")
    rerank_depth: int = Field(default=100, ge=1, le=1000,
                              description="Survivors re-scored by rerank")


class Hit(BaseModel):
    """One retrieved passage."""

    id: str
    score: float
    shard_id: int
    row: int
    text: str
    parent_id: str | None = None
    word_count: int


class Passage(BaseModel):
    """What a filter sees of a candidate (its text fetched from the shard's passages)."""

    id: str
    text: str
    parent_id: str | None
    word_count: int


def coin(seed: int, passage_id: str, rate: float) -> bool:
    """Keep this passage in a datastore subsampled at `rate`? Same answer before or after."""
    return xxhash.xxh3_64_intdigest(f"{seed}:{passage_id}".encode()) / COIN_SCALE < rate


def contaminated(text: str, evals: Sequence[str], n: int, threshold: float) -> bool:
    return any(ngram_overlap(e, text, n) >= threshold or ngram_overlap(text, e, n) >= threshold
               for e in evals)


class NearDupGroups:
    """MinHash near-duplicate groups over the passages admitted so far, in result order:
    each group's first (best-scoring) passage survives."""

    def __init__(self, options: SearchOptions) -> None:
        self.hasher = MinHasher(num_perm=options.minhash_perms, ngram=options.minhash_ngram)
        self.threshold = options.dedup_threshold
        self.signatures: list[np.ndarray] = []

    def add(self, text: str) -> None:
        self.signatures.append(self.hasher.signatures([text])[0])

    def survivors(self, hits: list[Hit]) -> list[Hit]:
        ids = [str(position) for position in range(len(hits))]
        removed = minhash_duplicates(ids, np.stack(self.signatures), self.threshold,
                                     rank=range(len(hits)))
        return [hit for key, hit in zip(ids, hits, strict=True) if key not in removed]


Fetch = Callable[[int, int], Passage]
Rescore = Callable[[list[Hit]], np.ndarray]


def select(scores: np.ndarray, shards: np.ndarray, rows: np.ndarray, fetch: Fetch,
           options: SearchOptions, evals: Sequence[str],
           rescore: Rescore | None = None) -> list[Hit]:
    """One query's candidates (best first) -> its top-k hits after every filter."""
    want = max(options.rerank_depth if rescore is not None else options.k, options.k)
    groups = NearDupGroups(options) if options.dedup else None
    passed: list[Hit] = []
    kept: list[Hit] = []
    check_at = want
    for score, shard, row in zip(scores, shards, rows, strict=True):
        if len(kept) >= want:
            break
        passage = fetch(int(shard), int(row))
        if options.subsample is not None and not coin(options.seed, passage.id,
                                                      options.subsample):
            continue
        if passage.word_count < options.min_words:
            continue
        if evals and contaminated(passage.text, evals, options.decontam_ngram,
                                  options.decontam_threshold):
            continue
        passed.append(Hit(score=float(score), shard_id=int(shard), row=int(row),
                          **passage.model_dump()))
        if groups is not None:
            groups.add(passage.text)
        if len(passed) >= check_at:
            kept = groups.survivors(passed) if groups is not None else passed
            check_at = len(passed) + max(want - len(kept), len(passed) // 2)
    if len(kept) < want:
        kept = groups.survivors(passed) if groups is not None and passed else passed
    if rescore is not None and kept:
        exact = rescore(kept)
        kept = [h.model_copy(update={"score": float(s)}) for h, s in zip(kept, exact, strict=True)]
        kept.sort(key=lambda h: (-h.score, h.shard_id, h.row))
    return kept[:options.k]
