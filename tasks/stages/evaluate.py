"""The evaluate stage: every model side by side on the same benchmarks, with the same engine and tools.

Models are any model references (roles, registered models, paths, served models). Each (model,
benchmark) is a rollout (one trajectory per query, greedy by default) written as its own
`rollouts/eval-<benchmark>-<model>` version, keyed by that model and benchmark alone, so evaluation
trajectories are resumable and queryable like any other and adding a model reuses the others'. They
are scored together by the score stage's rules: quality's ideal length n* is the shortest correct
answer among the models compared, so a model is not rewarded for being short and wrong. Errored
trajectories are counted, not scored as answers. Metrics per DESIGN.md §1 go to `eval_results` with
95% intervals (one row per model, benchmark, subset and metric), and each pair of models compared on
the same questions to `eval_comparisons` (tasks/scoring/evaluation.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from schemas.config import ScoreConfig, config_hash
from schemas.lake import Lake, Lineage, VersionInfo
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
from tasks.scoring.evaluation import ALL, METRICS, evaluation_rows, interval_cell, significance_notes
from tasks.scoring.quality import errored, score_rows


def _dataset_part(label: str) -> str:
    """A model label as part of a dataset name (served names hold '/')."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", label)


def _display_labels(models: Sequence[Any], names: str | None) -> dict[str, str]:
    """Each model's label and the name it is shown under (`--labels`, in the models' order)."""
    labels = [model.label for model in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"models to compare must differ; got {labels}")
    shown = [name.strip() for name in names.split(",")] if names else labels
    if len(shown) != len(labels) or not all(shown):
        raise ValueError(f"--labels names {len(shown)} model(s), not the {len(labels)} given to --models")
    return dict(zip(labels, shown, strict=True))


def score_evaluation(
    lake: Lake, versions: Sequence[VersionInfo], labels: Iterable[str], score: ScoreConfig
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """The models' evaluation rollouts of one benchmark scored together: every row read, the scored rows
    by model (with completion_tokens), and the query ids each model's errored trajectories had."""
    columns = ["trajectory_id", "query_id", "model", "response", "segments", "completion_tokens", "finish_reason",
               "error", "usage_prompt_tokens", "usage_completion_tokens"]  # fmt: skip
    pooled = [row for version in versions for row in lake.read(version, columns=columns).to_pylist()]
    usable = [row for row in pooled if not errored(row)]
    tokens = {row["trajectory_id"]: row["completion_tokens"] for row in usable}
    scored = score_rows(usable, gold_answers(lake, versions[0]), score)
    by_model: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for row, rollout in zip(scored, usable, strict=True):
        by_model[rollout["model"]].append(row | {"completion_tokens": tokens[row["trajectory_id"]]})
    failed = {label: [row["query_id"] for row in pooled if row["model"] == label and errored(row)]
              for label in by_model}  # fmt: skip
    return pooled, by_model, failed


def run(context: StageContext) -> StageResult:
    """Evaluate every model on every benchmark; write `eval_results/<name>` and `eval_comparisons/<name>`."""
    config, lake, options = context.config, context.lake, context.options
    models = context.models["models"]
    labels = _display_labels(models, options["labels"])
    settings = settings_from_config(config, "evaluate", cache=not options["no_cache"])
    shared = {key: value for key, value in context.fingerprint.items() if key != "models"}
    progress = context.progress
    results: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
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
        pooled, by_model, failed_queries = score_evaluation(lake, versions, labels, config.score)
        every_row += pooled
        failed = [row["error"] for row in pooled if row["finish_reason"] == "error"]  # rejected rows stay so
        errored_rows += len(failed)
        first_error = first_error or next(iter(failed), None)
        query_columns = ["query_id", "task", "metadata"]
        queries = {row["query_id"]: row for row in lake.read(benchmark, columns=query_columns).to_pylist()}
        benchmark_results, benchmark_comparisons = evaluation_rows(
            benchmark.dataset, queries, by_model, failed_queries, labels, config.evaluate.strata_key
        )
        results += benchmark_results
        comparisons += benchmark_comparisons
        examples[benchmark.dataset] = len(pooled) // len(models)
    metrics = {
        benchmark: {labels[model]: {row["metric"]: row["value"] for row in results
                                    if (row["benchmark"], row["model_id"], row["subset"]) == (benchmark, model, ALL)}
                    for model in labels}
        for benchmark in examples
    }  # fmt: skip
    lineage = Lineage(context.stage, config_hash=context.lineage.config_hash,
                      input_versions=(*context.lineage.input_versions, *rollouts))  # fmt: skip
    usage = usage_metrics(every_row, config)
    version = lake.commit_stage(context.name, {"eval_results": results, "eval_comparisons": comparisons}, lineage,
                                {"metrics": metrics, "usage": usage}, errored=errored_rows)  # fmt: skip
    overall = {(row["benchmark"], row["model_id"], row["metric"]): row for row in results if row["subset"] == ALL}
    summary = SummaryTable(
        f"{', '.join(f'{b} ({n} questions)' for b, n in examples.items())}; 95% intervals",
        ("benchmark", "model", *METRICS),
        [(benchmark, labels[model], *[interval_cell(overall[benchmark, model, metric]) for metric in METRICS])
         for benchmark in examples for model in labels],
    )  # fmt: skip
    chart = plot_comparison(list(overall.values()), Path(options["chart"] or Path(config.runtime.data_dir) / "reports" /
                                          f"{context.name}.png"))  # fmt: skip
    outputs = {key: version[key].version_id for key in ("eval_results", "eval_comparisons")}
    problem = errored_problem(errored_rows, sum(examples.values()) * len(models), "evaluation trajectories",
                              first_error)  # fmt: skip
    figures = {"metrics": metrics, "examples": examples, "chart": str(chart), "usage": usage}
    notes = [*significance_notes(comparisons), f"chart: {chart}", *usage_note(usage)]
    return StageResult(outputs, figures, summary, notes=notes, problem=problem)


SPEC = StageSpec(
    name="evaluate",
    kind="data",
    description="Evaluate models side by side: accuracy, quality, tool calls, length; results, table and chart.",
    reads=("queries", "models"),
    writes=("eval_results", "eval_comparisons", "rollouts", "stage_reports"),
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
        Option("labels", str, "Comma-separated names to show the models under, in their order "
               "(e.g. their roles) [default: each model's label]."),
        Option("chart", str, "Chart PNG [default: <data dir>/reports/<name>.png].", affects_output=False),
    ),
    run=run,
    default_name="eval",
)  # fmt: skip
