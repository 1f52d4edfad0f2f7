"""Model commands: `bootstrap` builds the tiny models; `serve-model` and `serve-rm` put a model behind HTTP."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import Progress, config_of, console, lake_of


def register(app: typer.Typer) -> None:
    """Add the model commands to the top-level app."""
    app.command()(bootstrap)
    app.command("serve-model")(serve_model)
    app.command("serve-rm")(serve_rm)


def bootstrap(
    ctx: typer.Context,
    size: Annotated[
        str,
        typer.Option(
            help="full (the embedded default), test (the test suite's models) or smoke (seconds: checks an install)."
        ),
    ] = "full",
    seed: Annotated[int, typer.Option(help="Seed of the tokenizer, data and weights.")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even when the cached build matches the recipe.")] = False,
) -> None:
    """Train the offline tokenizer, tiny teacher and tiny repairer (cached until the recipe changes)."""
    from tasks.bootstrap.build import bootstrap as build
    from tasks.bootstrap.check import evaluate_build

    config = config_of(ctx)
    with Progress() as bar:
        result = build(
            config.runtime.data_dir,
            size,
            seed,
            force,
            lambda role, step, steps, loss: bar.update(f"train {role}", step, steps, f"loss {loss:.3f}"),
            evaluate=lambda path, questions: evaluate_build(path, config, questions),
        )
    verb = "built" if result.built else "reused"
    evaluation = result.metrics.get("evaluation", {})
    parts = [
        f"{role} {result.metrics[role].get('seconds', '?')} s"
        for role in ("base", "teacher", "repairer")
        if role in result.metrics
    ]
    parts.append(f"evaluation {evaluation.get('seconds', '?')} s")
    console.print(f"{verb} [bold]{result.directory}[/] ({result.seconds} s to build: {', '.join(parts)})")
    if evaluation:
        table = Table("model", "figure", "value", "target", title="held-out synthetic questions")
        for row in evaluation["rows"]:
            table.add_row(*[str(cell) for cell in row])
        console.print(table)
    console.print(f"teacher: {result.teacher}\nrepairer: {result.repairer}")


def _local_model(ctx: typer.Context, reference: str) -> str:
    """The directory of a local model reference (role, registered model or path)."""
    from tasks.core.errors import ModelReferenceError
    from tasks.core.models import resolve_model

    config = config_of(ctx)
    model = resolve_model(reference, data_dir=config.runtime.data_dir, lake=lake_of(ctx))
    if model.path is None:
        raise ModelReferenceError(f"model {reference!r} is served elsewhere; serve a local model")
    return model.path


ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="AUTOTRAJ_API_KEY",
        show_envvar=True,
        help="Require 'Authorization: Bearer KEY' (all but /health); clients send $AUTOTRAJ_API_KEY.",
    ),
]
WedgedAfter = Annotated[
    float, typer.Option(help="/health answers 503 once one request has held the model this long (s).")
]


def _auth_note(api_key: str | None) -> str:
    return "; bearer key required" if api_key else "; no API key: anyone who reaches the port may use it"


def serve_model(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model reference: a role, models/<name>, model_id or path.")
    ] = "teacher",
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    served_name: Annotated[str, typer.Option(help="Model name in the API (what URL#name references).")] = "default",
    api_key: ApiKey = None,
    wedged_after_s: WedgedAfter = 600.0,
) -> None:
    """Serve a model as an OpenAI-compatible /v1/completions endpoint (transformers backend)."""
    import uvicorn

    from tasks.generation.llm import TransformersBackend
    from tasks.serving.completions import serve_app

    path = _local_model(ctx, model)
    reference = f"http://{host}:{port}/v1#{served_name}"
    note = f"serving {path} as '{served_name}' on http://{host}:{port}/v1 (reference: {reference}){_auth_note(api_key)}"
    console.print(note, markup=False, highlight=False)
    app = serve_app(TransformersBackend(path), served_name, api_key, wedged_after_s)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def serve_rm(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Reward model: a model_id, models/<name> or path.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    api_key: ApiKey = None,
    wedged_after_s: WedgedAfter = 600.0,
) -> None:
    """Serve a reward model: POST /score {"trajectory": ...} -> {"score": ...}, and GET /health."""
    import uvicorn

    from tasks.core.prompts import Prompts
    from tasks.serving.reward_model import RewardScorer, serve_app

    path = _local_model(ctx, model)
    system = Prompts.from_config(config_of(ctx)).system
    console.print(f"serving reward model {path} on http://{host}:{port}/score{_auth_note(api_key)}")
    app = serve_app(RewardScorer(path, system), model, api_key, wedged_after_s)
    uvicorn.run(app, host=host, port=port, log_level="warning")
