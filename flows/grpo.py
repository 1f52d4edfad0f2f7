"""The grpo flow: GRPO from the SFT policy with multi-turn tool rollouts and the RM bonus (as a Ray job)."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.grpo import SPEC


@flow(name="grpo")
def grpo_flow(
    queries: str,
    policy: str | None = None,
    reward_model: str | None = None,
    max_steps: int | None = None,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """GRPO on a queries version from `policy` with `reward_model` (model references or a serve-rm URL)."""
    return run_stage_flow(SPEC, locals())["model"]
