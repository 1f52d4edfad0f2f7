"""The evaluate flow: models side by side on benchmarks; results in eval_results and a chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow

from flows.stage import log_progress, publish, run_stage_task, stage_key, stage_setup, stage_task
from schemas.config import PipelineConfig
from tasks.evaluate import plot_comparison, run_evaluate
from tasks.sft import registered_model


def evaluate_task(key: str, models: list[str], benchmarks: list[str], name: str, config: PipelineConfig) -> str:
    """Evaluate; return the eval_results version id."""
    from schemas.lake import Lake

    loggers: dict[str, Callable[..., None]] = {}

    def progress(label: str, done: int, total: int) -> None:
        loggers.setdefault(label, log_progress(f"eval {label}"))(done, total)

    report = run_evaluate(Lake.from_config(config.runtime), models, benchmarks, name, config, progress=progress)
    chart = plot_comparison(report.metrics, Path(config.runtime.data_dir) / "reports" / f"{name}.png")
    publish("evaluate", name, report.metrics, f"{report.version.version_id}; chart {chart}")
    return report.version.version_id


evaluate_stage = stage_task(evaluate_task)


@flow(name="evaluate")
def evaluate_flow(
    models: list[str],
    benchmarks: list[str],
    name: str = "eval",
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Evaluate models (model_ids, roles or paths) on benchmarks (queries datasets)."""
    config, lake = stage_setup(profile, overrides)
    versions = [lake.resolve(benchmark, "queries").version_id for benchmark in benchmarks]
    paths = [registered_model(lake, model, config.runtime.data_dir)[0] for model in models]
    key = stage_key("evaluate", config, ["evaluate", "rollout", "tools", "score"], [*versions, *paths])
    return run_stage_task(evaluate_stage, key=key, models=models, benchmarks=versions, name=name,
                          config=config)  # fmt: skip
