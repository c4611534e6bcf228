"""Quality filter throughput: scoring rows/s on the CPU, and the cut + select barrier at scale.

Why: scoring is paid once per row and the cut is a global step on the driver, so both
bound how large a pool one machine can filter. Cases:

- scoring (real SpamAssassin emails, one process): the heuristic scorer, and the embedding
  classifier (MiniLM + logistic regression) trained on ham vs spam with a held-out split,
  whose held-out ROC AUC is reported too;
- cut + select on N synthetic scores (default 10M) in a dataset on disk: the `quality_cut`
  step (exact quantile cuts streaming only the score column, the law's pool, a committed
  bucket table), then the select stage streamed batch by batch into a
  new dataset (kept + rejected). Each runs in a fresh subprocess so its peak RSS is its own;
  a naive in-memory cut (load the column, np.sort) is measured the same way for contrast.

Run: python bench/quality_filter_throughput.py [--rows 10000000] [--score-rows 600]
Writes bench/results/quality_filter_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import load_average, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".gristmill" / "bench" / "quality_filter"
RESULTS = Path(__file__).resolve().parent / "results" / "quality_filter_throughput.json"
FRACTIONS = [0.1, 0.1, 0.1, 0.1]
BATCH = 100_000

console = Console()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_scores(uri: Path, rows: int, seed: int = 0) -> None:
    """`rows` rows (id + a score from a skewed mixture, with ties) written batch by batch."""
    from gristmill.storage.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.string()), ("quality_score", pa.float64())])
    with DatasetWriter(str(uri), schema, max_rows=1_000_000, overwrite=True) as writer:
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            scores = np.where(rng.random(n) < 0.7, rng.normal(0, 1, n), rng.gamma(2, 1, n))
            scores = np.round(scores, 5)
            ids = pa.array(np.char.mod("%016x", np.arange(start, start + n)).astype(object),
                           pa.string())
            writer.write(pa.table({"id": ids, "quality_score": scores}))
        writer.commit()


def case_cut_select(data: Path, out: Path) -> dict:
    """The streaming cut step on the driver (budget: 20 epochs of the best bucket), then the
    select stage streamed into a new dataset."""
    from gristmill.config import RuntimeConfig
    from gristmill.scoring.quality import bucket_ranks
    from gristmill.stages.base import reject_schema
    from gristmill.stages.global_step import run_global_step
    from gristmill.stages.quality_cut import LawChoice, QualityCut, QualityCutConfig
    from gristmill.stages.quality_select import QualitySelect, QualitySelectConfig
    from gristmill.storage.reader import Dataset
    from gristmill.storage.writer import DatasetWriter

    base = peak_rss_mb()
    dataset = Dataset.open(str(data))
    config = QualityCutConfig(fractions=FRACTIONS, law=LawChoice(rescale=True),
                              budget=bucket_ranks(dataset.num_rows, FRACTIONS)[0] * 20)
    started = time.perf_counter()
    cut = run_global_step(QualityCut(config), [str(data)], str(out.with_name("cuts")),
                          RuntimeConfig(progress=False))
    cut_seconds = time.perf_counter() - started
    cut_rss = peak_rss_mb()
    stage = QualitySelect(QualitySelectConfig(cuts=cut.ref))
    stage.setup()
    schema = stage.output_schema(dataset.schema)
    started = time.perf_counter()
    kept = rejected = 0
    with DatasetWriter(str(out), schema, rejected_schema=reject_schema(schema),
                       max_rows=1_000_000, overwrite=True) as writer:
        for batch in dataset.iter_batches():
            split = stage.process(pa.Table.from_batches([batch]))
            writer.write(split.kept)
            writer.write_rejected(split.rejected)
            kept += split.kept.num_rows
            rejected += split.rejected.num_rows
        writer.commit()
    select_seconds = time.perf_counter() - started
    return {"rows": dataset.num_rows, "cut_seconds": cut_seconds,
            "select_seconds": select_seconds, "kept": kept, "rejected": rejected,
            "keep_buckets": stage.pool.keep_buckets, "thresholds": stage.pool.thresholds,
            "baseline_rss_mb": base, "cut_peak_rss_mb": cut_rss, "peak_rss_mb": peak_rss_mb()}


def case_naive_cut(data: Path) -> dict:
    """The whole score column in memory, sorted: what the streaming cut avoids."""
    from gristmill.scoring.quality import bucket_ranks
    from gristmill.storage.reader import Dataset

    base = peak_rss_mb()
    started = time.perf_counter()
    scores = Dataset.open(str(data)).to_table(columns=["quality_score"]).column(0).to_numpy()
    ranked = np.sort(scores)[::-1]
    thresholds = [float(ranked[r - 1]) for r in bucket_ranks(scores.size, FRACTIONS)]
    return {"rows": int(scores.size), "cut_seconds": time.perf_counter() - started,
            "thresholds": thresholds, "baseline_rss_mb": base, "peak_rss_mb": peak_rss_mb()}


def in_subprocess(case: str, *args: str) -> dict:
    command = [sys.executable, __file__, "--case", case, *args]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def scoring_cases(score_rows: int, classifier_rows: int | None) -> dict:
    """Heuristic and embedding-classifier scoring rows/s on real emails, plus held-out AUC."""
    from gristmill.config import RuntimeConfig
    from gristmill.inference import EmbedderConfig
    from gristmill.stages.ingest import Ingest, IngestConfig
    from gristmill.stages.quality_reference import (
        ReferenceSets,
        reference_texts,
        train_reference_classifier,
    )
    from gristmill.stages.quality_score import QualityScore, QualityScoreConfig
    from gristmill.stages.raw_inputs import RawFilesInput
    from gristmill.stages.runner import run_stage

    ingest = run_stage(Ingest, IngestConfig(promote_fields=["label"]),
                       RawFilesInput.from_args(["spam_assassin"]), str(WORK_DIR / "spam"),
                       RuntimeConfig(progress=False))
    refs = ReferenceSets(uri=ingest.output, holdout_fraction=0.3,
                         max_rows_per_class=classifier_rows, seed=0)
    embedder = EmbedderConfig(max_seq_length=128)
    started = time.perf_counter()
    scorer, report = train_reference_classifier(refs, embedder, str(WORK_DIR / "head.npz"))
    train_seconds = time.perf_counter() - started
    groups = reference_texts(refs)
    texts = (groups[("holdout", True)] + groups[("holdout", False)])[:score_rows]
    batch = pa.table({"text": texts})
    results = {"classifier": report.model_dump(), "classifier_train_and_eval_seconds":
               train_seconds, "embedder_max_seq_length": embedder.max_seq_length}
    for name, config in (("heuristic", QualityScoreConfig()),
                         ("embedding_classifier", QualityScoreConfig(scorer=scorer))):
        stage = QualityScore(config)
        stage.setup()
        stage.process(batch.slice(0, 8))  # warm
        started = time.perf_counter()
        for offset in range(0, batch.num_rows, 256):
            stage.process(batch.slice(offset, 256))
        seconds = time.perf_counter() - started
        results[name] = {"rows": batch.num_rows, "seconds": seconds,
                         "rows_per_second": batch.num_rows / seconds,
                         "mean_chars": float(np.mean([len(t) for t in texts]))}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--score-rows", type=int, default=600)
    parser.add_argument("--classifier-rows", type=int, default=None,
                        help="Cap per class and split for the classifier (default: all)")
    parser.add_argument("--case", choices=["cut_select", "naive_cut"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case == "cut_select":
        print(json.dumps(case_cut_select(Path(args.data), Path(args.out))))
        return
    if args.case == "naive_cut":
        print(json.dumps(case_naive_cut(Path(args.data))))
        return

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    data, out = WORK_DIR / "scores", WORK_DIR / "selected"
    load_before = load_average()
    console.print(f"writing {args.rows:,} synthetic scores ...")
    make_scores(data, args.rows)
    streaming = in_subprocess("cut_select", "--data", str(data), "--out", str(out))
    naive = in_subprocess("naive_cut", "--data", str(data))
    if streaming["thresholds"] != naive["thresholds"]:
        raise SystemExit("streaming and in-memory cuts disagree")
    console.print("scoring real emails ...")
    scoring = scoring_cases(args.score_rows, args.classifier_rows)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name("cuts"), ignore_errors=True)

    table = Table("case", "rows", "seconds", "rows/s", "peak RSS MB (baseline)",
                  title="quality filter throughput")
    for name in ("heuristic", "embedding_classifier"):
        r = scoring[name]
        table.add_row(f"score: {name}", f"{r['rows']:,}", f"{r['seconds']:.2f}",
                      f"{r['rows_per_second']:,.1f}", "-")
    table.add_row("cut: streaming exact quantiles", f"{streaming['rows']:,}",
                  f"{streaming['cut_seconds']:.2f}",
                  f"{streaming['rows'] / streaming['cut_seconds']:,.0f}",
                  f"{streaming['cut_peak_rss_mb']:,.0f} ({streaming['baseline_rss_mb']:,.0f})")
    table.add_row("select: stream into kept + rejected", f"{streaming['rows']:,}",
                  f"{streaming['select_seconds']:.2f}",
                  f"{streaming['rows'] / streaming['select_seconds']:,.0f}",
                  f"{streaming['peak_rss_mb']:,.0f} ({streaming['baseline_rss_mb']:,.0f})")
    table.add_row("cut: naive (column in memory + sort)", f"{naive['rows']:,}",
                  f"{naive['cut_seconds']:.2f}", f"{naive['rows'] / naive['cut_seconds']:,.0f}",
                  f"{naive['peak_rss_mb']:,.0f} ({naive['baseline_rss_mb']:,.0f})")
    console.print(table)
    auc = scoring["classifier"]["holdout_auc"]
    console.print(f"embedding classifier held-out ROC AUC (ham over spam): {auc:.4f} "
                  f"({scoring['classifier']})")
    write_json(RESULTS, {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "load_before": load_before,
                    "load_after": load_average()},
        "scoring": scoring, "cut_select": streaming, "naive_cut": naive,
        "dataset_bytes": sum(f.stat().st_size for f in data.glob("*.arrow")),
    })


if __name__ == "__main__":
    main()
