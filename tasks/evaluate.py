"""The evaluate stage: every model side by side on the same benchmarks, with the same engine and tools.

Each (model, benchmark) is a rollout (one trajectory per query, greedy by default) written as its own
`rollouts/eval-<benchmark>-<model>` version, so evaluation trajectories are resumable and queryable
like any other. They are scored together by the score stage's rules: quality's ideal length n* is the
shortest correct answer among the models compared, so a model is not rewarded for being short and
wrong. Metrics per DESIGN.md §1 go to `eval_results` (one row per model, benchmark and metric).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig, config_hash
from schemas.lake import Lake, Lineage, VersionInfo
from tasks.rollout import ModelSpec, run_rollout
from tasks.score import gold_answers, score_rows
from tasks.sft import registered_model

STAGE = "evaluate"
METRICS = ("accuracy", "format_valid", "mean_quality", "tool_calls", "tool_error_rate", "mean_tokens")


@dataclass(frozen=True)
class EvalModel:
    """A model to evaluate: its label in the results, its path, and its `models` version if registered."""

    label: str
    path: str
    version_id: str | None


def model_label(ref: str) -> str:
    """How a model is named in results: its id or role, or a path's last two parts joined by '-'."""
    return ref if "/" not in ref else "-".join(Path(ref).parts[-2:])


def resolve_models(lake: Lake, refs: Sequence[str], data_dir: str) -> list[EvalModel]:
    """Model ids from the `models` table, roles (teacher, policy, …) or paths, with unique labels."""
    models = []
    for ref in refs:
        path, version_id = registered_model(lake, ref, data_dir)
        models.append(EvalModel(model_label(ref), path, version_id))
    labels = [model.label for model in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"models to compare must differ; got {labels}")
    return models


def model_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The DESIGN §1 metrics of one model's scored trajectories (each row: a scores row + completion_tokens)."""
    count = max(1, len(rows))
    calls = sum(row["tool_calls"] for row in rows)
    return {
        "accuracy": sum(row["correct"] for row in rows) / count,
        "format_valid": sum(row["format_ok"] for row in rows) / count,
        "mean_quality": sum(row["quality"] for row in rows) / count,
        "tool_calls": calls / count,
        "tool_error_rate": sum(row["tool_errors"] for row in rows) / calls if calls else 0.0,
        "mean_tokens": sum(row["completion_tokens"] for row in rows) / count,
    }


@dataclass
class EvalReport:
    """What an evaluation found: metrics[benchmark][model label] and where they were written."""

    version: VersionInfo
    metrics: dict[str, dict[str, dict[str, float]]]
    examples: dict[str, int]  # benchmark -> questions per model


def run_evaluate(
    lake: Lake,
    model_refs: Sequence[str],
    benchmark_refs: Sequence[str],
    name: str,
    config: PipelineConfig,
    use_ray: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Evaluate every model on every benchmark (queries versions); write `eval_results/<name>`."""
    if not model_refs or not benchmark_refs:
        raise ValueError("evaluate needs at least one model and one benchmark")
    section = config.evaluate
    models = resolve_models(lake, model_refs, config.runtime.data_dir)
    greedy = config.model_copy(
        update={"rollout": config.rollout.model_copy(update={"temperature": section.temperature, "n": 1})}
    )
    backend = "transformers" if config.rollout.backend == "openai" else config.rollout.backend
    results: list[dict[str, Any]] = []
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    examples: dict[str, int] = {}
    inputs: list[str] = []
    for benchmark_ref in benchmark_refs:
        benchmark = lake.resolve(benchmark_ref, "queries")
        versions = []
        for model in models:
            report = run_rollout(
                lake,
                benchmark.version_id,
                f"eval-{benchmark.dataset}-{model.label}",
                ModelSpec(backend, model.path, served_name=model.label),
                greedy,
                n=1,
                limit=section.max_queries,
                use_ray=use_ray,
                progress=None if progress is None else lambda done, total, m=model: progress(m.label, done, total),
                stage=STAGE,
            )
            versions.append(report.version)
        columns = ["trajectory_id", "query_id", "model", "response", "segments", "completion_tokens"]
        pooled = [row for version in versions for row in lake.read(version, columns=columns).to_pylist()]
        tokens = {row["trajectory_id"]: row["completion_tokens"] for row in pooled}
        scored = score_rows(pooled, gold_answers(lake, versions[0]), config.score)
        by_model: dict[str, list[dict]] = defaultdict(list)
        for row, rollout in zip(scored, pooled, strict=True):
            by_model[rollout["model"]].append(row | {"completion_tokens": tokens[row["trajectory_id"]]})
        metrics[benchmark.dataset] = {model.label: model_metrics(by_model[model.label]) for model in models}
        examples[benchmark.dataset] = len(pooled) // len(models)
        for label, values in metrics[benchmark.dataset].items():
            results += [
                {"model_id": label, "benchmark": benchmark.dataset, "metric": metric, "value": float(value),
                 "n_examples": len(by_model[label])}
                for metric, value in values.items()
            ]  # fmt: skip
        inputs += [version.version_id for version in versions]
    inputs += [model.version_id for model in models if model.version_id is not None]
    stage_config = {
        "evaluate": section.model_dump(mode="json"),
        "score": config.score.model_dump(mode="json"),
        "models": [(model.label, model.path) for model in models],
    }
    lineage = Lineage(STAGE, config_hash=config_hash(stage_config), input_versions=tuple(inputs))
    version = lake.commit_stage(name, {"eval_results": results}, lineage, {"metrics": metrics})["eval_results"]
    return EvalReport(version, metrics, examples)


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
