"""The reward-model flow: train the trajectory reward model on a preference_pairs version (as a Ray job)."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.reward_model import SPEC


@flow(name="reward-model")
def reward_model_flow(
    pairs: str,
    base: str | None = None,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Bradley-Terry RM on a preference_pairs version; returns the model id."""
    return run_stage_flow(SPEC, locals())["model"]
