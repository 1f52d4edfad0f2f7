"""Lake commands: `tables`, `sql`, `attach` to inspect it; `export` and `report` to take data out."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli.common import config_of, console, fail, lake_of

maintenance = typer.Typer(help="Maintain the lake.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the lake commands to the top-level app, and `autotraj lake …`."""
    for command in (tables, sql, attach, export, report):
        app.command()(command)
    app.add_typer(maintenance, name="lake")


@maintenance.command("gc")
def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; delete nothing.")] = False,
    older_than: Annotated[
        float | None,
        typer.Option(help="Keep what is younger than this many hours \\[default: runtime.lake_retention_hours]."),
    ] = None,
) -> None:
    """Expire old snapshots and delete data files no live version uses (a killed write's, an expired snapshot's)."""
    hours = older_than if older_than is not None else config_of(ctx).runtime.lake_retention_hours
    report = lake_of(ctx).gc(hours, dry_run=dry_run)
    expire, delete = ("would expire", "would delete") if dry_run else ("expired", "deleted")
    console.print(
        f"{expire} {len(report.expired_snapshots)} snapshot(s) older than {hours:g} h; {delete} "
        f"{len(report.old_files)} file(s) only they used and {len(report.orphan_files)} orphan file(s)",
        markup=False, highlight=False,
    )  # fmt: skip
    for path in [*report.old_files, *report.orphan_files]:
        console.print(f"  {path}", markup=False, highlight=False)


def tables(
    ctx: typer.Context,
    versions: Annotated[bool, typer.Option("--versions", help="List every version with its lineage.")] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include the stages' internal shard datasets (<name>.partial-<key>).")
    ] = False,
) -> None:
    """Show the lake's tables, their datasets, versions, row counts and lineage."""
    from schemas.lake import is_shard
    from schemas.tables import VERSIONED_TABLES

    lake = lake_of(ctx)
    infos = [info for info in lake.versions() if show_all or not is_shard(info.dataset)]
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


def _csv_ready(result: Any) -> Any:
    """The table with list, struct and map columns as JSON text (CSV has no nested values)."""
    import pyarrow as pa

    for index, field in enumerate(result.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v, default=str, ensure_ascii=False)
                    for v in result.column(index).to_pylist()]  # fmt: skip
            result = result.set_column(index, field.name, pa.array(text, pa.string()))
    return result


def _print_arrow(result: Any, output_format: str, max_rows: int) -> None:
    if output_format == "csv":
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(_csv_ready(result), sink)
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
        raise fail(f"--format must be table, csv or json, not {output_format!r}")
    try:
        result = lake_of(ctx).sql(query)
    except duckdb.Error as exc:  # the first line: DuckDB adds the query with a caret below it
        raise fail(str(exc).strip().splitlines()[0], code=1) from None
    _print_arrow(result, output_format, max_rows)


def attach(ctx: typer.Context) -> None:
    """Print the SQL that attaches this lake in your own DuckDB session (read only)."""
    import duckdb

    from schemas.catalog import extension_file

    lake = lake_of(ctx)
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
    console.print(
        f"-- needs DuckDB {duckdb.__version__} (the CLI or Python package): the extensions below are built for "
        "it and other versions refuse to load them", markup=False,
    )  # fmt: skip
    console.print("-- start duckdb with unsigned extensions allowed: duckdb -unsigned", markup=False)
    console.print(f"LOAD '{ducklake}';\nLOAD '{catalog_ext}';", markup=False)
    console.print(
        f"ATTACH 'ducklake:{lake.catalog_url}' AS lake (DATA_PATH '{lake.data_path}/', READ_ONLY);", markup=False
    )
    console.print("SELECT * FROM lake.runs ORDER BY created_at DESC LIMIT 10;", markup=False)


def export(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="sft or pairs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .jsonl file.")],
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            "-v",
            help="Dataset as `tables` lists it: name, name@N, <table or kind>/name@N "
            "[default: the table's only dataset].",
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="trl, llamafactory, sharegpt (FastChat/axolotl) or openai.")
    ] = "trl",
    system: Annotated[
        str | None, typer.Option(help="System prompt \\[default: rollout.system_prompt_file or the bundled one].")
    ] = None,
) -> None:
    """Export SFT examples or preference pairs in another trainer's tool-calling format (README: Training elsewhere)."""
    from tasks.core.prompts import Prompts
    from tasks.reports.export import FORMATS, KINDS, ExportError, export_rows, register_llamafactory

    if kind not in KINDS:
        raise fail(f"unknown kind {kind!r}; choose sft or pairs")
    if output_format not in FORMATS:
        raise fail(f"unknown format {output_format!r}; choose from {', '.join(FORMATS)}")
    lake = lake_of(ctx)
    table = KINDS[kind]
    if version is None:
        names = sorted({info.dataset for info in lake.versions(table)})
        if not names:
            raise fail(f"no {table} version yet; run `autotraj pairs` first")
        if len(names) > 1:  # never guess: the newest written may be another run's
            raise fail(f"{table} holds {len(names)} datasets ({', '.join(names)}); name one with --version")
        version = names[0]
    name, _, rest = version.partition("/")
    if rest and name == kind:  # `pairs/myrun` and `sft/myrun[@N]`, the kind's short names
        version = f"{table}/{rest}"
    info = lake.resolve(version, table)
    system = Prompts.from_config(config_of(ctx)).system if system is None else system
    try:
        count = export_rows(kind, lake.read(info).to_pylist(), output_format, system, out)
        console.print(f"wrote {count} rows of {info.version_id} to {out} ({output_format})", markup=False)
        if output_format == "llamafactory":
            info_file, name = register_llamafactory(kind, out)
            where = f"dataset: {name}, dataset_dir: {out.parent}"
            console.print(f"registered {name!r} in {info_file} ({where})", markup=False)
    except ExportError as exc:
        raise fail(str(exc)) from None


def report(
    ctx: typer.Context,
    repairs: Annotated[str, typer.Option("--repairs", help="Repairs version (name, name@N, repairs/name@N).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory [default: <data dir>/reports/<name>].")
    ] = None,
) -> None:
    """Write a markdown report with quality histograms before and after repair."""
    from tasks.reports.report import write_report

    lake = lake_of(ctx)
    info = lake.resolve(repairs, "repairs")
    path = write_report(lake, info.version_id, out or Path(config_of(ctx).runtime.data_dir) / "reports" / info.dataset)
    console.print(f"wrote {path} and {path.parent / 'quality.png'}")
