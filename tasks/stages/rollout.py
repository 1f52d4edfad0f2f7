"""The rollout stage: N trajectories per query from the teacher, with real tool execution.

Where a trajectory is born (the engine: tasks/generation/engine.py), here at scale: sharded across
Ray generation actors and resumable shard by shard (tasks/generation/runner.py). Trajectory ids and
sampling seeds are deterministic (query, sample, fingerprint), so a re-run reproduces and resumes.
"""

from __future__ import annotations

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
from tasks.generation.runner import (
    EXECUTION_OPTIONS,
    Execution,
    generate_rollouts,
    settings_from_config,
    usage_note,
)


def run(context: StageContext) -> StageResult:
    """Generate (or resume) the trajectories and write `rollouts/<name>`."""
    options = context.options
    progress = context.progress
    report = generate_rollouts(
        context.lake,
        context.inputs["queries"],
        context.name,
        context.models["model"],
        settings_from_config(context.config, "rollout", cache=not options["no_cache"]),
        context.lineage,
        key=context.digest,
        samples=options["n"],
        limit=options["limit"],
        execution=Execution.from_options(options),
        progress=None if progress is None else lambda done, total: progress(done, total, "trajectories"),
    )
    metrics = {"trajectories": report.trajectories, "generated": report.generated, "errors": report.errors,
               "shards_committed": report.shards_committed, "ray_nodes": report.nodes,
               "finish_reasons": report.finish_reasons, "usage": report.usage}  # fmt: skip
    summary = SummaryTable(
        f"{report.trajectories} trajectories ({report.generated} generated now)",
        ("finish reason", "trajectories"),
        sorted(report.finish_reasons.items()),
    )
    problem = errored_problem(report.errors, report.trajectories, "trajectories", report.first_error)
    notes = [f"generated on {report.nodes} Ray node(s)"] if report.nodes else []
    notes += usage_note(report.usage)
    return StageResult({"rollouts": report.version.version_id}, metrics, summary, notes, problem)


SPEC = StageSpec(
    name="rollout",
    kind="data",
    description="Write N trajectories per query with real tool execution; resumable shard by shard.",
    reads=("queries",),
    writes=("rollouts",),
    config=("rollout", "tools"),
    files=("rollout.system_prompt_file", "rollout.user_template_file"),
    inputs=(Input("queries", "queries", "Queries dataset (name, name@N or queries/name@N).", short="-q"),),
    models=(
        Model("model", "Teacher: a role, models/<name>, model_id, path, or http(s)://HOST/v1#NAME "
              "[default: rollout.model].", config="rollout.model", backend="rollout.backend", short="-m"),
    ),
    options=(
        Option("tokenizer", str, "Tokenizer of a served model [default: rollout.tokenizer, else the served name].",
               config="rollout.tokenizer", affects_output=False),
        Option("n", int, "Trajectories per query [default: rollout.n].", config="rollout.n"),
        Option("limit", int, "Only the first N queries."),
        *EXECUTION_OPTIONS,
    ),
    run=run,
    default_name="{input}-rollout",
)  # fmt: skip
