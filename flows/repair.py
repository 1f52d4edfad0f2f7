"""The repair flow: the repairer rewrites every low-quality or wrong trajectory, resumable by shard."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.repair import SPEC


@flow(name="repair")
def repair_flow(
    scores: str,
    model: str | None = None,
    tokenizer: str | None = None,
    actors: int = 1,
    shard_size: int = 16,
    no_ray: bool = False,
    no_cache: bool = False,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Repair a scores version with the repairer (`model`: a model reference, default repair.model)."""
    return run_stage_flow(SPEC, locals())["repairs"]
