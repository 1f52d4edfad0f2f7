"""The sft flow: fine-tune the policy on an sft_examples version (as a Ray job)."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_flow
from tasks.stages.sft import SPEC


@flow(name="sft")
def sft_flow(
    examples: str,
    base: str | None = None,
    max_steps: int | None = None,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """SFT on an sft_examples version (name, name@N or sft_examples/name@N); returns the model id."""
    return run_stage_flow(SPEC, locals())["model"]
