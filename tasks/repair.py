"""The repair stage (LLM-as-Repairer): where a bad trajectory is rewritten.

Every correct-but-low-quality and every wrong trajectory of a scores version goes to the repairer
through the multi-turn engine (real tool execution), with the matching prompt variant. Both prompt
files show the question AND the bad trajectory (the paper's scripts forgot the trajectory). A repair
is accepted when its answer is correct, its format valid, and its quality, with the ideal length
set to its own length, is above 0.86 (low-quality source) or 0.80 (wrong source); otherwise it is a
hard case with its reason, retried up to `repair.max_attempts` times. Every attempt is stored.

Generation is resumable exactly like rollout: attempts are committed shard by shard to a partial
rollouts dataset, and a re-run generates only what is missing.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.config import PipelineConfig, RepairConfig, ScoreConfig, config_hash
from schemas.lake import Lake, Lineage, VersionInfo
from tasks.rollout import ModelSpec, WorkItem, digest, generate_resumable, needs_search, settings_from_config
from tasks.score import confidence, gold_answers, model_text, quality, quality_summary, repetition_score
from tasks.tir import format_problem, load_prompt
from tasks.verify import verify_answer

STAGE = "repair"
VARIANTS = {"correct_low_quality": "low_quality", "wrong": "wrong"}


def repair_prompt(question: str, trajectory: str, variant: str, config: RepairConfig | None = None) -> str:
    """The repair prompt of one variant ('low_quality' or 'wrong'): the question and the bad trajectory."""
    config = config or RepairConfig()
    path = config.wrong_prompt_file if variant == "wrong" else config.low_quality_prompt_file
    template = load_prompt(f"repair_{variant}", path)
    return template.format(question=question, trajectory=trajectory)


def own_length_quality(response: str, segments: Sequence[Mapping[str, Any]], config: ScoreConfig) -> float:
    """Quality with the ideal length set to the trajectory's own length (so l = 1)."""
    written = model_text(segments)
    repetition = repetition_score(written, config.repetition_ngram, config.repetition_min_words)
    return quality(confidence(response, config.hedging_words), 1.0, repetition, config)


def judge_repair(row: Mapping[str, Any], query: Mapping[str, Any], source_label: str, config: PipelineConfig) -> dict:
    """Correctness, quality, acceptance and, for a hard case, the reason."""
    verdict = verify_answer(row["response"], query["answers"], query["task"], config.score.correct_threshold)
    score = own_length_quality(row["response"], row["segments"], config.score)
    threshold = (
        config.repair.accept_threshold_wrong
        if source_label == "wrong"
        else config.repair.accept_threshold_correct_low_quality
    )
    problem = format_problem(row["response"])
    if row["error"]:
        reason = f"generation failed: {row['error']}"
    elif problem is not None:
        reason = f"invalid format: {problem}"
    elif not verdict.correct:
        reason = f"wrong answer: {verdict.extracted}" if verdict.extracted is not None else "no answer"
    elif score <= threshold:
        reason = f"quality {score:.3f} not above {threshold:.2f}"
    else:
        reason = None
    return {
        "correct": verdict.correct,
        "outcome": verdict.outcome,
        "quality": score,
        "accepted": reason is None,
        "reject_reason": reason,
    }


@dataclass
class RepairReport:
    """What a repair run did."""

    version: VersionInfo
    metrics: dict[str, Any]


def repair_metrics(rows: Sequence[Mapping[str, Any]], sources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sources and accepted repairs per kind, hard cases, attempts, and quality before and after."""
    accepted = {row["source_trajectory_id"]: row for row in rows if row["accepted"]}
    per_kind = {}
    for label in VARIANTS:
        kind = [source for source in sources if source["label"] == label]
        fixed = [accepted[source["trajectory_id"]] for source in kind if source["trajectory_id"] in accepted]
        per_kind[label] = {
            "sources": len(kind),
            "accepted": len(fixed),
            "hard_cases": len(kind) - len(fixed),
            "original_quality": quality_summary([source["quality"] for source in kind]),
            "accepted_quality": quality_summary([row["quality"] for row in fixed]),
            "originals_of_accepted_quality": quality_summary(
                [source["quality"] for source in kind if source["trajectory_id"] in accepted]
            ),
        }
    reasons = Counter((row["reject_reason"] or "").split(":")[0] for row in rows if not row["accepted"])
    return {
        "sources": len(sources),
        "attempts": len(rows),
        "accepted": len(accepted),
        "hard_cases": len(sources) - len(accepted),
        "by_source_label": per_kind,
        "reject_reasons": dict(reasons),
    }


def run_repair(
    lake: Lake,
    scores_ref: str,
    dataset: str,
    spec: ModelSpec,
    config: PipelineConfig,
    *,
    actors: int = 1,
    shard_size: int = 16,
    use_ray: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> RepairReport:
    """Repair the low-quality and wrong trajectories of a scores version; write `repairs/<dataset>`."""
    scores_info = lake.resolve(scores_ref, "scores")
    rollouts_info = lake.input_of(scores_info, "rollouts")
    queries = gold_answers(lake, rollouts_info)
    scores = {
        row["trajectory_id"]: row
        for row in lake.read(scores_info, columns=["trajectory_id", "label", "quality"]).to_pylist()
    }
    columns = ["trajectory_id", "query_id", "response"]
    sources = [
        row | scores[row["trajectory_id"]]
        for row in lake.read(rollouts_info, columns=columns).to_pylist()
        if scores.get(row["trajectory_id"], {}).get("label") in VARIANTS
    ]
    settings = settings_from_config(config)
    settings.sampling = dataclasses.replace(settings.sampling, temperature=config.repair.temperature)
    settings.search_required = needs_search(queries[source["query_id"]]["task"] for source in sources)
    stage_config = {
        "repair": config.repair.model_dump(mode="json"),
        "score": config.score.model_dump(mode="json"),
        "rollout_limits": dataclasses.asdict(settings.limits),
        "tools": config.tools.model_dump(mode="json"),
        "model": spec.label,
    }
    key = digest(scores_info.version_id, stage_config)
    lineage = Lineage(STAGE, config_hash=config_hash(stage_config), input_versions=(scores_info.version_id,))
    prompts = {
        source["trajectory_id"]: repair_prompt(
            queries[source["query_id"]]["question"], source["response"], VARIANTS[source["label"]], config.repair
        )
        for source in sources
    }
    rows: list[dict] = []
    pending = list(sources)
    for attempt in range(1, config.repair.max_attempts + 1):
        if not pending:
            break
        items = [
            WorkItem(
                "r" + digest(key, source["trajectory_id"], attempt)[:16],
                source["query_id"],
                attempt,
                prompts[source["trajectory_id"]],
            )
            for source in pending
        ]
        run = generate_resumable(
            lake,
            items,
            f"{dataset}.partial-{key[:12]}",
            lineage,
            spec,
            settings,
            actors=actors,
            shard_size=shard_size,
            use_ray=use_ray,
            progress=progress,
        )
        still_pending = []
        for source, generated in zip(pending, run.rows, strict=True):
            judged = judge_repair(generated, queries[source["query_id"]], source["label"], config)
            rows.append(
                {
                    "repair_id": generated["trajectory_id"],
                    "source_trajectory_id": source["trajectory_id"],
                    "query_id": source["query_id"],
                    "attempt": attempt,
                    "source_label": source["label"],
                    "prompt_variant": VARIANTS[source["label"]],
                    "model": generated["model"],
                    "prompt": generated["prompt"],
                    "response": generated["response"],
                    "segments": generated["segments"],
                    "finish_reason": generated["finish_reason"],
                    **judged,
                }
            )
            if not judged["accepted"]:
                still_pending.append(source)
        pending = still_pending
    metrics = repair_metrics(rows, sources)
    return RepairReport(lake.commit_stage(dataset, {"repairs": rows}, lineage, metrics)["repairs"], metrics)
