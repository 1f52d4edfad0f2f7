"""The stage commands (`rollout`, `score`, `repair`, `pairs`, `sft`, `reward-model`, `grpo`, `eval`), built
from each stage's spec: its inputs, models and options become the command's options, and the command
calls the same stage entry (flows/stage.py) as the stage's Prefect flow and deployment."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.cli.common import Progress, print_result
from flows.stage import STAGES, run_stage
from tasks.core.stage import Input, Model, Option, StageSpec

COMMAND_NAMES = {"evaluate": "eval"}  # where the command is not the stage's own name


def _flag(name: str, short: str | None) -> list[str]:
    return [f"--{name.replace('_', '-')}", *([short] if short else [])]


def _parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _help(text: str) -> str:
    return text.replace("[", "\\[")  # rich markup would swallow "[default: …]"


def _option_parameter(item: Input | Model | Option) -> inspect.Parameter:
    """The typer option of one spec parameter (required when nothing else can supply it)."""
    help = _help(item.help)
    if isinstance(item, Option):
        if item.type is bool:
            return _parameter(item.name, Annotated[bool, typer.Option(*_flag(item.name, None), help=help)],
                              bool(item.default))  # fmt: skip
        kind = item.type | None
        return _parameter(item.name, Annotated[kind, typer.Option(*_flag(item.name, None), help=help)],
                          item.default)  # fmt: skip
    required = item.required
    option = typer.Option(*_flag(item.name, item.short), help=help)
    return _parameter(item.name, Annotated[str if required else str | None, option], ... if required else None)


def stage_command(spec: StageSpec) -> Callable[..., None]:
    """A typer command for one stage: its options come from the spec, its body is the stage entry."""

    def command(ctx: typer.Context, **arguments: Any) -> None:
        with Progress() as bar:

            def progress(done: int, total: int, info: str = "") -> None:
                # A data stage's `info` names what it counts (one bar each); a training stage's is its loss.
                if spec.kind == "data":
                    bar.update(f"{spec.command} {info}".rstrip(), done, total)
                else:
                    bar.update(spec.command, done, total, info)

            result = run_stage(spec, arguments, ctx.obj["profile"], ctx.obj["overrides"], progress)
        print_result(result)

    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    parameters += [_option_parameter(item) for item in (*spec.inputs, *spec.models, *spec.options)]
    name_help = _help(f"Output dataset name [default: {spec.default_name.replace('{input}', '<input>')}].")
    parameters.append(_parameter("name", Annotated[str | None, typer.Option("--name", help=name_help)], None))
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__name__ = command.__qualname__ = spec.name
    command.__doc__ = spec.description
    return command


def register(app: typer.Typer) -> None:
    """Add one command per stage to the top-level app."""
    for spec in STAGES.values():
        app.command(COMMAND_NAMES.get(spec.name, spec.command))(stage_command(spec))
