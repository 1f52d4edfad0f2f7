"""`autotraj data …`: bring question/answer sets into the lake."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import config_of, console, fail, lake_of

app = typer.Typer(help="Bring question/answer sets into the lake.", no_args_is_help=True)


@app.command("import")
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
    encoding: Annotated[str, typer.Option(help="Text encoding of a JSONL, JSON or CSV file.")] = "utf-8",
    max_question_chars: Annotated[int, typer.Option(min=1, help="Longer questions are rejected.")] = 20_000,
    max_answer_chars: Annotated[int, typer.Option(min=1, help="Longer answers are rejected.")] = 1_000,
) -> None:
    """Import queries; malformed, oversized, empty and duplicate rows go to rejected_inputs with a reason."""
    from tasks.stages.import_queries import FieldMapping, import_queries

    mapping = FieldMapping(
        question=question_field, answer=answer_field, id=id_field, task=task_field, default_task=task, split=split,
        encoding=encoding, max_question_chars=max_question_chars, max_answer_chars=max_answer_chars,
    )  # fmt: skip
    report = import_queries(lake_of(ctx), path, name, mapping)
    if report.already_imported is not None:
        console.print(
            f"{path} is already imported as [bold]{report.already_imported.version_id}[/] "
            f"({report.already_imported.row_count} rows); nothing to do."
        )
        if report.nothing_importable:
            raise fail(f"nothing importable in {path}", code=1)
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
    elif report.rejected_version is None and not report.nothing_importable:
        console.print(f"{path} adds nothing to queries/{name}; nothing written.")
    if report.nothing_importable:
        unmapped = {mapping.question, mapping.answer} - set(report.columns)
        hint = (
            f"its rows hold {', '.join(report.columns[:20])}: name the question's and the answer's with "
            "--question-field and --answer-field"
            if report.columns and unmapped
            else ""
        )
        raise fail(f"nothing importable in {path}", code=1, hint=hint)


@app.command("synth")
def data_synth(
    ctx: typer.Context,
    task: Annotated[
        str,
        typer.Option(
            help="Synthetic task: arith (arithmetic word problems that need Python), facts (questions about "
            "fictional towns that need search, and Python for two towns) or tir (both, mixed)."
        ),
    ] = "arith",
    n: Annotated[int, typer.Option("--n", help="Number of questions.", min=1)] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same questions).")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name [default: <task>-s<seed>-n<n>].")] = None,
) -> Path | None:
    """Generate synthetic questions with gold answers and import them as queries; for facts and tir, also
    write the towns' search corpus (returned) that the pipeline's `tools.search.corpus` must name."""
    from tasks.bootstrap import facts, mixture

    if task not in mixture.TASKS:
        raise fail(f"unknown synthetic task {task!r}; available: {', '.join(mixture.TASKS)}")
    name = name or f"{task}-s{seed}-n{n}"
    data_dir = config_of(ctx).runtime.data_dir
    path = mixture.write_jsonl(mixture.generate(task, n, seed), Path(data_dir) / "synth" / f"{name}.jsonl")
    ctx.invoke(data_import, ctx=ctx, path=path, name=name)
    if not mixture.needs_world(task):
        return None
    corpus = facts.ensure_corpus(data_dir)
    console.print(
        f"search corpus: {corpus} (the towns these questions ask about): run the stages as "
        f"`autotraj --set tools.search.corpus={corpus} …`",
        markup=False, highlight=False,
    )  # fmt: skip
    return corpus
