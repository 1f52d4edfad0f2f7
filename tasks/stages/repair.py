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

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.config import PipelineConfig
from schemas.lake import shard_dataset
from tasks.core.errors import StageInputError
from tasks.core.hashing import digest
from tasks.core.lineage import gold_answers
from tasks.core.prompts import repair_prompt
from tasks.core.stage import (
    Input,
    Model,
    Option,
    StageContext,
    StageResult,
    StageSpec,
    SummaryTable,
    errored_problem,
)
from tasks.core.tir import format_problem
from tasks.generation.runner import (
    ENGINE_CONFIG,
    EXECUTION_OPTIONS,
    Execution,
    generate_resumable,
    settings_from_config,
    usage_metrics,
    usage_note,
)
from tasks.generation.tools import needs_search
from tasks.scoring.quality import own_length_quality, quality_summary
from tasks.scoring.verify import verify_answer

VARIANTS = {"correct_low_quality": "low_quality", "wrong": "wrong"}


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
        "generation_errors": sum(row["finish_reason"] == "error" for row in rows),
        "by_source_label": per_kind,
        "reject_reasons": dict(reasons),
    }


def _sources(context: StageContext) -> tuple[list[dict], dict[str, dict]]:
    """The trajectories to repair (with their label and quality) and the queries behind them."""
    lake, scores_info = context.lake, context.inputs["scores"]
    rollouts_info = lake.input_of(scores_info, "rollouts")
    queries = gold_answers(lake, rollouts_info)
    columns = ["trajectory_id", "label", "quality"]
    scores = {row["trajectory_id"]: row for row in lake.read(scores_info, columns=columns).to_pylist()}
    sources = [
        row | scores[row["trajectory_id"]]
        for row in lake.read(rollouts_info, columns=["trajectory_id", "query_id", "response"]).to_pylist()
        if scores.get(row["trajectory_id"], {}).get("label") in VARIANTS
    ]
    return sources, queries


def run(context: StageContext) -> StageResult:
    """Repair the low-quality and wrong trajectories of a scores version; write `repairs/<name>`."""
    config, lake, options = context.config, context.lake, context.options
    sources, queries = _sources(context)
    settings = settings_from_config(config, "repair", cache=not options["no_cache"])
    settings.search_required = needs_search(queries[source["query_id"]]["task"] for source in sources)
    prompts = {
        source["trajectory_id"]: repair_prompt(
            queries[source["query_id"]]["question"], source["response"], VARIANTS[source["label"]], config
        )
        for source in sources
    }
    execution = Execution.from_options(options)
    progress = context.progress
    rows: list[dict] = []
    usage_rows: list[dict] = []
    pending = list(sources)
    for attempt in range(1, config.repair.max_attempts + 1):
        if not pending:
            break
        items = [
            settings.item("r" + digest(context.digest, source["trajectory_id"], attempt)[:16], source["query_id"],
                          attempt, prompts[source["trajectory_id"]])
            for source in pending
        ]  # fmt: skip
        generated = generate_resumable(
            lake, items, shard_dataset(context.name, context.digest), context.lineage, context.models["model"],
            settings, execution, None if progress is None else lambda done, total: progress(done, total, "repairs"),
        )  # fmt: skip
        still_pending = []
        usage_rows += generated.rows
        for source, row in zip(pending, generated.rows, strict=True):
            judged = judge_repair(row, queries[source["query_id"]], source["label"], config)
            rows.append(
                {
                    "repair_id": row["trajectory_id"],
                    "source_trajectory_id": source["trajectory_id"],
                    "query_id": source["query_id"],
                    "attempt": attempt,
                    "source_label": source["label"],
                    "prompt_variant": VARIANTS[source["label"]],
                    "model": row["model"],
                    "prompt": row["prompt"],
                    "response": row["response"],
                    "segments": row["segments"],
                    "finish_reason": row["finish_reason"],
                    **judged,
                }
            )
            # An errored attempt is not a failed repair: it stays this attempt, retried by the next run.
            if not judged["accepted"] and row["finish_reason"] != "error":
                still_pending.append(source)
        pending = still_pending
    metrics = repair_metrics(rows, sources) | {"usage": usage_metrics(usage_rows, config)}
    if sources and metrics["generation_errors"] == len(rows):
        raise StageInputError(
            f"repairs/{context.name}: all {len(rows)} repair attempts errored, e.g. {rows[0]['reject_reason']}; "
            "nothing usable was written (re-run to retry them)"
        )
    errors = metrics["generation_errors"]
    version = lake.commit_stage(context.name, {"repairs": rows}, context.lineage, metrics, errored=errors)["repairs"]
    summary = SummaryTable(
        f"repair: {metrics['attempts']} attempts, hard-case reasons {metrics['reject_reasons']}",
        ("source label", "sources", "accepted", "hard cases", "mean quality: originals → repairs"),
        [
            (label, kind["sources"], kind["accepted"], kind["hard_cases"],
             f"{kind['originals_of_accepted_quality'].get('mean')} → {kind['accepted_quality'].get('mean')}"
             if kind["accepted"] else "–")
            for label, kind in metrics["by_source_label"].items()
        ],
    )  # fmt: skip
    example = next((row["reject_reason"] for row in rows if row["finish_reason"] == "error"), None)
    problem = errored_problem(errors, len(rows), "repair attempts", example)
    return StageResult({"repairs": version.version_id}, metrics, summary, usage_note(metrics["usage"]), problem)


SPEC = StageSpec(
    name="repair",
    kind="data",
    description="Have the repairer rewrite every low-quality and wrong trajectory; accept or keep as hard cases.",
    reads=("scores", "rollouts", "queries"),
    writes=("repairs", "rollouts", "stage_reports"),
    config=("repair", "score", *ENGINE_CONFIG, "tools"),
    files=("rollout.system_prompt_file", "rollout.user_template_file", "repair.low_quality_prompt_file",
           "repair.wrong_prompt_file"),
    inputs=(Input("scores", "scores", "Scores version (name, name@N, scores/name@N).", short="-s"),),
    models=(
        Model("model", "Repairer: a role, models/<name>, model_id, path, or http(s)://HOST/v1#NAME "
              "[default: repair.model].", config="repair.model", backend="repair.backend", short="-m"),
    ),
    options=(
        Option("tokenizer", str, "Tokenizer of a served model [default: repair.tokenizer, else the served name].",
               config="repair.tokenizer", affects_output=False),
        *EXECUTION_OPTIONS,
    ),
    run=run,
    default_name="{input}",
)  # fmt: skip
