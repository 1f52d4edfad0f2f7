"""A short markdown report of the SFT-stage data, with PNG histograms of quality before and after repair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.lake import Lake, VersionInfo
from tasks.scoring.quality import LABELS

REPAIRED_LABELS = ("correct_low_quality", "wrong")


def _histograms(before: dict[str, list[float]], after: dict[str, tuple[list[float], list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    bins = [index / 20 for index in range(21)]
    figure, axes = plt.subplots(1, 1 + len(after), figsize=(5 * (1 + len(after)), 3.6), constrained_layout=True)
    axes[0].hist([before[label] for label in LABELS], bins=bins, label=list(LABELS), stacked=True)
    axes[0].set(title="before repair: quality by label", xlabel="quality", ylabel="trajectories")
    axes[0].legend(fontsize=8)
    for axis, (label, (originals, repaired)) in zip(axes[1:], after.items(), strict=True):
        axis.hist([originals, repaired], bins=bins, label=["original", "accepted repair"])
        axis.set(title=f"{label}: original vs accepted repair", xlabel="quality")
        axis.legend(fontsize=8)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def _metrics_block(title: str, metrics: dict[str, Any]) -> list[str]:
    return [f"## {title}", "", "```json", json.dumps(metrics, indent=1), "```", ""]


def write_report(lake: Lake, repairs_ref: str, out_dir: Path) -> Path:
    """Write report.md and quality.png for a repairs version (with its scores and, if built, pairs)."""
    repairs_info = lake.resolve(repairs_ref, "repairs")
    scores_info = lake.input_of(repairs_info, "scores")
    scores = lake.read(scores_info, columns=["trajectory_id", "label", "quality"]).to_pylist()
    repairs = lake.read(
        repairs_info, columns=["source_trajectory_id", "source_label", "quality", "accepted"]
    ).to_pylist()
    quality_of = {row["trajectory_id"]: row["quality"] for row in scores}
    before = {label: [row["quality"] for row in scores if row["label"] == label] for label in LABELS}
    accepted = [row for row in repairs if row["accepted"]]
    after = {
        label: (
            [quality_of[row["source_trajectory_id"]] for row in accepted if row["source_label"] == label],
            [row["quality"] for row in accepted if row["source_label"] == label],
        )
        for label in REPAIRED_LABELS
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _histograms(before, after, out_dir / "quality.png")
    lines = [
        f"# AutoTraj SFT-stage report: {repairs_info.dataset}",
        "",
        f"Scores `{scores_info.version_id}`, repairs `{repairs_info.version_id}`.",
        "",
        "| label | trajectories | mean quality | accepted repairs | mean quality of originals → repairs |",
        "|---|---|---|---|---|",
    ]
    for label in LABELS:
        values = before[label]
        mean = f"{sum(values) / len(values):.3f}" if values else "–"
        if label in after and after[label][1]:
            originals, repaired = after[label]
            change = f"{sum(originals) / len(originals):.3f} → {sum(repaired) / len(repaired):.3f}"
            fixed = str(len(repaired))
        else:
            change, fixed = "–", "–" if label not in after else "0"
        lines.append(f"| {label} | {len(values)} | {mean} | {fixed} | {change} |")
    lines += ["", "![quality before and after repair](quality.png)", ""]
    sections: list[tuple[str, VersionInfo]] = [("score", scores_info), ("repair", repairs_info)]
    pairs = [info for info in lake.versions("sft_examples") if repairs_info.version_id in info.input_versions]
    if pairs:
        sections.append(("pairs", pairs[-1]))
    for title, info in sections:
        lines += _metrics_block(f"{title} metrics (`{info.version_id}`)", lake.stage_metrics(info))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
