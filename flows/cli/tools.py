"""`autotraj tools …`: the model's tools, the Python sandbox and search, as the model sees them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import config_of, console, fail

app = typer.Typer(help="The model's tools: the Python sandbox and search.", no_args_is_help=True)


@app.command("search")
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

    config = config_of(ctx)
    try:
        searcher = searcher_from_config(config.tools.search, config.runtime.data_dir)
    except SearchError as exc:
        raise fail(str(exc)) from None
    try:
        passages = searcher.search(query, k or config.tools.search.top_k)
    except SearchError as exc:
        raise fail(str(exc), code=1) from None
    if as_json:
        sys.stdout.write(json.dumps([asdict(p) for p in passages], ensure_ascii=False, indent=1) + "\n")
    else:
        console.print(format_result(passages, config.tools.max_result_chars), markup=False, highlight=False)


@app.command("exec")
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

    config = config_of(ctx)
    try:
        code = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise fail(f"cannot read {source}: {exc.strerror}") from None
    try:
        with SandboxPool(config.tools.python, workers=1, tier=tier) as pool:
            result = pool.run(code)
    except (IsolationUnavailable, SandboxError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(asdict(result), indent=1) + "\n")
    else:
        console.print(format_result(result, config.tools.max_result_chars), markup=False, highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@app.command("doctor")
def tools_doctor(ctx: typer.Context) -> None:
    """Probe which sandbox isolation tiers this host supports, what each protects, and which one the config gets."""
    from schemas.config import PROJECT_ROOT
    from tools_sandbox.doctor import protections
    from tools_sandbox.isolation import IsolationUnavailable, probe_tiers, resolve

    config = config_of(ctx)
    table = Table("tier", "available", "why")
    for check in probe_tiers():
        table.add_row(check.tier, "yes" if check.available else "no", check.reason)
    console.print(table)
    data_dir = Path(config.runtime.data_dir)
    guarded = Table("tier", "what", "how it is guarded here")
    for check in probe_tiers():
        if check.available:
            for what, how in protections(check.tier, [data_dir, data_dir / "lake", PROJECT_ROOT]):
                guarded.add_row(check.tier, what, how)
    console.print(guarded)
    requested = config.tools.python.tier
    try:
        isolation = resolve(requested)
    except IsolationUnavailable as exc:
        raise fail(f"tools.python.tier={requested}: {exc}", code=1) from None
    console.print(f"tools.python.tier={requested} -> {isolation.describe()}")


@app.command("serve-search")
def tools_serve_search(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8005,
) -> None:
    """Serve the local index over HTTP with the FlashRAG API (POST /search), so a cluster shares one index."""
    import uvicorn

    from tools_sandbox.search import LocalSearch, SearchError, serve_app

    config = config_of(ctx)
    try:
        searcher = LocalSearch(config.tools.search.corpus, config.runtime.data_dir)
    except SearchError as exc:
        raise fail(str(exc)) from None
    console.print(f"serving {len(searcher.passages)} passages from {searcher.corpus} on http://{host}:{port}/search")
    uvicorn.run(serve_app(searcher), host=host, port=port, log_level="warning")
