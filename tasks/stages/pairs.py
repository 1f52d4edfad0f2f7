"""The pairs stage: where the training data is made.

- sft_examples = high-quality trajectories + accepted repairs, each with its segments (the token mask
  of training comes from them) and its origin;
- preference_pairs = (prompt, chosen = accepted repair, rejected = its original), with provenance:
  the source label and both quality scores and outcomes.

The prompt of both is the policy's user message for the question (the repair prompt is only how the
repairer was asked; the policy learns to answer the question). Exact duplicates are removed and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.config import PipelineConfig
from tasks.core.errors import StageInputError
from tasks.core.hashing import digest
from tasks.core.lineage import gold_answers
from tasks.core.prompts import Prompts
from tasks.core.stage import Input, StageContext, StageResult, StageSpec, SummaryTable
from tasks.core.trajectory import response_text
from tasks.scoring.quality import quality_summary


def deduplicate(rows: Sequence[dict], key: Sequence[str]) -> tuple[list[dict], int]:
    """Rows without exact duplicates on `key` (the first is kept), and how many were removed."""
    seen: set[tuple] = set()
    kept = []
    for row in rows:
        identity = tuple(str(row[name]) for name in key)
        if identity not in seen:
            seen.add(identity)
            kept.append(row)
    return kept, len(rows) - len(kept)


def build_rows(
    rollouts: Mapping[str, Mapping[str, Any]],
    scores: Mapping[str, Mapping[str, Any]],
    repairs: Sequence[Mapping[str, Any]],
    user_messages: Mapping[str, str],
    config: PipelineConfig,
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(sft_examples rows, preference_pairs rows, duplicates removed per table)."""
    sft: list[dict] = []
    if config.pairs.include_high_quality:
        for trajectory_id, score in scores.items():
            if score["label"] == "high_quality":
                rollout = rollouts[trajectory_id]
                sft.append(
                    {
                        "example_id": "s" + digest("high_quality", trajectory_id)[:16],
                        "query_id": rollout["query_id"],
                        "origin": "high_quality",
                        "source_id": trajectory_id,
                        "prompt": user_messages[rollout["query_id"]],
                        "segments": rollout["segments"],
                        "quality": score["quality"],
                    }
                )
    pairs: list[dict] = []
    for repair in repairs:
        if not repair["accepted"]:
            continue
        if config.pairs.include_repairs:
            sft.append(
                {
                    "example_id": "s" + digest("repair", repair["repair_id"])[:16],
                    "query_id": repair["query_id"],
                    "origin": "repair",
                    "source_id": repair["repair_id"],
                    "prompt": user_messages[repair["query_id"]],
                    "segments": repair["segments"],
                    "quality": repair["quality"],
                }
            )
        original = rollouts[repair["source_trajectory_id"]]
        source_score = scores[repair["source_trajectory_id"]]
        pairs.append(
            {
                "pair_id": "p" + digest(repair["repair_id"])[:16],
                "query_id": repair["query_id"],
                "prompt": user_messages[repair["query_id"]],
                "chosen": repair["response"],
                "rejected": original["response"],
                "chosen_segments": repair["segments"],
                "rejected_segments": original["segments"],
                "source_label": repair["source_label"],
                "repair_id": repair["repair_id"],
                "source_trajectory_id": repair["source_trajectory_id"],
                "chosen_quality": repair["quality"],
                "rejected_quality": source_score["quality"],
                "chosen_outcome": repair["outcome"],
                "rejected_outcome": source_score["outcome"],
            }
        )
    removed = {"sft_examples": 0, "preference_pairs": 0}
    if config.pairs.deduplicate:
        for row in sft:
            row["_text"] = response_text(row["segments"])
        sft, removed["sft_examples"] = deduplicate(sft, ("prompt", "_text"))
        for row in sft:
            del row["_text"]
        pairs, removed["preference_pairs"] = deduplicate(pairs, ("prompt", "chosen", "rejected"))
    return sft, pairs, removed


def run(context: StageContext) -> StageResult:
    """Build `sft_examples/<name>` and `preference_pairs/<name>` from a repairs version and its scores."""
    config, lake = context.config, context.lake
    repairs_info = context.inputs["repairs"]
    scores_info = lake.input_of(repairs_info, "scores")
    rollouts_info = lake.input_of(scores_info, "rollouts")
    queries = gold_answers(lake, rollouts_info)
    prompts = Prompts.from_config(config)
    user_messages = {query_id: prompts.user(row["question"]) for query_id, row in queries.items()}
    score_columns = ["trajectory_id", "label", "quality", "outcome"]
    scores = {row["trajectory_id"]: row for row in lake.read(scores_info, columns=score_columns).to_pylist()}
    rollout_columns = ["trajectory_id", "query_id", "response", "segments"]
    rollouts = {row["trajectory_id"]: row for row in lake.read(rollouts_info, columns=rollout_columns).to_pylist()}
    repairs = lake.read(repairs_info).to_pylist()
    sft, pairs, removed = build_rows(rollouts, scores, repairs, user_messages, config)
    high_quality = sum(row["label"] == "high_quality" for row in scores.values())
    accepted = sum(row["accepted"] for row in repairs)
    if not sft:
        used = [kind for kind, on in (("high-quality trajectories", config.pairs.include_high_quality),
                                      ("accepted repairs", config.pairs.include_repairs)) if on]  # fmt: skip
        raise StageInputError(
            f"sft_examples/{context.name}: 0 SFT examples from {repairs_info.version_id} "
            f"(it uses {' and '.join(used) or 'nothing: pairs.include_* are both off'}; "
            f"{scores_info.version_id} has {high_quality} high-quality trajectories, and {accepted} of "
            f"{len(repairs)} repair attempts were accepted); nothing to train on"
        )
    metrics = {
        "sft_examples": len(sft),
        "sft_high_quality": sum(row["origin"] == "high_quality" for row in sft),
        "sft_repairs": sum(row["origin"] == "repair" for row in sft),
        "preference_pairs": len(pairs),
        "pairs_by_source_label": {
            label: sum(row["source_label"] == label for row in pairs) for label in ("correct_low_quality", "wrong")
        },
        "duplicates_removed": removed,
        "chosen_quality": quality_summary([row["chosen_quality"] for row in pairs]),
        "rejected_quality": quality_summary([row["rejected_quality"] for row in pairs]),
    }
    versions = lake.commit_stage(context.name, {"sft_examples": sft, "preference_pairs": pairs}, context.lineage,
                                 metrics)  # fmt: skip
    summary = SummaryTable(
        "training data",
        ("table", "rows", "from", "duplicates removed"),
        [
            (versions["sft_examples"].version_id, len(sft),
             f"{metrics['sft_high_quality']} high quality + {metrics['sft_repairs']} repairs", removed["sft_examples"]),
            (versions["preference_pairs"].version_id, len(pairs), "chosen = repair, rejected = its original",
             removed["preference_pairs"]),
        ],
    )  # fmt: skip
    outputs = {table: info.version_id for table, info in versions.items()}
    return StageResult(outputs, metrics, summary)


SPEC = StageSpec(
    name="pairs",
    kind="data",
    description="Build the SFT set (high quality + accepted repairs) and the preference pairs.",
    reads=("repairs", "scores", "rollouts", "queries"),
    writes=("sft_examples", "preference_pairs", "stage_reports"),
    config=("pairs",),
    files=("rollout.user_template_file",),
    inputs=(Input("repairs", "repairs", "Repairs version (name, name@N, repairs/name@N)."),),
    run=run,
    default_name="{input}",
)
