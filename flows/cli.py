"""The `autotraj` command line: data import, lake inspection, configuration and the main job."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.config import PROJECT_ROOT, ConfigError, PipelineConfig, load_config

if TYPE_CHECKING:
    from schemas.lake import Lake

app = typer.Typer(
    help="AutoTraj: repair and reward tool-use trajectories for tool-integrated reasoning.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Bring question/answer sets into the lake.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
tools_app = typer.Typer(help="The model's tools: the Python sandbox and search.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(tools_app, name="tools")

# Piped output (files, grep, tests) gets wide tables instead of rich's 80-column default.
_PIPE_WIDTH = None if sys.stdout.isatty() else 240
console = Console(soft_wrap=True, width=_PIPE_WIDTH)
err_console = Console(stderr=True, soft_wrap=True, width=_PIPE_WIDTH)

DEFAULT_BENCHMARKS_DIR = PROJECT_ROOT.parent / "shared" / "data" / "benchmarks"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile in deployments/ or a YAML path.")] = "cpu",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value.")
    ] = None,
) -> None:
    """Global options shared by every command."""
    ctx.obj = {"profile": profile, "overrides": list(overrides or [])}


class _Progress:
    """Progress of long work: a live bar on a terminal, a line every 10 % in logs and CI."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.live = console.is_terminal
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar = Progress(*columns, TimeElapsedColumn(), console=console)
        self.tasks: dict[str, Any] = {}
        self.printed: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.live:
            self.bar.stop()

    def update(self, name: str, done: int, total: int, info: str = "") -> None:
        """Report `done` of `total` for the task called `name`."""
        if self.live:
            if name not in self.tasks:
                self.tasks[name] = self.bar.add_task(name, total=total, info="")
            self.bar.update(self.tasks[name], completed=done, total=total, info=info)
            return
        decile = 10 * done // max(1, total)
        if self.printed.get(name) != decile:
            self.printed[name] = decile
            console.print(f"{name}: {done}/{total} {info}".rstrip(), markup=False, highlight=False)


def _config(ctx: typer.Context) -> PipelineConfig:
    try:
        return load_config(ctx.obj["profile"], ctx.obj["overrides"])
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _lake(ctx: typer.Context) -> Lake:
    from schemas.lake import Lake  # imported here so `--help` does not load DuckDB

    return Lake.from_config(_config(ctx).runtime)


# -- data ------------------------------------------------------------------------------------------


@data_app.command("import")
def data_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A .jsonl, .json, .csv or .parquet file, or a saved HF dataset dir.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name in the queries table.")],
    question_field: Annotated[str, typer.Option(help="Source column holding the question.")] = "question",
    answer_field: Annotated[str, typer.Option(help="Source column holding the gold answer (or a list).")] = "answer",
    id_field: Annotated[str, typer.Option(help="Source column holding the row's id.")] = "id",
    task_field: Annotated[str, typer.Option(help="Source column holding the task (math|qa).")] = "task",
    task: Annotated[str, typer.Option(help="Task for rows that name none: math or qa.")] = "math",
    split: Annotated[str | None, typer.Option(help="Split of a saved HF DatasetDict.")] = None,
) -> None:
    """Import queries; malformed, empty and duplicate rows go to rejected_inputs with a reason."""
    from tasks.import_queries import FieldMapping, ImportFormatError, import_queries

    mapping = FieldMapping(
        question=question_field, answer=answer_field, id=id_field, task=task_field, default_task=task, split=split
    )
    try:
        report = import_queries(_lake(ctx), path, name, mapping)
    except (ImportFormatError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if report.already_imported is not None:
        console.print(
            f"{path} is already imported as [bold]{report.already_imported.version_id}[/] "
            f"({report.already_imported.row_count} queries); nothing to do."
        )
        return
    console.print(
        f"read {report.rows_read} rows from {path}: [green]{report.imported} imported[/], "
        f"[yellow]{len(report.rejected)} rejected[/]"
    )
    if report.rejected:
        reasons = Table("reason", "rows", title="rejected rows (see the rejected_inputs table)")
        for reason, count in report.reason_counts.most_common():
            reasons.add_row(reason, str(count))
        console.print(reasons)
    if report.queries_version is not None:
        console.print(
            f"wrote [bold]{report.queries_version.version_id}[/] "
            f"({report.queries_version.row_count} queries in this version)"
        )
    if report.nothing_importable:
        raise _fail(f"nothing importable in {path}", code=1)


@data_app.command("synth")
def data_synth(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Option(help="Synthetic task: arith (arithmetic word problems that need Python).")
    ] = "arith",
    n: Annotated[int, typer.Option("--n", help="Number of questions.", min=1)] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same questions).")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name [default: <task>-s<seed>-n<n>].")] = None,
) -> None:
    """Generate synthetic questions with gold answers and import them as queries."""
    from tasks import synth

    if task != "arith":
        raise _fail(f"unknown synthetic task {task!r}; available: arith")
    config = _config(ctx)
    name = name or f"{task}-s{seed}-n{n}"
    path = synth.write_jsonl(synth.generate(n, seed), Path(config.runtime.data_dir) / "synth" / f"{name}.jsonl")
    ctx.invoke(data_import, ctx=ctx, path=path, name=name)


# -- inspection ------------------------------------------------------------------------------------


@app.command()
def tables(
    ctx: typer.Context,
    versions: Annotated[bool, typer.Option("--versions", help="List every version with its lineage.")] = False,
) -> None:
    """Show the lake's tables, their datasets, versions, row counts and lineage."""
    from schemas.tables import VERSIONED_TABLES

    lake = _lake(ctx)
    infos = lake.versions()
    by_table: dict[str, list[Any]] = defaultdict(list)
    for info in infos:
        by_table[info.table_name].append(info)
    summary = Table("table", "datasets", "versions", "rows (latest)", "last written", title=f"lake at {lake.lake_dir}")
    for table in VERSIONED_TABLES:
        entries = by_table.get(table, [])
        latest: dict[str, Any] = {}
        for info in entries:
            latest[info.dataset] = info
        rows = sum(info.row_count for info in latest.values())
        when = max((info.created_at for info in entries), default=None)
        summary.add_row(
            table,
            ", ".join(sorted(latest)) or "-",
            str(len(entries)),
            str(rows),
            when.strftime("%Y-%m-%d %H:%M:%S") if when else "-",
        )
    console.print(summary)
    if versions:
        detail = Table(
            "version", "stage", "run", "rows", "inputs", "config", "flow run", "written", title="versions and lineage"
        )
        for info in infos:
            detail.add_row(
                info.version_id,
                info.stage,
                info.run_id,
                str(info.row_count),
                ", ".join(info.input_versions) or "-",
                info.config_hash or "-",
                info.prefect_flow_run_id or "-",
                info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
        console.print(detail)


def _print_arrow(result: Any, output_format: str, max_rows: int) -> None:
    if output_format == "csv":
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(result, sink)
        sink.flush()
        return
    rows = result.to_pylist()
    if output_format == "json":
        sys.stdout.write(json.dumps(rows, default=str, ensure_ascii=False, indent=1) + "\n")
        return
    table = Table(*result.column_names)
    for row in rows[:max_rows]:
        table.add_row(*("NULL" if value is None else str(value) for value in row.values()))
    console.print(table)
    if len(rows) > max_rows:
        console.print(f"… {len(rows) - max_rows} more rows (use --max-rows or --format csv|json)")


@app.command()
def sql(
    ctx: typer.Context,
    query: Annotated[
        str, typer.Argument(help="SQL over the views: <table> (latest), <table>_all, runs, lake.<table>.")
    ],
    output_format: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Query the lake read-only with DuckDB; every table is a view of its latest versions."""
    import duckdb

    if output_format not in {"table", "csv", "json"}:
        raise _fail(f"--format must be table, csv or json, not {output_format!r}")
    try:
        result = _lake(ctx).sql(query)
    except duckdb.Error as exc:
        raise _fail(str(exc).strip(), code=1) from None
    _print_arrow(result, output_format, max_rows)


@app.command()
def attach(ctx: typer.Context) -> None:
    """Print the SQL that attaches this lake in your own DuckDB session (read only)."""
    from schemas.lake import extension_file

    lake = _lake(ctx)
    lake.initialize()
    ducklake = extension_file("duckdb_extension_ducklake", "ducklake.duckdb_extension")
    catalog_ext = (
        lake.data_dir
        / "duckdb_extensions"
        / (
            "sqlite_scanner.duckdb_extension"
            if lake.catalog_url.startswith("sqlite:")
            else "postgres_scanner.duckdb_extension"
        )
    )
    console.print("-- start duckdb with unsigned extensions allowed: duckdb -unsigned", markup=False)
    console.print(f"LOAD '{ducklake}';\nLOAD '{catalog_ext}';", markup=False)
    console.print(
        f"ATTACH 'ducklake:{lake.catalog_url}' AS lake (DATA_PATH '{lake.data_path}/', READ_ONLY);", markup=False
    )
    console.print("SELECT * FROM lake.runs ORDER BY created_at DESC LIMIT 10;", markup=False)


# -- tools -----------------------------------------------------------------------------------------


@tools_app.command("search")
def tools_search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to search for.")],
    k: Annotated[int | None, typer.Option("-k", help="Passages to return [default: tools.search.top_k].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print passages as JSON.")] = False,
) -> None:
    """Search with the configured backend and print what the model would see in <result>."""
    from dataclasses import asdict

    from tools_sandbox.results import format_result
    from tools_sandbox.search import SearchError, searcher_from_config

    config = _config(ctx)
    try:
        searcher = searcher_from_config(config.tools.search, config.runtime.data_dir)
    except SearchError as exc:
        raise _fail(str(exc)) from None
    try:
        passages = searcher.search(query, k or config.tools.search.top_k)
    except SearchError as exc:
        raise _fail(str(exc), code=1) from None
    if as_json:
        sys.stdout.write(json.dumps([asdict(p) for p in passages], ensure_ascii=False, indent=1) + "\n")
    else:
        console.print(format_result(passages, config.tools.max_result_chars), markup=False, highlight=False)


@tools_app.command("exec")
def tools_exec(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Python file to run, or - for stdin.")] = "-",
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    tier: Annotated[str | None, typer.Option(help="Isolation tier [default: tools.python.tier].")] = None,
) -> None:
    """Run a snippet in the sandbox and print what the model would see in <result>."""
    from dataclasses import asdict

    from tools_sandbox.executor import IsolationUnavailable, SandboxError, SandboxPool
    from tools_sandbox.results import format_result

    config = _config(ctx)
    try:
        code = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise _fail(f"cannot read {source}: {exc.strerror}") from None
    try:
        with SandboxPool(config.tools.python, workers=1, tier=tier) as pool:
            result = pool.run(code)
    except (IsolationUnavailable, SandboxError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(asdict(result), indent=1) + "\n")
    else:
        console.print(format_result(result, config.tools.max_result_chars), markup=False, highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@tools_app.command("doctor")
def tools_doctor(ctx: typer.Context) -> None:
    """Probe which sandbox isolation tiers this host supports, and which one the config gets."""
    from rich.table import Table

    from tools_sandbox.isolation import IsolationUnavailable, probe_tiers, resolve

    config = _config(ctx)
    table = Table("tier", "available", "why")
    for check in probe_tiers():
        table.add_row(check.tier, "yes" if check.available else "no", check.reason)
    console.print(table)
    requested = config.tools.python.tier
    try:
        isolation = resolve(requested)
    except IsolationUnavailable as exc:
        raise _fail(f"tools.python.tier={requested}: {exc}", code=1) from None
    console.print(f"tools.python.tier={requested} -> {isolation.describe()}")


@tools_app.command("serve-search")
def tools_serve_search(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8005,
) -> None:
    """Serve the local index over HTTP with the FlashRAG API (POST /search), so a cluster shares one index."""
    import uvicorn

    from tools_sandbox.search import LocalSearch, SearchError, serve_app

    config = _config(ctx)
    try:
        searcher = LocalSearch(config.tools.search.corpus, config.runtime.data_dir)
    except SearchError as exc:
        raise _fail(str(exc)) from None
    console.print(f"serving {len(searcher.passages)} passages from {searcher.corpus} on http://{host}:{port}/search")
    uvicorn.run(serve_app(searcher), host=host, port=port, log_level="warning")


# -- models and rollout ----------------------------------------------------------------------------


@app.command()
def bootstrap(
    ctx: typer.Context,
    size: Annotated[
        str, typer.Option(help="full (the embedded default) or test (small, for the test suite).")
    ] = "full",
    seed: Annotated[int, typer.Option(help="Seed of the tokenizer, data and weights.")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even when a cached build exists.")] = False,
) -> None:
    """Train the offline tokenizer, tiny teacher and tiny repairer (cached in the data directory)."""
    from tasks.bootstrap import bootstrap as build
    from tasks.bootstrap_eval import evaluate_build

    config = _config(ctx)
    with _Progress() as bar:
        result = build(
            config.runtime.data_dir,
            size,
            seed,
            force,
            lambda role, step, steps, loss: bar.update(f"train {role}", step, steps, f"loss {loss:.3f}"),
            evaluate=lambda path: evaluate_build(path, config),
        )
    verb = "built" if result.built else "reused"
    evaluation = result.metrics.get("evaluation", {})
    parts = [f"{role} {result.metrics[role].get('seconds', '?')} s" for role in ("teacher", "repairer")]
    parts.append(f"evaluation {evaluation.get('seconds', '?')} s")
    console.print(f"{verb} [bold]{result.directory}[/] ({result.seconds} s to build: {', '.join(parts)})")
    if evaluation:
        table = Table("model", "figure", "value", "target", title="held-out synthetic questions")
        for row in evaluation["rows"]:
            table.add_row(*[str(cell) for cell in row])
        console.print(table)
    console.print(f"teacher: {result.teacher}\nrepairer: {result.repairer}")


def _dataset_name(ref: str) -> str:
    """The dataset part of a version reference: queries/name@2 -> name."""
    return ref.split("/")[-1].split("@")[0]


def _model_spec(
    config: PipelineConfig, model: str | None, role: str, backend: str, tokenizer: str | None, served_name: str | None
) -> Any:
    """Which model writes: a path or URL (default: the bootstrap build's `role` model), checked."""
    from tasks.rollout import model_spec

    try:
        return model_spec(config, model, role, backend, tokenizer, served_name)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def rollout(
    ctx: typer.Context,
    queries: Annotated[str, typer.Option("--queries", "-q", help="Queries dataset (name, name@N or queries/name@N).")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model path, or URL of an OpenAI-compatible server.")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Trajectories per query [default: rollout.n].")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Output rollouts dataset [default: <queries>-rollout].")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="transformers, openai or vllm [default: from --model].")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Local tokenizer for an openai backend.")] = None,
    served_name: Annotated[str | None, typer.Option(help="Model name an openai server expects.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N queries.")] = None,
    actors: Annotated[int, typer.Option(help="Ray generation actors (one per GPU).")] = 1,
    shard_size: Annotated[int, typer.Option(help="Queries per shard (each shard is committed when done).")] = 16,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Generate in this process instead of Ray actors.")] = False,
) -> None:
    """Write N trajectories per query with real tool execution; resumable shard by shard."""
    from tasks.rollout import run_rollout

    config = _config(ctx)
    spec = _model_spec(config, model, "teacher", backend or config.rollout.backend, tokenizer, served_name)
    lake = _lake(ctx)
    dataset = name or f"{_dataset_name(queries)}-rollout"
    with _Progress() as bar:
        report = run_rollout(
            lake, queries, dataset, spec, config, n=n, actors=actors, shard_size=shard_size, limit=limit,
            use_ray=not no_ray, progress=lambda done, total: bar.update("trajectories", done, total),
        )  # fmt: skip
    console.print(
        f"wrote [bold]{report.version.version_id}[/]: {report.trajectories} trajectories "
        f"({report.generated} generated now, {report.errors} errored); finish reasons {report.finish_reasons}"
    )
    if report.errors:
        raise _fail(f"{report.errors} trajectories errored; re-run the same command to retry them", code=1)


@app.command()
def score(
    ctx: typer.Context,
    rollouts: Annotated[
        str, typer.Option("--rollouts", "-r", help="Rollouts version (name, name@N, rollouts/name@N).")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Output scores dataset [default: the rollouts' name].")
    ] = None,
) -> None:
    """Verify answers, score quality and label every query's candidates."""
    from tasks.score import LABELS, run_score

    report = run_score(_lake(ctx), rollouts, name or _dataset_name(rollouts), _config(ctx))
    metrics = report.metrics
    table = Table(
        "label",
        "trajectories",
        "mean quality",
        "p25",
        "p50",
        "p75",
        title=f"scores of {metrics['candidates']} trajectories over {metrics['queries']} queries",
    )
    for label in LABELS:
        stats = metrics["quality"][label]
        table.add_row(label, str(metrics[label]), *[str(stats.get(key, "–")) for key in ("mean", "p25", "p50", "p75")])
    console.print(table)
    console.print(
        f"wrote [bold]{report.version.version_id}[/]; format invalid {metrics['format_invalid']}, "
        f"verifier errors {metrics['verify_errors']}"
    )


@app.command()
def repair(
    ctx: typer.Context,
    scores: Annotated[str, typer.Option("--scores", "-s", help="Scores version (name, name@N, scores/name@N).")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Repairer path or URL [default: the bootstrap repairer].")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Output repairs dataset [default: the scores' name].")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="transformers, openai or vllm [default: repair.backend].")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Local tokenizer for an openai backend.")] = None,
    served_name: Annotated[str | None, typer.Option(help="Model name an openai server expects.")] = None,
    actors: Annotated[int, typer.Option(help="Ray generation actors (one per GPU).")] = 1,
    shard_size: Annotated[int, typer.Option(help="Repairs per shard (each shard is committed when done).")] = 16,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Generate in this process instead of Ray actors.")] = False,
) -> None:
    """Have the repairer rewrite every low-quality and wrong trajectory; accept or keep as hard cases."""
    from tasks.repair import run_repair

    config = _config(ctx)
    spec = _model_spec(config, model, "repairer", backend or config.repair.backend, tokenizer, served_name)
    with _Progress() as bar:
        report = run_repair(
            _lake(ctx), scores, name or _dataset_name(scores), spec, config, actors=actors, shard_size=shard_size,
            use_ray=not no_ray, progress=lambda done, total: bar.update("repairs", done, total),
        )  # fmt: skip
    metrics = report.metrics
    table = Table(
        "source label", "sources", "accepted", "hard cases", "mean quality: originals → repairs", title="repair"
    )
    for label, kind in metrics["by_source_label"].items():
        before, after = kind["originals_of_accepted_quality"].get("mean"), kind["accepted_quality"].get("mean")
        change = f"{before} → {after}" if after is not None else "–"
        table.add_row(label, str(kind["sources"]), str(kind["accepted"]), str(kind["hard_cases"]), change)
    console.print(table)
    console.print(
        f"wrote [bold]{report.version.version_id}[/]: {metrics['attempts']} attempts; "
        f"hard-case reasons {metrics['reject_reasons']}"
    )


@app.command()
def pairs(
    ctx: typer.Context,
    repairs: Annotated[str, typer.Option("--repairs", help="Repairs version (name, name@N, repairs/name@N).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Output dataset name [default: the repairs' name].")
    ] = None,
) -> None:
    """Build the SFT set (high quality + accepted repairs) and the preference pairs."""
    from tasks.pairs import run_pairs

    report = run_pairs(_lake(ctx), repairs, name or _dataset_name(repairs), _config(ctx))
    metrics = report.metrics
    console.print(
        f"wrote [bold]{report.sft_examples.version_id}[/] ({metrics['sft_high_quality']} high quality + "
        f"{metrics['sft_repairs']} repairs) and [bold]{report.preference_pairs.version_id}[/] "
        f"({metrics['preference_pairs']} pairs); duplicates removed {metrics['duplicates_removed']}"
    )


def _train(ctx: typer.Context, stage: str, **arguments: Any) -> Any:
    """Run a training stage as a Ray Train job (or locally, per runtime.train_dispatch) with a progress bar."""
    from tasks.distributed import run_training_job
    from tasks.serve_rm import RewardModelError

    with _Progress() as bar:
        try:
            report = run_training_job(
                stage, _config(ctx), lambda step, steps, info: bar.update(stage, step, steps, info), **arguments
            )
        except (FileNotFoundError, ValueError, RewardModelError) as exc:
            raise _fail(str(exc)) from None
    verb = "trained" if report.trained else "already trained"
    console.print(f"{verb} [bold]{report.model_id}[/] at {report.path} ({report.model.version_id})")
    return report


@app.command()
def sft(
    ctx: typer.Context,
    examples: Annotated[str, typer.Option("--examples", "-e", help="sft_examples version (name, name@N, ...).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Model dataset name [default: the examples' name].")
    ] = None,
    base: Annotated[str | None, typer.Option(help="Base model path [default: sft.base_model].")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
) -> None:
    """Fine-tune the policy on SFT examples (loss on model-written tokens only) and register it."""
    report = _train(
        ctx, "sft", sft_ref=examples, name=name or _dataset_name(examples), base_model=base, max_steps=max_steps
    )
    console.print(report.metrics)


@app.command("reward-model")
def reward_model(
    ctx: typer.Context,
    pairs: Annotated[str, typer.Option("--pairs", help="preference_pairs version (name, name@N, ...).")],
    name: Annotated[str | None, typer.Option("--name", help="Model dataset name [default: <pairs' name>-rm].")] = None,
    base: Annotated[str | None, typer.Option(help="Base model path [default: reward_model.base_model].")] = None,
) -> None:
    """Train the trajectory reward model (Bradley-Terry) and report its held-out pairwise accuracy."""
    report = _train(ctx, "reward_model", pairs_ref=pairs, name=name or f"{_dataset_name(pairs)}-rm", base_model=base)
    metrics = report.metrics
    console.print(
        f"held-out pairwise accuracy {metrics['held_out_accuracy']:.3f} on {metrics['held_out_pairs']} pairs; {metrics}"
    )


@app.command()
def grpo(
    ctx: typer.Context,
    queries: Annotated[str, typer.Option("--queries", "-q", help="Training queries (name, name@N, queries/name@N).")],
    policy: Annotated[
        str | None, typer.Option(help="Policy to start from: model_id, role or path [default: grpo.policy_model].")
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option("--reward-model", help="RM: model_id, path or serve-rm URL [default: grpo.reward_model]."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model dataset name [default: <queries>-grpo].")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps [default: grpo.max_steps].")] = None,
) -> None:
    """GRPO from the SFT policy with multi-turn tool rollouts and the format/outcome/RM reward; resumable."""
    report = _train(
        ctx,
        "grpo",
        queries_ref=queries,
        name=name or f"{_dataset_name(queries)}-grpo",
        policy=policy,
        reward_model=reward_model,
        max_steps=max_steps,
    )
    console.print(report.metrics)


@app.command()
def export(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="sft or pairs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .jsonl file.")],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Dataset version [default: the latest written].")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="trl, llamafactory or sharegpt.")] = "trl",
) -> None:
    """Export SFT examples or preference pairs for another trainer (tool results stay in the text)."""
    from tasks.engine import Prompts
    from tasks.export import FORMATS, KINDS, export_rows

    if kind not in KINDS:
        raise _fail(f"unknown kind {kind!r}; choose sft or pairs")
    if output_format not in FORMATS:
        raise _fail(f"unknown format {output_format!r}; choose from {', '.join(FORMATS)}")
    config = _config(ctx)
    lake = _lake(ctx)
    table = KINDS[kind]
    if version is None:
        written = sorted(lake.versions(table), key=lambda info: info.created_at)
        if not written:
            raise _fail(f"no {table} version yet; run `autotraj pairs` first")
        info = written[-1]
    else:
        info = lake.resolve(version, table)
    system = Prompts.load(config.rollout.system_prompt_file, config.rollout.user_template_file).system
    count = export_rows(kind, lake.read(info).to_pylist(), output_format, system, out)
    console.print(f"wrote {count} rows of {info.version_id} to {out} ({output_format})")


@app.command()
def report(
    ctx: typer.Context,
    repairs: Annotated[str, typer.Option("--repairs", help="Repairs version (name, name@N, repairs/name@N).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory [default: <data dir>/reports/<name>].")
    ] = None,
) -> None:
    """Write a markdown report with quality histograms before and after repair."""
    from tasks.report import write_report

    config = _config(ctx)
    out = out or Path(config.runtime.data_dir) / "reports" / _dataset_name(repairs)
    path = write_report(_lake(ctx), repairs, out)
    console.print(f"wrote {path} and {path.parent / 'quality.png'}")


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    models: Annotated[
        str, typer.Option("--models", "-m", help="Comma-separated model_ids from the models table, roles or paths.")
    ],
    bench: Annotated[str, typer.Option("--bench", "-b", help="Comma-separated queries datasets (name or name@N).")],
    name: Annotated[str, typer.Option("--name", help="eval_results dataset name.")] = "eval",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Chart PNG [default: <data dir>/reports/<name>.png].")
    ] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Generate in this process instead of Ray actors.")] = False,
) -> None:
    """Evaluate models side by side (greedy by default): accuracy, quality, tool calls, length; table and chart."""
    from tasks.evaluate import plot_comparison, run_evaluate

    config = _config(ctx)
    with _Progress() as bar:
        try:
            report = run_evaluate(
                _lake(ctx), _split(models), _split(bench), name, config, use_ray=not no_ray,
                progress=lambda label, done, total: bar.update(f"eval {label}", done, total),
            )  # fmt: skip
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from None
    _comparison_table(report)
    chart = plot_comparison(report.metrics, out or Path(config.runtime.data_dir) / "reports" / f"{name}.png")
    console.print(f"wrote [bold]{report.version.version_id}[/] and {chart}")


def _split(values: str) -> list[str]:
    return [value.strip() for value in values.split(",") if value.strip()]


def _comparison_table(report: Any) -> None:
    """One rich table per benchmark: a row per model, a column per metric."""
    from tasks.evaluate import METRICS

    for benchmark, by_model in report.metrics.items():
        table = Table("model", *METRICS, title=f"{benchmark} ({report.examples[benchmark]} questions)")
        for label, values in by_model.items():
            table.add_row(label, *[f"{values[metric]:.3f}" if metric != "mean_tokens" else f"{values[metric]:.0f}"
                                   for metric in METRICS])  # fmt: skip
        console.print(table)


@app.command("serve-rm")
def serve_rm(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Reward model: a model_id from the models table, or a path.")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
) -> None:
    """Serve a reward model: POST /score {"trajectory": ...} -> {"score": ...}, and GET /health."""
    import uvicorn

    from tasks.serve_rm import RewardScorer, serve_app
    from tasks.sft import registered_model
    from tasks.tir import load_prompt

    config = _config(ctx)
    try:
        path, _ = registered_model(_lake(ctx), model, config.runtime.data_dir)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    system = load_prompt("system", config.rollout.system_prompt_file)
    console.print(f"serving reward model {path} on http://{host}:{port}/score")
    uvicorn.run(serve_app(RewardScorer(path, system), model), host=host, port=port, log_level="warning")


@app.command("serve-model")
def serve_model(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model path [default: the bootstrap teacher].")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    served_name: Annotated[str, typer.Option(help="Model name in the API.")] = "default",
) -> None:
    """Serve a model as an OpenAI-compatible /v1/completions endpoint (transformers backend)."""
    import uvicorn

    from tasks.bootstrap import model_dir
    from tasks.llm import TransformersBackend
    from tasks.serve_model import serve_app

    config = _config(ctx)
    model = model or str(model_dir(config.runtime.data_dir) / "teacher")
    if not Path(model).exists():
        raise _fail(f"model {model} not found; run `autotraj bootstrap` or pass --model PATH")
    console.print(f"serving {model} as '{served_name}' on http://{host}:{port}/v1/completions")
    uvicorn.run(serve_app(TransformersBackend(model), served_name), host=host, port=port, log_level="warning")


# -- configuration ---------------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    section: Annotated[str | None, typer.Argument(help="One section, e.g. rollout.")] = None,
) -> None:
    """Print the resolved configuration (profile plus --set overrides) as YAML."""
    import yaml

    config = _config(ctx).model_dump(mode="json")
    if section is not None:
        if section not in config:
            raise _fail(f"unknown section {section!r}; sections: {', '.join(config)}")
        config = {section: config[section]}
    console.print(yaml.safe_dump(config, sort_keys=False), markup=False, highlight=False)


# -- the main job ----------------------------------------------------------------------------------


@app.command()
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
        ctx.invoke(data_import, ctx=ctx, path=file, name=file.stem)  # imported once; for `autotraj eval --bench`
    console.rule("tiny models")
    ctx.invoke(bootstrap, ctx=ctx, size="full", seed=0, force=False)
    console.rule("synthetic task")
    ctx.invoke(data_synth, ctx=ctx, task="arith", n=questions, seed=1, name=None)
    ctx.invoke(data_synth, ctx=ctx, task="arith", n=test_questions, seed=777, name=None)
    console.rule("the pipeline (Prefect flow `autotraj`)")
    from flows.pipeline import pipeline_flow
    from tasks.evaluate import EvalReport, model_label

    outputs = pipeline_flow(
        f"arith-s1-n{questions}", f"arith-s777-n{test_questions}", name="quickstart",
        profile=ctx.obj["profile"], overrides=ctx.obj["overrides"],
    )  # fmt: skip
    lake = _lake(ctx)
    results = lake.resolve(outputs["eval_results"])
    rows = lake.read(results).to_pylist()
    metrics: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        metrics[row["benchmark"]][row["model_id"]][row["metric"]] = row["value"]
    examples = {row["benchmark"]: row["n_examples"] for row in rows}
    console.rule("teacher vs SFT vs GRPO")
    legend = {
        model_label(outputs["teacher"]): "the teacher that wrote the rollouts",
        outputs["sft_hq"]: "SFT on high-quality trajectories only",
        outputs["sft"]: "SFT on high-quality + repaired trajectories",
        outputs["grpo"]: "GRPO from that SFT policy, with the RM bonus",
    }
    for label, meaning in legend.items():
        console.print(f"  {label}: {meaning}")
    _comparison_table(EvalReport(results, metrics, examples))
    data_dir = _config(ctx).runtime.data_dir
    console.print(
        f"chart: {data_dir}/reports/quickstart.png\n"
        "next: [bold]autotraj tables --versions[/], "
        '[bold]autotraj sql "select model_id, metric, value from eval_results"[/], '
        "[bold]autotraj report --repairs quickstart[/], the Prefect UI (`prefect server start`; README: Prefect)"
    )


if __name__ == "__main__":
    app()
