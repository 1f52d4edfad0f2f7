"""The score stage: where a trajectory is judged. Verify its answer, score its quality, label its query.

The formulas and the labelling rule are tasks/scoring/quality.py. Trajectories whose generation
errored hold no answer: they are set aside and counted (`generation_errors`), never labelled. A
rollouts version with no usable trajectory fails the stage, saying so.
"""

from __future__ import annotations

from collections import Counter

from tasks.core.errors import StageInputError
from tasks.core.lineage import gold_answers
from tasks.core.stage import Input, StageContext, StageResult, StageSpec, SummaryTable
from tasks.scoring.quality import LABELS, errored, score_metrics, score_rows


def run(context: StageContext) -> StageResult:
    """Score every usable trajectory of a rollouts version and write `scores/<name>` with its metrics."""
    lake, rollouts_info = context.lake, context.inputs["rollouts"]
    queries = gold_answers(lake, rollouts_info)
    columns = ["trajectory_id", "query_id", "response", "segments", "finish_reason", "error"]
    rollouts = lake.read(rollouts_info, columns=columns).to_pylist()
    usable = [row for row in rollouts if not errored(row)]
    failures = Counter((row["error"] or "no error text").split(":")[0] for row in rollouts if errored(row))
    if not usable:
        raise StageInputError(
            f"{rollouts_info.version_id} has no usable trajectory: all {len(rollouts)} errored "
            f"({dict(failures) or 'none written'}); re-run the rollout to retry them"
        )
    rows = score_rows(usable, queries, context.config.score)
    metrics = score_metrics(rows, generation_errors=len(rollouts) - len(usable))
    version = lake.commit_stage(context.name, {"scores": rows}, context.lineage, metrics)["scores"]
    summary = SummaryTable(
        f"scores of {metrics['candidates']} trajectories over {metrics['queries']} queries",
        ("label", "trajectories", "mean quality", "p25", "p50", "p75"),
        [
            (label, metrics[label], *[metrics["quality"][label].get(key, "–") for key in ("mean", "p25", "p50", "p75")])
            for label in LABELS
        ],
    )
    notes = [f"format invalid {metrics['format_invalid']}, verifier errors {metrics['verify_errors']}"]
    if metrics["generation_errors"]:
        notes.append(f"{metrics['generation_errors']} errored trajectories set aside, not scored: {dict(failures)}")
    return StageResult({"scores": version.version_id}, metrics, summary, notes)


SPEC = StageSpec(
    name="score",
    kind="data",
    description="Verify answers, score quality and label every query's candidates.",
    reads=("rollouts", "queries"),
    writes=("scores", "stage_reports"),
    config=("score",),
    files=(),
    inputs=(Input("rollouts", "rollouts", "Rollouts version (name, name@N, rollouts/name@N).", short="-r"),),
    run=run,
    default_name="{input}",
)
