"""gristmill side of bench/dedup_vs_peers.py: ingest + near_dup_keys (exact key and MinHash
signature per row) fused in one pass on the Ray workers, then exact and MinHash dedup as
phases of worker tasks (stages/lsh_dedup.py). The clock stops when the decisions are
written. Decisions stream shard by shard into removed.tsv (gristmill ids), and the bench
maps them back to the corpus's doc_id outside this process, so the driver's measured memory
is the pipeline's own."""

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
    from gristmill.stages.dedup import DedupConfig, text_pass
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
    with Path(args.output, "removed.tsv").open("w") as removed:
        for shard in range(len(dataset.shards)):
            table = decisions.read(shard)
            for row, kept in zip(table.column("id").to_pylist(),
                                 table.column("duplicate_of").to_pylist(), strict=True):
                removed.write(f"{row}\t{kept}\n")
    seconds = time.perf_counter() - start
    shutil.rmtree(work)
    minhash_args.report(args.output, seconds, {})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
