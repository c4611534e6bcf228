"""Data-Juicer side of bench/pipeline_vs_peers.py; runs inside Data-Juicer's own virtualenv.

Data-Juicer has no Gopher rule set; its nearest ops are used: a word-count window, the share
of repeated word 5-grams, and fastText language ID with the same model file gristmill uses
(placed where Data-Juicer looks for its download). The kept count is reported, not expected
to match: the repetition rule is defined differently.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import runner_args
import yaml


def main() -> None:
    parser = runner_args.parser()
    args = parser.parse_args()
    out = Path(args.output)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.model, models / "lid.176.bin")
    os.environ["DATA_JUICER_MODELS_CACHE"] = str(models)
    os.environ["DATA_JUICER_CACHE_HOME"] = str(out / "cache")
    os.environ["HF_DATASETS_CACHE"] = str(out / "hf_datasets")
    config = {
        "project_name": "pipeline_vs_peers",
        "dataset_path": args.input,
        "export_path": str(out / "kept" / "kept.jsonl"),
        "work_dir": str(out / "work"),
        "np": args.workers,
        "text_keys": "text",
        "open_tracer": False,
        "process": [
            {"words_num_filter": {"lang": "en", "tokenization": False, "min_num": 50,
                                  "max_num": 100_000}},
            *([] if args.no_duplicate_ngrams else [
                {"word_repetition_filter": {"lang": "en", "tokenization": False, "rep_len": 5,
                                            "min_ratio": 0.0, "max_ratio": 0.15}}]),
            {"language_id_score_filter": {"lang": "en", "min_score": args.min_language_score}},
        ],
    }
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    from data_juicer.config import init_configs
    from data_juicer.core import DefaultExecutor

    start = time.perf_counter()
    DefaultExecutor(init_configs(["--config", str(config_path)])).run()
    seconds = time.perf_counter() - start
    kept = sum(1 for _ in (out / "kept" / "kept.jsonl").open())
    Path(args.output, "report.json").write_text(json.dumps({"seconds": seconds, "kept": kept}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
