"""The score flow: verify, measure quality and label every trajectory of a rollouts version."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.score import SPEC


@flow(name="score")
def score_flow(rollouts: str, name: str | None = None, profile: str = "cpu", overrides: list[str] | None = None) -> str:
    """Score a rollouts version (name, name@N or rollouts/name@N)."""
    return run_stage_flow(SPEC, locals())["scores"]
