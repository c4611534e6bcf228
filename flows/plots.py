"""Figures for flow reports: PNG bytes, embedded in Prefect markdown artifacts."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gristmill.loading.mixture import MixturePlan


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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
