"""The reward_model flow: train the trajectory reward model on a preference_pairs version (as a Ray job)."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_task, stage_key, stage_setup, stage_task, train
from schemas.config import PipelineConfig


def reward_model_task(key: str, pairs: str, name: str, config: PipelineConfig) -> str:
    """Train and register; return the model id."""
    return train("reward_model", config, pairs_ref=pairs, name=name)


reward_model_stage = stage_task(reward_model_task)


@flow(name="reward-model")
def reward_model_flow(
    pairs: str, name: str | None = None, profile: str = "cpu", overrides: list[str] | None = None
) -> str:
    """Bradley-Terry RM on a preference_pairs version; returns the model id."""
    config, lake = stage_setup(profile, overrides)
    pairs_info = lake.resolve(pairs, "preference_pairs")
    key = stage_key("reward_model", config, ["reward_model", "sft"], [pairs_info.version_id])
    return run_stage_task(reward_model_stage, key=key, pairs=pairs_info.version_id,
                          name=name or f"{pairs_info.dataset}-rm", config=config)  # fmt: skip
