"""The grpo flow: GRPO from the SFT policy with multi-turn tool rollouts and the RM bonus (as a Ray job)."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_task, stage_key, stage_setup, stage_task, train
from schemas.config import PipelineConfig
from tasks.sft import registered_model


def grpo_task(key: str, queries: str, name: str, policy: str, reward_model: str | None, config: PipelineConfig) -> str:
    """Train and register; return the model id."""
    return train("grpo", config, queries_ref=queries, name=name, policy=policy, reward_model=reward_model)


grpo_stage = stage_task(grpo_task)


@flow(name="grpo")
def grpo_flow(
    queries: str,
    policy: str | None = None,
    reward_model: str | None = None,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """GRPO on a queries version from `policy` (model_id, role or path) with `reward_model` (id, path, URL)."""
    config, lake = stage_setup(profile, overrides)
    queries_info = lake.resolve(queries, "queries")
    policy = policy or config.grpo.policy_model
    reward_model = reward_model or config.grpo.reward_model
    inputs = [queries_info.version_id, registered_model(lake, policy, config.runtime.data_dir)[0], reward_model]
    key = stage_key("grpo", config, ["grpo", "rollout", "tools", "score"], inputs)
    return run_stage_task(grpo_stage, key=key, queries=queries_info.version_id,
                          name=name or f"{queries_info.dataset}-grpo", policy=policy, reward_model=reward_model,
                          config=config)  # fmt: skip
