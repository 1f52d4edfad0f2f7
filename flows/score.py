"""The score flow: verify, measure quality and label every trajectory of a rollouts version."""

from __future__ import annotations

from prefect import flow

from flows.stage import publish, run_stage_task, stage_key, stage_setup, stage_task
from schemas.config import PipelineConfig
from tasks.score import run_score


def score_task(key: str, rollouts: str, name: str, config: PipelineConfig) -> str:
    """Score the rollouts; return the scores version id."""
    from schemas.lake import Lake

    report = run_score(Lake.from_config(config.runtime), rollouts, name, config)
    publish("score", name, report.metrics, f"{report.version.version_id} from {rollouts}")
    return report.version.version_id


score_stage = stage_task(score_task)


@flow(name="score")
def score_flow(rollouts: str, name: str | None = None, profile: str = "cpu", overrides: list[str] | None = None) -> str:
    """Score a rollouts version (name, name@N or rollouts/name@N)."""
    config, lake = stage_setup(profile, overrides)
    rollouts_info = lake.resolve(rollouts, "rollouts")
    key = stage_key("score", config, ["score"], [rollouts_info.version_id])
    return run_stage_task(score_stage, key=key, rollouts=rollouts_info.version_id,
                          name=name or rollouts_info.dataset, config=config)  # fmt: skip
