"""The sft flow: fine-tune the policy on an sft_examples version (as a Ray job)."""

from __future__ import annotations

from prefect import flow

from flows.stage import run_stage_task, stage_key, stage_setup, stage_task, train
from schemas.config import PipelineConfig


def sft_task(key: str, examples: str, name: str, config: PipelineConfig) -> str:
    """Train and register; return the model id."""
    return train("sft", config, sft_ref=examples, name=name)


sft_stage = stage_task(sft_task)


@flow(name="sft")
def sft_flow(examples: str, name: str | None = None, profile: str = "cpu", overrides: list[str] | None = None) -> str:
    """SFT on an sft_examples version (name, name@N or sft_examples/name@N); returns the model id."""
    config, lake = stage_setup(profile, overrides)
    examples_info = lake.resolve(examples, "sft_examples")
    key = stage_key("sft", config, ["sft"], [examples_info.version_id])
    return run_stage_task(sft_stage, key=key, examples=examples_info.version_id,
                          name=name or examples_info.dataset, config=config)  # fmt: skip
