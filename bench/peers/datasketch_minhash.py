"""datasketch side of bench/dedup_vs_peers.py: MinHash per document (update_batch) and
MinHashLSH with its own band choice for the threshold, streaming as in rensa's runner. One
process."""

from __future__ import annotations

import time

import minhash_args
from datasketch import MinHash, MinHashLSH


def main() -> None:
    args = minhash_args.parser().parse_args()
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    kept: dict[str, MinHash] = {}
    removed: dict[str, str] = {}
    for doc_id, text in minhash_args.documents(args.input):
        signature = MinHash(num_perm=args.num_perm, seed=1)
        signature.update_batch([s.encode() for s in minhash_args.shingles(text)])
        match = next((c for c in sorted(lsh.query(signature))
                      if kept[c].jaccard(signature) >= args.threshold), None)
        if match is None:
            lsh.insert(doc_id, signature)
            kept[doc_id] = signature
        else:
            removed[doc_id] = match
    minhash_args.report(args.output, time.perf_counter() - start, removed)


if __name__ == "__main__":
    main()
