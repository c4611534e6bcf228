"""gristmill side of bench/dedup_vs_peers.py: ingest + near_dup_keys (exact key and MinHash
signature per row) fused in one pass on the Ray workers, then exact and MinHash dedup as
phases of worker tasks (stages/lsh_dedup.py). The clock stops when the decisions are
written; mapping gristmill's row ids back to the corpus's doc_id is bookkeeping after it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import minhash_args


def main() -> None:
    args = minhash_args.parser().parse_args()
    start = time.perf_counter()

    from gristmill.config import RuntimeConfig, StorageConfig
    from gristmill.runtime import RayConfig
    from gristmill.stages.chain import Link
    from gristmill.stages.dedup import DedupConfig, read_decisions, text_pass
    from gristmill.stages.ingest import Ingest, IngestConfig
    from gristmill.stages.near_dup_keys import NearDupKeys, NearDupKeysConfig
    from gristmill.stages.raw_inputs import RawFilesInput
    from gristmill.stages.runner import run_chain
    from gristmill.storage.fs import resolve
    from gristmill.storage.reader import Dataset

    runtime = RuntimeConfig(ray=RayConfig(num_cpus=args.workers), storage=StorageConfig(),
                            progress=False)
    keys = f"{args.output}/keys"
    run_chain([Link(Ingest, IngestConfig(promote_fields=["doc_id"])),
               Link(NearDupKeys, NearDupKeysConfig(num_perm=args.num_perm))],
              RawFilesInput.from_args([args.input]), keys, runtime)
    dataset = Dataset.open(keys)
    work = Path(args.output, "work")
    decisions = text_pass(dataset, DedupConfig(semantic=False, minhash_threshold=args.threshold),
                          id_column="id", key_column="exact_key", signature_column="minhash",
                          work=resolve(str(work)), runtime=runtime)
    removed = read_decisions(decisions, len(dataset.shards))
    seconds = time.perf_counter() - start

    names = dict(zip(*(dataset.to_table(columns=["id", "doc_id"]).column(c).to_pylist()
                       for c in ("id", "doc_id")), strict=True))
    shutil.rmtree(work)
    minhash_args.report(args.output, seconds, {names[i]: names[d.duplicate_of]
                                               for i, d in removed.items()})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
