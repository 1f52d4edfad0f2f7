"""What every command group shares: the consoles, the global options, progress, errors, result tables."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from schemas.config import ConfigError, PipelineConfig, load_config
from tasks.core.errors import is_permanent

if TYPE_CHECKING:
    from schemas.lake import Lake
    from tasks.core.stage import StageResult, SummaryTable

# Piped output (files, grep, tests) gets wide tables instead of rich's 80-column default.
_PIPE_WIDTH = None if sys.stdout.isatty() else 240
console = Console(soft_wrap=True, width=_PIPE_WIDTH)
err_console = Console(stderr=True, soft_wrap=True, width=_PIPE_WIDTH)


def fail(message: str, code: int = 2, hint: str = "") -> typer.Exit:
    """Print a one-line error (and a dimmed hint); the exit to raise (2: bad input, 1: a failure)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}" + (f"  [dim]{escape(hint)}[/]" if hint else ""),
                      highlight=False)  # fmt: skip
    return typer.Exit(code)


def one_line(error: BaseException) -> str:
    """An error as one line: its message (first line), with its type unless it is a plain input error."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    if len(lines) > 1:
        message += " (…)"
    return message if is_permanent(error) else f"{type(error).__name__}: {message}"


class ErrorHandlingGroup(TyperGroup):
    """The top-level group: any error a command raises becomes one clear line (a traceback with --debug)."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; turn its error into one line and an exit code unless --debug."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            code = 2 if is_permanent(exc) else 1
            raise fail(one_line(exc), code, hint="(--debug shows the traceback)") from None


def config_of(ctx: typer.Context) -> PipelineConfig:
    """The resolved config of this invocation (profile plus --set overrides)."""
    try:
        return load_config(ctx.obj["profile"], ctx.obj["overrides"])
    except ConfigError as exc:
        raise fail(str(exc)) from None


def lake_of(ctx: typer.Context) -> Lake:
    """The lake of this invocation's config."""
    from schemas.lake import Lake  # imported here so `--help` does not load DuckDB

    return Lake.from_config(config_of(ctx).runtime)


class Progress:
    """Progress of long work: a live bar on a terminal, a line every 10 % in logs and CI."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        self.live = console.is_terminal
        description, info = TextColumn("{task.description}"), TextColumn("{task.fields[info]}")
        columns = (description, BarColumn(), MofNCompleteColumn(), info)
        self.bar = Bars(*columns, TimeElapsedColumn(), console=console)
        self.tasks: dict[str, Any] = {}
        self.printed: dict[str, int] = {}

    def __enter__(self) -> Progress:
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


def cell(value: Any) -> str:
    """A table cell: floats to 3 decimals, None as a dash."""
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_summary(summary: SummaryTable) -> None:
    """A stage's summary as a rich table."""
    table = Table(*summary.columns, title=summary.title)
    for row in summary.rows:
        table.add_row(*map(cell, row))
    console.print(table)


def print_result(result: StageResult) -> None:
    """What a stage wrote, its summary and its notes; exit 1 when part of it failed."""
    if result.summary is not None:
        print_summary(result.summary)
    for note in result.notes:
        console.print(note, markup=False, highlight=False)
    for name, value in result.outputs.items():
        console.print(f"wrote {name}: [bold]{escape(value)}[/]", highlight=False)
    if result.problem:
        raise fail(result.problem, code=1)
