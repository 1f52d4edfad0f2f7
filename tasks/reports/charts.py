"""Charts of evaluation results: models side by side, one bar group per benchmark, 95% intervals as error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PANELS = (
    ("accuracy", "accuracy"),
    ("mean_quality", "mean quality"),
    ("tool_calls", "tool calls per answer"),
    ("mean_tokens", "length (tokens)"),
)


def plot_comparison(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """A PNG of accuracy, quality, tool calls and length per model (eval_results rows of one subset, each
    model shown under its `label`), with the legend below the panels so it covers no bar."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    by_key = {(row["benchmark"], row.get("label") or row["model_id"], row["metric"]): row for row in rows}
    benchmarks = list(dict.fromkeys(benchmark for benchmark, _, _ in by_key))
    labels = list(dict.fromkeys(label for _, label, _ in by_key))
    width = 0.8 / len(labels)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.9), layout="constrained")
    for axis, (metric, title) in zip(axes, PANELS, strict=True):
        for index, label in enumerate(labels):
            cells = [by_key[benchmark, label, metric] for benchmark in benchmarks]
            values = [cell["value"] for cell in cells]
            # Bars without an interval (too few observations) get no error bar, never a zero-width one.
            below = [cell["value"] - cell["ci_low"] if cell.get("ci_low") is not None else 0.0 for cell in cells]
            above = [cell["ci_high"] - cell["value"] if cell.get("ci_high") is not None else 0.0 for cell in cells]
            errors = [[max(0.0, e) for e in below], [max(0.0, e) for e in above]]
            positions = [b + index * width for b in range(len(benchmarks))]
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=label, error_kw={"linewidth": 0.8})
        axis.set_xticks([b + width * (len(labels) - 1) / 2 for b in range(len(benchmarks))], benchmarks, fontsize=8)
        axis.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
