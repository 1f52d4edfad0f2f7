"""The `autotraj` command line, one module per command group.

data.py (import, synth) · lake.py (tables, sql, attach, export, report) · tools.py (the model's tools) ·
models.py (bootstrap, serve-model, serve-rm) · stages.py (one command per stage, built from its spec) ·
pipeline.py (pipeline, quickstart) · config.py (config show). Any error a command raises is one
line on stderr (exit 2 for bad input, 1 for a failure); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from flows.cli import config, data, lake, models, pipeline, reaper, stages, tools
from flows.cli.common import ErrorHandlingGroup

app = typer.Typer(
    cls=ErrorHandlingGroup,
    help="AutoTraj: repair and reward tool-use trajectories for tool-integrated reasoning.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def global_options(
    ctx: typer.Context,
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile in deployments/ or a YAML path.")] = "cpu",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False,
) -> None:
    """Global options shared by every command."""
    ctx.obj = {"profile": profile, "overrides": list(overrides or []), "debug": debug}


def main() -> None:
    """The `autotraj` command: the app, with a watchdog that stops what it starts if it is killed."""
    reaper.start(os.getpid())
    app()


app.add_typer(data.app, name="data")
app.add_typer(config.app, name="config")
app.add_typer(tools.app, name="tools")
for group in (lake, models, stages, pipeline):
    group.register(app)
