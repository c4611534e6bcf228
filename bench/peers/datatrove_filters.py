"""DataTrove side of bench/pipeline_vs_peers.py; runs inside DataTrove's own virtualenv.

JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter -> LanguageFilter -> JsonlWriter,
with the Gopher rules gristmill has no knob for switched off (None) so the rules match, and
the same fastText model file gristmill uses put where DataTrove looks for its download.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import runner_args


def place_model(model: str) -> None:
    """DataTrove downloads lid.176.bin on first use; this machine has no network."""
    from datatrove.utils.lid import FT176LID
    from fsspec.core import strip_protocol
    from huggingface_hub import cached_assets_path

    folder = cached_assets_path(library_name="datatrove", namespace="lid", subfolder="ft176")
    local = Path(folder) / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
    if not local.exists():
        shutil.copy(model, local)
    Path(f"{local}.completed").touch()


def main() -> None:
    parser = runner_args.parser()
    args = parser.parse_args()
    place_model(args.model)

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    tasks = len(list(Path(args.input).glob("*.jsonl")))
    pipeline = [
        JsonlReader(args.input, glob_pattern="*.jsonl", text_key="text", id_key="id"),
        GopherRepetitionFilter(dup_line_frac=0.3, dup_para_frac=None, dup_line_char_frac=None,
                               dup_para_char_frac=None,
                               **({"dup_n_grams": ()} if args.no_duplicate_ngrams else {})),
        GopherQualityFilter(max_symbol_word_ratio=None, max_bullet_lines_ratio=None,
                            max_ellipsis_lines_ratio=None, max_non_alpha_words_ratio=None,
                            min_stop_words=None),
        LanguageFilter(languages=["en"], language_threshold=args.min_language_score),
        JsonlWriter(f"{args.output}/kept", compression=None),
    ]
    start = time.perf_counter()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=args.workers,
                          logging_dir=f"{args.output}/logs").run()
    seconds = time.perf_counter() - start
    kept = sum(1 for f in Path(args.output, "kept").glob("*.jsonl") for _ in f.open())
    Path(args.output, "report.json").write_text(json.dumps({"seconds": seconds, "kept": kept}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
