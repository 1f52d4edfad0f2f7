"""The rollout flow: N trajectories per query from the teacher, resumable shard by shard."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.rollout import SPEC


@flow(name="rollout")
def rollout_flow(
    queries: str,
    model: str | None = None,
    tokenizer: str | None = None,
    n: int | None = None,
    limit: int | None = None,
    actors: int = 1,
    shard_size: int = 16,
    no_ray: bool = False,
    no_cache: bool = False,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Roll out the teacher (`model`: a model reference, default rollout.model) on a queries version."""
    return run_stage_flow(SPEC, locals())["rollouts"]
