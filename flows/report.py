"""Markdown reports of a stage run, attached to the Prefect run as artifacts."""

from __future__ import annotations

import json

from gristmill.stages.runner import StageResult
from gristmill.storage.reader import Dataset

SAMPLE_ROWS = 3
SAMPLE_CHARS = 160


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
        f"Output: `{result.output}`" + (" (reused: inputs, config and code unchanged)"
                                        if result.reused else ""),
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
    dataset = Dataset.open(result.output)
    text_columns = [c for c in ("id", "text", "source", "lang_id", "lang_score")
                    if c in dataset.schema.names]
    lines += ["", "## Sample kept rows", "", *_sample_table(dataset, text_columns)]
    if dataset.rejected is not None:
        columns = ["reject_reason", "reject_detail", "text", "locator"]
        lines += ["", "## Sample rejected rows", "", *_sample_table(dataset.rejected, columns)]
    return "\n".join(lines) + "\n"
