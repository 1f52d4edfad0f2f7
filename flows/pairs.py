"""The pairs flow: SFT examples and preference pairs from a repairs version."""

from __future__ import annotations

from prefect import flow

from flows.stage import publish, run_stage_task, stage_key, stage_setup, stage_task
from schemas.config import PipelineConfig
from tasks.pairs import run_pairs


def pairs_task(key: str, repairs: str, name: str, config: PipelineConfig) -> dict[str, str]:
    """Build both tables; return their version ids."""
    from schemas.lake import Lake

    report = run_pairs(Lake.from_config(config.runtime), repairs, name, config)
    publish("pairs", name, report.metrics, f"{report.sft_examples.version_id}, {report.preference_pairs.version_id}")
    return {"sft_examples": report.sft_examples.version_id, "preference_pairs": report.preference_pairs.version_id}


pairs_stage = stage_task(pairs_task)


@flow(name="pairs")
def pairs_flow(
    repairs: str, name: str | None = None, profile: str = "cpu", overrides: list[str] | None = None
) -> dict[str, str]:
    """Build sft_examples and preference_pairs from a repairs version."""
    config, lake = stage_setup(profile, overrides)
    repairs_info = lake.resolve(repairs, "repairs")
    key = stage_key("pairs", config, ["pairs", "rollout"], [repairs_info.version_id])
    return run_stage_task(pairs_stage, key=key, repairs=repairs_info.version_id,
                          name=name or repairs_info.dataset, config=config)  # fmt: skip
