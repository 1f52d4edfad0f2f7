"""The `autotraj` command: help everywhere, SQL output formats, tables, config and the main job."""

from __future__ import annotations

import csv
import io
import json

import typer

from flows.cli import app
from tests.conftest import FIXTURES


def _commands(command, path: tuple[str, ...] = ()):
    yield path
    # Typer vendors its own click, so look for sub-commands rather than a click.Group.
    for name, child in getattr(command, "commands", {}).items():
        yield from _commands(child, (*path, name))


def test_every_subcommand_has_help(cli) -> None:
    paths = list(_commands(typer.main.get_command(app)))
    assert {("data", "import"), ("sql",), ("tables",), ("config", "show"), ("quickstart",), ("attach",)} <= set(paths)
    for path in paths:
        result = cli(*path, "--help")
        assert result.exit_code == 0, path
        assert "Usage:" in result.output, path


def test_sql_formats_and_errors(cli) -> None:
    assert cli("data", "import", str(FIXTURES / "messy_queries.jsonl"), "--name", "messy").exit_code == 0
    query = "SELECT source_id, task FROM queries ORDER BY source_id"
    as_json = json.loads(cli("sql", query, "--format", "json").stdout)
    assert as_json[0] == {"source_id": "a1", "task": "math"} and len(as_json) == 5
    as_csv = list(csv.DictReader(io.StringIO(cli("sql", query, "--format", "csv").stdout)))
    assert as_csv == [{k: str(v) for k, v in row.items()} for row in as_json]
    table = cli("sql", query, "--max-rows", "2")
    assert "a1" in table.output and "3 more rows" in table.output
    bad = cli("sql", "SELECT * FROM no_such_table")
    assert bad.exit_code == 1 and "no_such_table" in bad.output
    # The lake is attached read only for ad-hoc SQL.
    refused = cli("sql", "DELETE FROM lake.queries")
    assert refused.exit_code == 2 and "DELETE statements are refused" in refused.output
    assert json.loads(cli("sql", "SELECT count(*) AS n FROM queries", "-f", "json").stdout) == [{"n": 5}]


def test_tables_lists_versions_and_lineage(cli) -> None:
    cli("data", "import", str(FIXTURES / "messy_queries.jsonl"), "--name", "messy")
    result = cli("tables", "--versions")
    assert result.exit_code == 0
    for expected in ("queries", "messy", "queries/messy@1", "rejected_inputs/messy@1", "import"):
        assert expected in result.output


def test_config_show_and_override_errors(cli) -> None:
    shown = cli("--set", "rollout.n=7", "config", "show", "rollout")
    assert shown.exit_code == 0 and "n: 7" in shown.output
    bad = cli("--set", "rollout.nn=7", "config", "show")
    assert bad.exit_code == 2 and "unknown config key 'rollout.nn'" in bad.output


def test_attach_prints_working_sql(cli, home) -> None:
    import duckdb

    cli("data", "import", str(FIXTURES / "messy_queries.jsonl"), "--name", "messy")
    printed = cli("attach").stdout
    assert f"-- needs DuckDB {duckdb.__version__}" in printed  # the extensions are built for that version
    statements = [line for line in printed.splitlines() if line and not line.startswith("--")]
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for statement in statements[:-1]:
        con.execute(statement)
    assert con.execute("SELECT count(*) FROM lake.queries").fetchone() == (5,)
