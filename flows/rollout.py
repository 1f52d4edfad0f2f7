"""The rollout flow: N trajectories per query from the teacher, resumable shard by shard."""

from __future__ import annotations

from prefect import flow

from flows.stage import log_progress, publish, run_stage_task, stage_key, stage_setup, stage_task
from schemas.config import PipelineConfig
from tasks.rollout import ModelSpec, model_spec, run_rollout


def rollout_task(key: str, queries: str, name: str, spec: ModelSpec, config: PipelineConfig) -> str:
    """Generate (or resume) the rollouts; return the version id."""
    from schemas.lake import Lake

    report = run_rollout(
        Lake.from_config(config.runtime), queries, name, spec, config, progress=log_progress("rollout")
    )
    metrics = {"trajectories": report.trajectories, "generated": report.generated, **report.finish_reasons}
    publish("rollout", name, metrics, f"{report.version.version_id} from {queries}")
    return report.version.version_id


rollout_stage = stage_task(rollout_task)


@flow(name="rollout")
def rollout_flow(
    queries: str,
    name: str | None = None,
    model: str | None = None,
    tokenizer: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Roll out the teacher (`model`: path or URL, default rollout.model's bootstrap build) on a queries version."""
    config, lake = stage_setup(profile, overrides)
    queries_info = lake.resolve(queries, "queries")
    spec = model_spec(config, model, config.rollout.model, config.rollout.backend, tokenizer)
    key = stage_key("rollout", config, ["rollout", "tools"], [queries_info.version_id, spec.model])
    name = name or f"{queries_info.dataset}-rollout"
    return run_stage_task(rollout_stage, key=key, queries=queries_info.version_id, name=name, spec=spec,
                          config=config)  # fmt: skip
