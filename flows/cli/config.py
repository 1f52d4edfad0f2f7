"""`autotraj config …`: the resolved configuration."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import config_of, console, fail

app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@app.command("show")
def config_show(
    ctx: typer.Context,
    section: Annotated[str | None, typer.Argument(help="One section, e.g. rollout.")] = None,
) -> None:
    """Print the resolved configuration (profile plus --set overrides) as YAML."""
    import yaml

    config = config_of(ctx).model_dump(mode="json")
    if section is not None:
        if section not in config:
            raise fail(f"unknown section {section!r}; sections: {', '.join(config)}")
        config = {section: config[section]}
    console.print(yaml.safe_dump(config, sort_keys=False), markup=False, highlight=False)
