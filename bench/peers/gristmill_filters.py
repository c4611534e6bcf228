"""gristmill side of bench/pipeline_vs_peers.py: ingest + text_filter fused in one pass.

The text filter is set to the rules DataTrove runs in the same bench: Gopher word count,
mean word length, duplicate-line share, top and duplicate n-gram shares, and fastText
language ID over the whole text; the character-count and non-printable rules are off.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import runner_args


def main() -> None:
    parser = runner_args.parser()
    parser.add_argument("--unit-bytes", type=int, default=None,
                        help="cut files into units of about this size (default: the input's)")
    args = parser.parse_args()
    start = time.perf_counter()

    from gristmill.config import RuntimeConfig, StorageConfig
    from gristmill.runtime import RayConfig
    from gristmill.stages.chain import Link
    from gristmill.stages.ingest import Ingest, IngestConfig
    from gristmill.stages.raw_inputs import RawFilesInput
    from gristmill.stages.runner import run_chain
    from gristmill.stages.text_filter import TextFilter, TextFilterConfig

    text_filter = TextFilterConfig(min_chars=None, max_chars=None,
                                   max_non_printable_fraction=None,
                                   min_language_score=args.min_language_score,
                                   language_id_chars=100_000_000,
                                   **({"max_duplicate_ngram_fraction": {}}
                                      if args.no_duplicate_ngrams else {}))
    runtime = RuntimeConfig(ray=RayConfig(num_cpus=args.workers), storage=StorageConfig(),
                            progress=False)
    units = {"unit_bytes": args.unit_bytes} if args.unit_bytes else {}
    results = run_chain([Link(Ingest, IngestConfig()), Link(TextFilter, text_filter)],
                        RawFilesInput.from_args([args.input], **units), f"{args.output}/kept",
                        runtime)
    Path(args.output, "report.json").write_text(json.dumps({"seconds": time.perf_counter() - start,
                      "kept": results[-1].stats.rows_out}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
