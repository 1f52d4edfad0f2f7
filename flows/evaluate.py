"""The evaluate flow: models side by side on benchmarks; results with intervals, paired comparisons, a chart."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.evaluate import SPEC


@flow(name="evaluate")
def evaluate_flow(
    models: list[str],
    benchmarks: list[str] | None = None,
    tokenizer: str | None = None,
    no_ray: bool = False,
    no_cache: bool = False,
    labels: str | None = None,
    chart: str | None = None,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Evaluate models (model references) on benchmarks (queries datasets; default evaluate.benchmarks)."""
    return run_stage_flow(SPEC, locals())["eval_results"]
