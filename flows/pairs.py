"""The pairs flow: SFT examples and preference pairs from a repairs version."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.pairs import SPEC


@flow(name="pairs")
def pairs_flow(
    repairs: str, name: str | None = None, profile: str = "cpu", overrides: list[str] | None = None
) -> dict[str, str]:
    """Build sft_examples and preference_pairs from a repairs version; return both version ids."""
    return run_stage_flow(SPEC, locals())
