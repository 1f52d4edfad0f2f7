"""What every stage flow shares: its config and lake, the cache key, retries, progress and the artifact.

A stage flow resolves its inputs to version ids, then calls one coarse Prefect task whose result (a
version or model id) is persisted under a cache key built from the stage, its config sections, its
input versions and the code version. So a re-run skips finished stages, and a retried pipeline run
resumes at the stage that failed. Data never passes through Prefect: only ids do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig, config_hash, load_config
from schemas.lake import Lake, LakeError, code_version

# Errors a retry cannot fix: bad input, bad config, a missing model or version. Everything else (a
# lost Ray worker, a server that timed out, a full disk that was cleaned) is worth another attempt.
PERMANENT_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, LakeError)


def stage_setup(profile: str, overrides: Sequence[str] | None) -> tuple[PipelineConfig, Lake]:
    """The run's config and lake."""
    config = load_config(profile, list(overrides or []))
    return config, Lake.from_config(config.runtime)


def stage_key(stage: str, config: PipelineConfig, sections: Sequence[str], inputs: Sequence[str | None]) -> str:
    """The cache key: stage, the config sections it reads, its input versions, the code version, and
    which lake (version ids are only unique within one)."""
    runtime = config.runtime
    payload = {
        "sections": {section: config.section_hash(section) for section in sections},
        "inputs": list(inputs),
        "code": code_version(),
        "lake": [str(Path(runtime.data_dir).resolve()), runtime.lake_catalog_url, runtime.lake_data_path],
    }
    return f"{stage}-{config_hash(payload)}"


def _cache_key(_context: Any, parameters: Mapping[str, Any]) -> str:
    return parameters["key"]


def transient_failure(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry a failed stage task unless its error is permanent."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, PERMANENT_ERRORS)


def stage_task(function: Callable[..., Any]) -> Any:
    """A coarse Prefect task: result persisted, transient errors retried (the cache is set per call)."""
    from prefect import task

    return task(
        function,
        name=function.__name__.removesuffix("_task"),
        persist_result=True,
        retry_condition_fn=transient_failure,
    )


def run_stage_task(stage_task_: Any, **parameters: Any) -> Any:
    """Call a stage task (its parameters include `config`) with the configured retries and delay; its
    result is kept under the data directory, next to the lake it names."""
    from prefect.cache_policies import CacheKeyFnPolicy

    runtime = parameters["config"].runtime
    cache = CacheKeyFnPolicy(cache_key_fn=_cache_key).configure(
        key_storage=Path(runtime.data_dir).resolve() / "prefect" / "cache"
    )
    return stage_task_.with_options(
        retries=runtime.stage_retries, retry_delay_seconds=runtime.stage_retry_delay_s, cache_policy=cache
    )(**parameters)


def log_progress(label: str) -> Callable[..., None]:
    """A progress callback that logs to the flow run about every 10 %."""
    from prefect import get_run_logger

    logger = get_run_logger()
    last: dict[str, int] = {}

    def report(done: int, total: int, info: str = "") -> None:
        tenth = done * 10 // max(1, total)
        if done == total or tenth > last.get(label, -1):
            last[label] = tenth
            logger.info("%s: %d/%d %s", label, done, total, info)

    return report


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Nested metrics as rows of (metric, value) for a table artifact."""
    rows: list[dict[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += flat_metrics(value, f"{name}.")
        else:
            rows.append({"metric": name, "value": value})
    return rows


def publish(stage: str, name: str, metrics: Mapping[str, Any], description: str) -> None:
    """A Prefect table artifact with the stage's counts and metrics."""
    from prefect.artifacts import create_table_artifact

    key = f"{stage}-{name}".lower().replace("_", "-").replace(".", "-").replace("@", "-").replace("/", "-")
    create_table_artifact(key=key, table=flat_metrics(metrics), description=description)


def train(stage: str, config: PipelineConfig, **arguments: Any) -> str:
    """Run a training stage as a Ray job (holding the `gpu` concurrency slot when it uses GPUs); publish
    its metrics; return the model id."""
    import contextlib

    from tasks.distributed import run_training_job

    slot: Any = contextlib.nullcontext()
    if config.runtime.train_gpus:
        from prefect.concurrency.sync import concurrency

        slot = concurrency("gpu", occupy=config.runtime.train_gpus)
    with slot:
        report = run_training_job(stage, config, log_progress(stage), **arguments)
    publish(stage, report.model_id, report.metrics, f"{report.model_id} at {report.path}")
    return report.model_id
