"""The evaluate stage: every model side by side on the same benchmarks, with the same engine and tools.

Models are any model references (roles, registered models, paths, served models). Each (model,
benchmark) is a rollout (one trajectory per query, greedy by default) written as its own
`rollouts/eval-<benchmark>-<model>` version, keyed by that model and benchmark alone, so evaluation
trajectories are resumable and queryable like any other and adding a model reuses the others'. They
are scored together by the score stage's rules: quality's ideal length n* is the shortest correct
answer among the models compared, so a model is not rewarded for being short and wrong. Errored
trajectories are counted, not scored as answers. Metrics per DESIGN.md §1 go to `eval_results`
(one row per model, benchmark and metric).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.config import config_hash
from schemas.lake import Lineage
from tasks.core.lineage import gold_answers
from tasks.core.stage import (
    Input,
    Model,
    Option,
    StageContext,
    StageResult,
    StageSpec,
    SummaryTable,
    errored_problem,
)
from tasks.generation.runner import (
    ENGINE_CONFIG,
    NO_CACHE,
    NO_RAY,
    Execution,
    generate_rollouts,
    settings_from_config,
    usage_metrics,
    usage_note,
)
from tasks.reports.charts import plot_comparison
from tasks.scoring.quality import errored, score_rows

METRICS = ("accuracy", "format_valid", "mean_quality", "tool_calls", "tool_error_rate", "mean_tokens")


def model_metrics(rows: Sequence[Mapping[str, Any]], errors: int = 0) -> dict[str, float]:
    """The DESIGN §1 metrics of one model's scored trajectories (each row: a scores row + completion_tokens).

    Errored trajectories count in the denominator of accuracy and format validity (a failed
    generation is not a correct answer) and in `generation_errors`; they are never scored.
    """
    count = max(1, len(rows) + errors)
    scored = max(1, len(rows))
    calls = sum(row["tool_calls"] for row in rows)
    return {
        "accuracy": sum(row["correct"] for row in rows) / count,
        "format_valid": sum(row["format_ok"] for row in rows) / count,
        "mean_quality": sum(row["quality"] for row in rows) / scored,
        "tool_calls": calls / scored,
        "tool_error_rate": sum(row["tool_errors"] for row in rows) / calls if calls else 0.0,
        "mean_tokens": sum(row["completion_tokens"] for row in rows) / scored,
        "generation_errors": float(errors),
    }


def _dataset_part(label: str) -> str:
    """A model label as part of a dataset name (served names hold '/')."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", label)


def run(context: StageContext) -> StageResult:
    """Evaluate every model on every benchmark; write `eval_results/<name>`."""
    config, lake, options = context.config, context.lake, context.options
    models = context.models["models"]
    labels = [model.label for model in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"models to compare must differ; got {labels}")
    settings = settings_from_config(config, "evaluate", cache=not options["no_cache"])
    shared = {key: value for key, value in context.fingerprint.items() if key != "models"}
    progress = context.progress
    results: list[dict[str, Any]] = []
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    examples: dict[str, int] = {}
    rollouts: list[str] = []
    errored_rows, first_error = 0, None
    every_row: list[dict[str, Any]] = []
    for benchmark in context.inputs["benchmarks"]:
        versions = []
        for model in models:
            key = config_hash({"evaluation": shared, "model": model.identity(), "benchmark": benchmark.version_id})
            inputs = (benchmark.version_id, *([model.version_id] if model.version_id else []))
            report = generate_rollouts(
                lake, benchmark, f"eval-{benchmark.dataset}-{_dataset_part(model.label)}", model, settings,
                Lineage(context.stage, config_hash=key, input_versions=inputs), key=key, samples=1,
                limit=config.evaluate.max_queries, execution=Execution.from_options(options),
                progress=None if progress is None else lambda done, total, m=model: progress(done, total, m.label),
            )  # fmt: skip
            versions.append(report.version)
        rollouts += [version.version_id for version in versions]
        columns = ["trajectory_id", "query_id", "model", "response", "segments", "completion_tokens", "finish_reason",
                   "error", "usage_prompt_tokens", "usage_completion_tokens"]  # fmt: skip
        pooled = [row for version in versions for row in lake.read(version, columns=columns).to_pylist()]
        every_row += pooled
        usable = [row for row in pooled if not errored(row)]
        tokens = {row["trajectory_id"]: row["completion_tokens"] for row in usable}
        scored = score_rows(usable, gold_answers(lake, versions[0]), config.score)
        by_model: dict[str, list[dict]] = defaultdict(list)
        for row, rollout in zip(scored, usable, strict=True):
            by_model[rollout["model"]].append(row | {"completion_tokens": tokens[row["trajectory_id"]]})
        errors = {label: sum(row["model"] == label and errored(row) for row in pooled) for label in labels}
        failed = [row["error"] for row in pooled if row["finish_reason"] == "error"]  # rejected rows stay so
        errored_rows += len(failed)
        first_error = first_error or next(iter(failed), None)
        metrics[benchmark.dataset] = {label: model_metrics(by_model[label], errors[label]) for label in labels}
        examples[benchmark.dataset] = len(pooled) // len(models)
        for label, values in metrics[benchmark.dataset].items():
            results += [
                {"model_id": label, "benchmark": benchmark.dataset, "metric": metric, "value": float(value),
                 "n_examples": len(by_model[label]) + errors[label]}
                for metric, value in values.items()
            ]  # fmt: skip
    lineage = Lineage(context.stage, config_hash=context.lineage.config_hash,
                      input_versions=(*context.lineage.input_versions, *rollouts))  # fmt: skip
    usage = usage_metrics(every_row, config)
    version = lake.commit_stage(context.name, {"eval_results": results}, lineage, {"metrics": metrics, "usage": usage},
                                errored=errored_rows)  # fmt: skip
    summary = SummaryTable(
        f"{', '.join(f'{b} ({n} questions)' for b, n in examples.items())}",
        ("benchmark", "model", *METRICS),
        [(benchmark, label, *[values[m] for m in METRICS]) for benchmark, by in metrics.items()
         for label, values in by.items()],
    )  # fmt: skip
    chart = plot_comparison(metrics, Path(options["chart"] or Path(config.runtime.data_dir) / "reports" /
                                          f"{context.name}.png"))  # fmt: skip
    outputs = {"eval_results": version["eval_results"].version_id}
    problem = errored_problem(errored_rows, sum(examples.values()) * len(models), "evaluation trajectories",
                              first_error)  # fmt: skip
    figures = {"metrics": metrics, "examples": examples, "chart": str(chart), "usage": usage}
    return StageResult(outputs, figures, summary, notes=[f"chart: {chart}", *usage_note(usage)], problem=problem)


SPEC = StageSpec(
    name="evaluate",
    kind="data",
    description="Evaluate models side by side: accuracy, quality, tool calls, length; results, table and chart.",
    reads=("queries", "models"),
    writes=("eval_results", "rollouts", "stage_reports"),
    config=("evaluate", *ENGINE_CONFIG, "tools", "score"),
    files=("rollout.system_prompt_file", "rollout.user_template_file"),
    inputs=(Input("benchmarks", "queries", "Comma-separated queries datasets (name or name@N) "
                  "[default: evaluate.benchmarks].", many=True, config="evaluate.benchmarks", short="-b"),),
    models=(Model("models", "Comma-separated model references: roles, models/<name>, model_ids, paths, "
                  "http(s)://HOST/v1#NAME.", many=True, backend="evaluate.backend", short="-m"),),
    options=(
        Option("tokenizer", str, "Tokenizer of served models [default: evaluate.tokenizer, else each served name].",
               config="evaluate.tokenizer", affects_output=False),
        NO_RAY,
        NO_CACHE,
        Option("chart", str, "Chart PNG [default: <data dir>/reports/<name>.png].", affects_output=False),
    ),
    run=run,
    default_name="eval",
)  # fmt: skip
