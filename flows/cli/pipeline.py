"""`autotraj pipeline` (the whole pipeline on your queries and models, or its dry-run plan) and
`autotraj quickstart` (the main job: the same pipeline on the synthetic task with the tiny models)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.common import config_of, console, fail, lake_of
from flows.cli.data import data_import, data_synth
from flows.cli.models import bootstrap
from schemas.config import PROJECT_ROOT

DEFAULT_BENCHMARKS_DIR = PROJECT_ROOT.parent / "shared" / "data" / "benchmarks"


def register(app: typer.Typer) -> None:
    """Add `pipeline` and `quickstart` to the top-level app."""
    app.command()(pipeline)
    app.command()(quickstart)


def comparison_tables(ctx: typer.Context, eval_results: str, pairs: list[tuple[str, str]] | None = None) -> None:
    """Per benchmark, each model's metrics with 95% intervals, then the paired differences over all
    questions (`pairs`: (a, b) labels to show; all by default), marking the significant ones."""
    from tasks.scoring.evaluation import ALL, COMPARED, METRICS, difference_line, interval_cell

    lake = lake_of(ctx)
    info = lake.resolve(eval_results, "eval_results")
    rows = [row for row in lake.read(info).to_pylist() if row.get("subset") in (None, ALL)]
    by_benchmark: dict[str, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        by_benchmark[row["benchmark"]][row.get("label") or row["model_id"]][row["metric"]] = row
    examples = {row["benchmark"]: row["n_examples"] for row in rows}
    for benchmark, by_model in by_benchmark.items():
        table = Table("model", *METRICS, title=f"{benchmark} ({examples[benchmark]} questions; 95% intervals)")
        for label, values in by_model.items():
            table.add_row(label, *[interval_cell(values[metric]) for metric in METRICS])
        console.print(table)
    written = [other for other in lake.versions(run_id=info.run_id) if other.table_name == "eval_comparisons"]
    comparisons = [row for version in written for row in lake.read(version).to_pylist()]  # none before they existed
    shown = [row for row in comparisons if row["subset"] == ALL and row["metric"] in COMPARED
             and (pairs is None or (row["label_a"], row["label_b"]) in pairs)]  # fmt: skip
    for row in shown:
        mark = "[bold green]✓[/]" if row["significant"] else "[dim]·[/]"
        console.print(f"{mark} {escape(difference_line(row))}", highlight=False)


def _settings(ctx: typer.Context, profile: str | None, overrides: list[str] | None) -> tuple[str, list[str]]:
    """The profile and overrides: the command's own, over the global options."""
    return profile or ctx.obj["profile"], [*ctx.obj["overrides"], *(overrides or [])]


def print_plan(plan: Any) -> None:
    """The dry run's plan as a table, then every problem found."""
    table = Table("step", "stage", "reads", "writes", "models", "runs on", title="pipeline plan (dry run)")
    for step in plan.steps:
        table.add_row(step.step, step.stage, "\n".join(step.reads), "\n".join(step.writes), "\n".join(step.models),
                      step.runs_on)  # fmt: skip
    console.print(table)
    for error in plan.errors:
        console.print(f"[bold red]✗[/] {escape(error)}", highlight=False)


def pipeline(
    ctx: typer.Context,
    queries: Annotated[str, typer.Argument(help="Training queries (name, name@N or queries/name@N).")],
    test_queries: Annotated[str, typer.Option("--test-queries", "-t", help="Held-out queries to evaluate on.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the run's datasets [default: <queries>].")] = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Profile [default: the global one].")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: k=v.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and check every step; run nothing.")] = False,
) -> None:
    """The whole pipeline on your own queries and models, as the Prefect flow `autotraj`:
    rollout, score, repair, pairs, SFT, reward model, GRPO, evaluate."""
    profile, overrides = _settings(ctx, profile, overrides)
    if dry_run:
        from flows.plan import plan_pipeline

        plan = plan_pipeline(queries, test_queries, name, profile, overrides)
        print_plan(plan)
        if plan.errors:
            raise fail(f"the pipeline cannot run as configured: {len(plan.errors)} problem(s) above", code=1)
        console.print(f"ready: {len(plan.steps)} steps resolved; run it without --dry-run")
        return
    from flows.pipeline import pipeline_flow

    outputs = pipeline_flow(queries, test_queries, name=name, profile=profile, overrides=overrides)
    comparison_tables(ctx, outputs["eval_results"])
    for key, value in outputs.items():
        for name_, id_ in value.items() if isinstance(value, dict) else [("", value)]:
            console.print(f"{key}{'.' if name_ else ''}{name_}: {id_}", markup=False, highlight=False)


def quickstart(
    ctx: typer.Context,
    questions: Annotated[int, typer.Option(help="Synthetic training questions.", min=8)] = 300,
    test_questions: Annotated[int, typer.Option(help="Held-out synthetic questions for the evaluation.", min=8)] = 200,
    benchmarks_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory of benchmark .jsonl files [default: $AUTOTRAJ_BENCHMARKS or ../shared/data/benchmarks]."
        ),
    ] = None,
) -> None:
    """The main job: bootstrap the tiny models if absent, then run the whole pipeline on the synthetic task
    (rollout, score, repair, pairs, SFT, RM, GRPO, evaluate) as a Prefect flow, and print the comparison."""
    benchmarks_dir = benchmarks_dir or Path(os.environ.get("AUTOTRAJ_BENCHMARKS", DEFAULT_BENCHMARKS_DIR))
    for file in sorted(benchmarks_dir.glob("*.jsonl")) if benchmarks_dir.is_dir() else []:
        ctx.invoke(data_import, ctx=ctx, path=file, name=file.stem)  # imported once; for `autotraj eval`
    console.rule("tiny models")
    ctx.invoke(bootstrap, ctx=ctx, size="full", seed=0, force=False)
    console.rule("synthetic task: arithmetic (Python) and fictional towns (search)")
    corpus = ctx.invoke(data_synth, ctx=ctx, task="tir", n=questions, seed=1, name=None)
    ctx.invoke(data_synth, ctx=ctx, task="tir", n=test_questions, seed=777, name=None)
    console.rule("the pipeline (Prefect flow `autotraj`)")
    from flows.pipeline import ROLES, pipeline_flow

    outputs = pipeline_flow(
        f"tir-s1-n{questions}", f"tir-s777-n{test_questions}", name="quickstart",
        profile=ctx.obj["profile"], overrides=[f"tools.search.corpus={corpus}", *ctx.obj["overrides"]],
    )  # fmt: skip
    config = config_of(ctx)
    teacher, hq_only, repaired, outcome_only, rm_bonus = ROLES
    console.rule("the ablations: teacher, SFT, GRPO")
    console.print(
        f"{teacher}: the teacher that wrote the rollouts; {hq_only} / {repaired}: SFT on high-quality "
        f"trajectories only / plus the repaired ones; {outcome_only} / {rm_bonus}: GRPO from {repaired}, "
        "outcome and format reward only / plus the trajectory reward model's bonus",
        markup=False, highlight=False,
    )  # fmt: skip
    ablations = [(hq_only, repaired), (outcome_only, rm_bonus), (teacher, repaired), (repaired, rm_bonus)]
    comparison_tables(ctx, outputs["eval_results"], ablations)
    console.print(
        f"chart: {config.runtime.data_dir}/reports/quickstart.png\n"
        "next: [bold]autotraj tables --versions[/], "
        '[bold]autotraj sql "select model_id, metric, value from eval_results"[/], '
        "[bold]autotraj report --repairs quickstart[/], the Prefect UI (`prefect server start`; README: Prefect)"
    )
