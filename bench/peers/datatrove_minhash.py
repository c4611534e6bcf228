"""DataTrove side of bench/dedup_vs_peers.py; runs inside DataTrove's own virtualenv.

DataTrove's four MinHash steps as its own examples chain them: signatures per input file,
band buckets (one task per band), clusters (one task), then the filter, which writes every
dropped document to an exclusion writer with its cluster id. The bands match the other
tools (16 x 8 = 128 hashes over word 5-grams). DataTrove does not verify a candidate pair
by its estimated Jaccard: any shared band joins two documents' clusters.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import minhash_args

BANDS = 16


def read_documents(folder: Path) -> list[dict]:
    """Every document a writer wrote, with its metadata (JsonlWriter compresses by default)."""
    documents = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            documents.extend(json.loads(line) for line in lines)
    return documents


def main() -> None:
    args = minhash_args.parser().parse_args()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out = Path(args.output)
    config = MinhashConfig(n_grams=5, num_buckets=BANDS,
                           hashes_per_bucket=args.num_perm // BANDS)
    files = len(list(Path(args.input).glob("*.jsonl")))

    def reader() -> JsonlReader:
        return JsonlReader(args.input, glob_pattern="*.jsonl", text_key="text", id_key="doc_id")

    def run(pipeline: list, tasks: int, name: str) -> None:
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(args.workers, tasks),
                              logging_dir=str(out / "logs" / name)).run()

    start = time.perf_counter()
    run([reader(), MinhashDedupSignature(str(out / "signatures"), config=config)],
        files, "signatures")
    run([MinhashDedupBuckets(str(out / "signatures"), str(out / "buckets"), config=config)],
        BANDS, "buckets")
    run([MinhashDedupCluster(str(out / "buckets"), str(out / "clusters"), config=config,
                             save_cluster_id=True)], 1, "clusters")
    run([reader(),
         MinhashDedupFilter(str(out / "clusters"), load_cluster_ids=True,
                            exclusion_writer=JsonlWriter(str(out / "removed"))),
         JsonlWriter(str(out / "kept"))], files, "filter")
    seconds = time.perf_counter() - start

    survivor = {doc["metadata"]["minhash_cluster_id"]: doc["id"]
                for doc in read_documents(out / "kept")
                if doc["metadata"]["minhash_cluster_id"] != -1}
    removed = {doc["id"]: survivor[doc["metadata"]["minhash_cluster_id"]]
               for doc in read_documents(out / "removed")}
    minhash_args.report(args.output, seconds, removed)


if __name__ == "__main__":
    main()
