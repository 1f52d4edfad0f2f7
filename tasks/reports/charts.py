"""Charts of evaluation results: models side by side, one bar group per benchmark."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def plot_comparison(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], out: Path) -> Path:
    """A PNG with accuracy, quality, tool calls and length per model, one bar group per benchmark."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    panels = [
        ("accuracy", "accuracy"),
        ("mean_quality", "mean quality"),
        ("tool_calls", "tool calls per answer"),
        ("mean_tokens", "length (tokens)"),
    ]
    benchmarks = list(metrics)
    labels = list(next(iter(metrics.values())))
    width = 0.8 / len(labels)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), constrained_layout=True)
    for axis, (metric, title) in zip(axes, panels, strict=True):
        for index, label in enumerate(labels):
            values = [metrics[benchmark][label][metric] for benchmark in benchmarks]
            axis.bar([b + index * width for b in range(len(benchmarks))], values, width, label=label)
        axis.set_xticks([b + width * (len(labels) - 1) / 2 for b in range(len(benchmarks))], benchmarks, fontsize=8)
        axis.set_title(title)
    axes[0].legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
