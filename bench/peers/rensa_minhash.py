"""rensa side of bench/dedup_vs_peers.py: RMinHash per document and RMinHashLSH, streaming
(a document whose LSH candidates include one at estimated Jaccard >= threshold is dropped
as its duplicate, else it is inserted), as rensa's own examples do. One process."""

from __future__ import annotations

import time

import minhash_args
from rensa import RMinHash, RMinHashLSH

BANDS = 16
"""num_perm must split evenly: 16 bands of 8 rows put the LSH curve's midpoint near 0.71."""


def main() -> None:
    args = minhash_args.parser().parse_args()
    start = time.perf_counter()
    lsh = RMinHashLSH(threshold=args.threshold, num_perm=args.num_perm, num_bands=BANDS)
    kept: list[RMinHash] = []
    names: list[str] = []
    removed: dict[str, str] = {}
    for doc_id, text in minhash_args.documents(args.input):
        signature = RMinHash(num_perm=args.num_perm, seed=42)
        signature.update(minhash_args.shingles(text))
        match = next((c for c in sorted(lsh.query(signature))
                      if kept[c].jaccard(signature) >= args.threshold), None)
        if match is None:
            lsh.insert(len(kept), signature)
            kept.append(signature)
            names.append(doc_id)
        else:
            removed[doc_id] = names[match]
    minhash_args.report(args.output, time.perf_counter() - start, removed)


if __name__ == "__main__":
    main()
