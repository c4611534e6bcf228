"""Markdown reports of a stage run, attached to the Prefect run as artifacts."""

from __future__ import annotations

import json

from gristmill.flows.plots import funnel_png, markdown_image
from gristmill.stages.global_step import StepResult
from gristmill.stages.prune_decisions import DecisionSummary
from gristmill.stages.quality_cut import PoolDecision
from gristmill.stages.quality_reference import ClassifierReport
from gristmill.stages.runner import StageResult
from gristmill.storage.reader import Dataset

SAMPLE_ROWS = 3
SAMPLE_CHARS = 160
ANSWER_SAMPLES = 5


def cell(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if isinstance(value, bytes):
        text = value[:SAMPLE_CHARS].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    if len(text) > SAMPLE_CHARS:
        text = text[:SAMPLE_CHARS] + "…"
    return text.replace("|", "\\|")


def _sample_table(dataset: Dataset, columns: list[str]) -> list[str]:
    if dataset.num_rows == 0:
        return ["_(none)_"]
    shown = [c for c in columns if c in dataset.schema.names]
    rows = next(dataset.iter_batches(columns=shown)).slice(0, SAMPLE_ROWS).to_pylist()
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(row[c]) for c in shown) + " |" for row in rows]
    return lines


def stage_report(result: StageResult) -> str:
    """Rows in / out / rejected, reject reasons, and a few kept and rejected rows."""
    stats = result.stats
    lines = [
        f"# {result.stage}",
        "",
        "Output: " + ("fused into the next stage, not written" if result.output is None
                      else f"`{result.output}`")
        + (" (reused: inputs, config and code unchanged)" if result.reused else ""),
        "",
        "| rows in | rows out | rows rejected | units | units resumed | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {stats.rows_in:,} | {stats.rows_out:,} | {stats.rows_rejected:,} | "
        f"{stats.units_total} | {stats.units_reused} | {result.wall_seconds:.1f} |",
        "",
        "## Reject reasons",
        "",
    ]
    if stats.reject_reasons:
        lines += ["| reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {count:,} |" for reason, count in stats.reject_reasons.items()]
    else:
        lines.append("_(no rows rejected)_")
    if result.output is not None:
        dataset = Dataset.open(result.output)
        text_columns = [c for c in ("id", "text", "source", "lang_id", "lang_score")
                        if c in dataset.schema.names]
        lines += ["", "## Sample kept rows", "", *_sample_table(dataset, text_columns)]
    if result.rejected is not None:
        columns = ["reject_reason", "reject_detail", "id", "text", "locator"]
        lines += ["", "## Sample rejected rows", "",
                  *_sample_table(Dataset.open(result.rejected), columns)]
    return "\n".join(lines) + "\n"


def step_report(result: StepResult) -> str:
    """A global step's rows in and out, what it found (its summary) and a few output rows."""
    lines = [
        f"# {result.step}", "",
        f"Output: `{result.output}`" + (" (reused: inputs, config and code unchanged)"
                                        if result.reused else ""), "",
        "| rows in | rows out | seconds |", "|---:|---:|---:|",
        f"| {result.stats.rows_in:,} | {result.stats.rows_out:,} | {result.wall_seconds:.1f} |",
        "", "## Summary", "",
    ]
    scalars = {k: v for k, v in result.summary.items() if not isinstance(v, list | dict)}
    lines += ["| what | value |", "|---|---|",
              *(f"| {k} | {cell(v)} |" for k, v in scalars.items())] if scalars else ["_(none)_"]
    dataset = Dataset.open(result.output)
    lines += ["", "## Sample output rows", "", *_sample_table(dataset, dataset.schema.names[:6])]
    return "\n".join(lines) + "\n"


def prune_report(summary: DecisionSummary, selected: StageResult) -> str:
    stats = selected.stats
    rows = [f"| {reason} | {count:,} |" for reason, count in sorted(summary.reasons.items())]
    choice = ("prototype pruning off" if summary.keep_hard is None else
              f"kept the {'hardest' if summary.keep_hard else 'easiest'} "
              f"{summary.keep_fraction:.0%} of the deduplicated pool")
    return "\n".join([
        "# prune", "",
        f"Output: `{selected.output}` · rows in {stats.rows_in:,} · kept {stats.rows_out:,} · "
        f"rejected {stats.rows_rejected:,} · {choice}", "",
        f"k-means: {len(summary.cluster_sizes)} clusters, largest "
        f"{max(summary.cluster_sizes, default=0):,} rows", "",
        "| reason | rows |", "|---|---:|", *rows, "",
    ])


def funnel_rows(results: dict[str, StageResult]) -> list[tuple[str, int, int, int, dict]]:
    """(step, rows in, rows out, rows rejected, reasons) in funnel order."""
    return [(step, r.stats.rows_in, r.stats.rows_out, r.stats.rows_rejected,
             r.stats.reject_reasons) for step, r in results.items()]


def funnel_report(results: dict[str, StageResult], requested: int) -> str:
    rows = funnel_rows(results)
    lines = ["# synthesize_questions", "",
             "| step | in | out | rejected | reasons |", "|---|---:|---:|---:|---|"]
    for step, rows_in, rows_out, rejected, reasons in rows:
        why = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-"
        lines.append(f"| {step} | {rows_in:,} | {rows_out:,} | {rejected:,} | {why} |")
    lines += ["", markdown_image(funnel_png(rows, requested), "funnel"), ""]
    selected = Dataset.open(results["selected"].output)
    if selected.num_rows:
        lines += ["| question | answer | votes | response |", "|---|---|---:|---|"]
        table = next(selected.iter_batches(columns=["question", "answer", "votes", "response"]))
        for row in table.slice(0, ANSWER_SAMPLES).to_pylist():
            lines.append(f"| {cell(row['question'])} | {cell(row['answer'])} | "
                         f"{row['votes']} | {cell(row['response'])} |")
    return "\n".join(lines) + "\n"


def decision_report(decision: PoolDecision, cut: StepResult, fractions: list[float],
                    selected: StageResult, classifier: ClassifierReport | None,
                    png: bytes) -> str:
    """The choice, every bucket from the cut dataset, the selection's counts, the plot."""
    buckets = cut.ref.open().to_table(columns=["threshold", "rows"]).to_pylist()
    lines = [
        "# quality_filter", "",
        f"Budget {decision.budget:,.0f} {decision.unit} seen -> keep the top "
        f"**{decision.keep_buckets}** of {len(buckets)} buckets "
        f"({100 * sum(fractions[:decision.keep_buckets]):g}% of {cut.stats.rows_in:,} rows). "
        f"Law: {decision.law_source}, {decision.variant} variant.", "",
        "| bucket | score cut (>=) | rows | epochs of pool at budget | predicted error "
        "if pool ends here |", "|---:|---:|---:|---:|---:|",
    ]
    for k, bucket in enumerate(buckets):
        pool = sum(decision.bucket_sizes[:k + 1])
        mark = " (chosen)" if k + 1 == decision.keep_buckets else ""
        lines.append(f"| {k}{mark} | {bucket['threshold']:.6g} | {bucket['rows']:,} | "
                     f"{decision.budget / pool:,.2f} | {decision.predicted_error[k]:.4f} |")
    stats = selected.stats
    lines += ["", f"Selected {stats.rows_out:,} of {stats.rows_in:,} rows; "
              f"{stats.rows_rejected:,} rejected as below the selected pool."]
    if classifier is not None:
        auc = "n/a" if classifier.holdout_auc is None else f"{classifier.holdout_auc:.4f}"
        lines += ["", f"Reference classifier: trained on {classifier.train_positive:,} "
                  f"positive / {classifier.train_negative:,} negative texts; held-out ROC AUC "
                  f"{auc} ({classifier.holdout_positive:,} / {classifier.holdout_negative:,})."]
    lines += ["", markdown_image(png, "predicted error vs compute per candidate pool")]
    return "\n".join(lines) + "\n"
