"""The repair flow: the repairer rewrites every low-quality or wrong trajectory, resumable by shard."""

from __future__ import annotations

from prefect import flow

from flows.stage import log_progress, publish, run_stage_task, stage_key, stage_setup, stage_task
from schemas.config import PipelineConfig
from tasks.repair import run_repair
from tasks.rollout import ModelSpec, model_spec


def repair_task(key: str, scores: str, name: str, spec: ModelSpec, config: PipelineConfig) -> str:
    """Repair; return the repairs version id."""
    from schemas.lake import Lake

    report = run_repair(Lake.from_config(config.runtime), scores, name, spec, config, progress=log_progress("repair"))
    publish("repair", name, report.metrics, f"{report.version.version_id} from {scores}")
    return report.version.version_id


repair_stage = stage_task(repair_task)


@flow(name="repair")
def repair_flow(
    scores: str,
    name: str | None = None,
    model: str | None = None,
    tokenizer: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str:
    """Repair a scores version with the repairer (`model`: path or URL, default repair.model's build)."""
    config, lake = stage_setup(profile, overrides)
    scores_info = lake.resolve(scores, "scores")
    spec = model_spec(config, model, config.repair.model, config.repair.backend, tokenizer)
    key = stage_key("repair", config, ["repair", "score", "rollout", "tools"], [scores_info.version_id, spec.model])
    return run_stage_task(repair_stage, key=key, scores=scores_info.version_id,
                          name=name or scores_info.dataset, spec=spec, config=config)  # fmt: skip
