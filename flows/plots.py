"""Figures for flow reports: PNG bytes, embedded in Prefect markdown artifacts."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gristmill.loading.mixture import MixturePlan
from gristmill.scoring import scaling_laws as law
from gristmill.stages.prune_decisions import DecisionSummary
from gristmill.stages.quality_cut import PoolDecision


def figure_png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes, laid out tight; the figure is closed."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def mixture_probabilities_png(plan: MixturePlan, names: list[str], points: int = 200) -> bytes:
    """Each domain's sampling probability over training steps (log scale)."""
    total = plan.config.total_steps
    steps = np.unique(np.linspace(0, total - 1, num=min(points, total)).astype(int))
    probs = np.array([plan.probabilities(int(step)) for step in steps])
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.set_prop_cycle(color=plt.cm.tab20.colors)
    for index, name in enumerate(names):
        axis.plot(steps, probs[:, index], label=name, linewidth=1.6, drawstyle="steps-post")
    axis.set_yscale("log")
    axis.set_xlabel("training step")
    axis.set_ylabel("sampling probability")
    axis.set_title(f"Mixture: {plan.config.schedule.kind} schedule, mode {plan.config.mode}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    return figure_png(figure)


def score_histogram_png(summary: DecisionSummary) -> bytes:
    """Prototype scores of the deduplicated pool, kept and pruned stacked."""
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    edges = np.asarray(summary.score_edges)
    if len(edges) > 1:
        widths, left = np.diff(edges), edges[:-1]
        axis.bar(left, summary.kept_counts, widths, align="edge", label="kept",
                 color="tab:blue")
        axis.bar(left, summary.pruned_counts, widths, align="edge", label="pruned",
                 bottom=summary.kept_counts, color="tab:gray")
        axis.legend()
    end = "hard" if summary.keep_hard else "easy"
    axis.set_title(f"Prototype score (cosine distance to centroid); keeping {end} examples")
    axis.set_xlabel("distance to nearest centroid")
    axis.set_ylabel("rows")
    return figure_png(figure)


def cluster_sizes_png(summary: DecisionSummary) -> bytes:
    """Rows per cluster, largest first: the block the semantic pass must compare."""
    sizes = np.sort(np.asarray(summary.cluster_sizes))[::-1]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.bar(np.arange(len(sizes)), sizes, width=1.0, color="tab:green")
    axis.set_title(f"Cluster sizes (k = {len(sizes)})")
    axis.set_xlabel("cluster, by size")
    axis.set_ylabel("rows")
    return figure_png(figure)


def funnel_png(rows: list[tuple[str, int, int, int, dict]], requested: int) -> bytes:
    """Rows left after each step, as horizontal bars."""
    names = ["requested", *(r[0] for r in rows)]
    counts = [requested, *(r[2] for r in rows)]
    figure, axis = plt.subplots(figsize=(7, 3.6), dpi=110)
    bars = axis.barh(names[::-1], counts[::-1], color="#4c72b0")
    axis.bar_label(bars, padding=3)
    axis.set_xlabel("questions")
    axis.set_title("ScaleQuest funnel")
    axis.set_xlim(0, max(max(counts), 1) * 1.15)
    return figure_png(figure)


def pools_png(decision: PoolDecision, fractions: list[float], points: int = 200) -> bytes:
    """Predicted error against samples seen for every candidate pool, the choice marked."""
    floor = law.SAMPLE_SCALE / decision.law.a
    low = max(decision.budget / 100, floor * 1.01)
    budgets = np.geomspace(low, max(decision.budget * 100, low * 10), points)
    errors = law.error_table(decision.law, budgets, decision.bucket_sizes, decision.variant)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for k, curve in enumerate(errors, start=1):
        share = 100 * sum(fractions[:k])
        axis.plot(budgets, curve, linewidth=1.6, label=f"top {share:g}% ({k} bucket"
                  f"{'s' if k > 1 else ''})")
    chosen = decision.keep_buckets
    axis.axvline(decision.budget, color="grey", linestyle="--", linewidth=1)
    axis.plot([decision.budget], [decision.predicted_error[chosen - 1]], marker="*",
              markersize=14, color="black", label=f"chosen: {chosen} bucket(s)")
    axis.set_xscale("log")
    axis.set_xlabel(f"{decision.unit} seen")
    axis.set_ylabel("predicted error")
    axis.set_title(f"Data-filtering scaling law ({decision.variant}); {decision.law_source}",
                   fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure_png(figure)


def markdown_image(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
