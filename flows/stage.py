"""The stage entry: the one call behind every stage's CLI command, Prefect flow and deployment.

`run_stage(spec, request…)` loads the config, resolves the request through the spec
(tasks/core/stage.py: inputs to version ids, model references, options, output name, fingerprint
and lineage), then runs the stage: a data stage in this process, a training stage through the
training dispatch (a Ray Train job, or in-process). Inside a Prefect flow run the work is one coarse
task whose result (the output ids) is persisted under the spec's cache key, so a re-run skips a
finished stage and a retried run resumes at the stage that failed; transient errors are retried,
permanent ones fail at once. Data never passes through Prefect: only ids do.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig, load_config
from schemas.lake import Lake
from tasks.core.errors import is_permanent
from tasks.core.stage import Progress, StageContext, StageResult, StageSpec, cache_key, prepare
from tasks.stages import evaluate, grpo, pairs, repair, reward_model, rollout, score, sft

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        rollout.SPEC,
        score.SPEC,
        repair.SPEC,
        pairs.SPEC,
        sft.SPEC,
        reward_model.SPEC,
        grpo.SPEC,
        evaluate.SPEC,
    )
}
REQUEST_EXTRAS = ("name", "profile", "overrides")  # what every stage flow takes besides the spec's parameters


class StageIncomplete(RuntimeError):
    """A stage committed its output, but some of it failed (errored trajectories): worth a retry."""


def split_request(spec: StageSpec, arguments: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A flow's or command's arguments, split into the spec's inputs, models and options."""
    return {
        "inputs": {item.name: arguments.get(item.name) for item in spec.inputs},
        "models": {model.name: arguments.get(model.name) for model in spec.models},
        "options": {option.name: arguments.get(option.name) for option in spec.options},
    }


def prepare_stage(
    spec: StageSpec,
    arguments: Mapping[str, Any],
    config: PipelineConfig,
    progress: Progress | None = None,
) -> StageContext:
    """Resolve a request (a flow's or command's arguments) into a stage context."""
    request = split_request(spec, arguments)
    lake = Lake.from_config(config.runtime)
    return prepare(spec, config, lake, name=arguments.get("name"), progress=progress, **request)


def execute(spec: StageSpec, context: StageContext) -> StageResult:
    """Run a prepared stage: training stages through the training dispatch, the others here."""
    if spec.kind != "train":
        return spec.run(context)
    from tasks.training.dispatch import run_training_job

    return run_training_job(spec.run, context)


def in_flow_run() -> bool:
    """Whether this process is inside a Prefect flow run (without importing Prefect when unused)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def run_stage(
    spec: StageSpec,
    arguments: Mapping[str, Any],
    profile: str = "cpu",
    overrides: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> StageResult:
    """Run one stage for a request; inside a Prefect flow run, as its cached, retried task."""
    config = load_config(profile, list(overrides or []))
    if in_flow_run():
        context = prepare_stage(spec, arguments, config)
        outputs = _run_stage_task(_stage_task(spec.name), key=cache_key(context), context=context)
        return StageResult(outputs, {})
    context = prepare_stage(spec, arguments, config, progress)
    return execute(spec, context)


def run_stage_flow(spec: StageSpec, arguments: Mapping[str, Any]) -> dict[str, str]:
    """A stage flow's body: run the stage with the flow's own arguments; return its output ids."""
    return run_stage(spec, arguments, arguments.get("profile") or "cpu", arguments.get("overrides")).outputs


# -- Prefect ---------------------------------------------------------------------------------------


def transient_failure(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry a failed stage task unless its error is permanent."""
    return not is_permanent(state.result(raise_on_failure=False))


def _task_body(key: str, context: StageContext) -> dict[str, str]:
    """The stage's work as a Prefect task: progress to the run's log, metrics to an artifact."""
    spec = STAGES[context.stage]
    context.progress = log_progress(spec.name, counted_by_info=spec.kind == "data")
    with _gpu_slot(spec, context.config):
        result = execute(spec, context)
    publish(spec, context, result)
    if result.problem:
        raise StageIncomplete(f"{spec.name}: {result.problem} (outputs so far: {result.outputs})")
    return result.outputs


@functools.cache
def _stage_task(name: str) -> Any:
    """The coarse Prefect task of one stage (a distinct task per stage, named after it)."""
    from prefect import task

    def body(key: str, context: StageContext) -> dict[str, str]:
        return _task_body(key, context)

    body.__name__ = body.__qualname__ = f"{name}_task"
    return task(body, name=name, persist_result=True, retry_condition_fn=transient_failure)


def _cache_key(_context: Any, parameters: Mapping[str, Any]) -> str:
    return parameters["key"]


def _run_stage_task(stage_task: Any, key: str, context: StageContext) -> dict[str, str]:
    """Call a stage task with the configured retries, its result kept under the data directory."""
    from prefect.cache_policies import CacheKeyFnPolicy

    runtime = context.config.runtime
    cache = CacheKeyFnPolicy(cache_key_fn=_cache_key).configure(
        key_storage=Path(runtime.data_dir).resolve() / "prefect" / "cache"
    )
    return stage_task.with_options(
        retries=runtime.stage_retries, retry_delay_seconds=runtime.stage_retry_delay_s, cache_policy=cache
    )(key=key, context=context)


def _gpu_slot(spec: StageSpec, config: PipelineConfig) -> contextlib.AbstractContextManager:
    """The global concurrency slot `gpu`, held by training stages that use GPUs."""
    if spec.kind != "train" or not config.runtime.train_gpus:
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency("gpu", occupy=config.runtime.train_gpus)


def log_progress(label: str, counted_by_info: bool = True) -> Callable[..., None]:
    """A progress callback that logs to the flow run about every 10 %, per counted thing when
    `counted_by_info` (a data stage's info names what it counts; a training stage's is its loss)."""
    from prefect import get_run_logger

    logger = get_run_logger()
    last: dict[str, int] = {}

    def report(done: int, total: int, info: str = "") -> None:
        key = info if counted_by_info else ""
        tenth = done * 10 // max(1, total)
        if tenth > last.get(key, -1):
            last[key] = tenth
            logger.info("%s: %d/%d %s", label, done, total, info)

    return report


def publish(spec: StageSpec, context: StageContext, result: StageResult) -> None:
    """The stage's Prefect artifacts: a markdown one with its summary table, metrics and notes, and a link
    to its chart where it drew one."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    key = f"{spec.command}-{context.name}".lower().replace("_", "-").replace(".", "-").replace("@", "-")
    outputs = ", ".join(f"`{value}`" for value in result.outputs.values())
    lines = [f"## {spec.name}: {context.name}", "", spec.description, "", f"Wrote {outputs}.", ""]
    if result.summary is not None:
        lines += [f"**{result.summary.title}**", "", *_markdown_table(result.summary.columns, result.summary.rows), ""]
    scalars = [(name, value) for name, value in result.metrics.items() if not isinstance(value, dict | list)]
    if scalars:
        lines += [*_markdown_table(("metric", "value"), scalars), ""]
    lines += [f"- {note}" for note in result.notes]
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=f"{spec.name} {context.name}")
    chart = result.metrics.get("chart")
    if chart:
        create_link_artifact(key=f"{key}-chart", link=Path(chart).resolve().as_uri(), link_text=Path(chart).name,
                             description=f"{spec.name} {context.name}: the comparison chart")  # fmt: skip


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table (cells escaped)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(map(cell, columns)) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(map(cell, row)) + " |" for row in rows),
    ]
