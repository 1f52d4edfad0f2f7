"""The lake's catalog through DuckDB: the extensions, the attach, the tables and views, and which of
its errors are a lost race worth another attempt. schemas/lake.py builds versions on top of this.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from schemas.tables import SCHEMAS, SHARD_MARKER, VERSION_COLUMN, VERSIONED_TABLES

DUCKDB_VERSION = "v1.5.5"
CLOCK_TABLE = "write_clock"  # internal: one row every write replaces (see Lake._insert_versions)


class LakeError(RuntimeError):
    """A lake operation that cannot be carried out (unknown version, bad name, catalog trouble)."""


def is_transient(exc: BaseException) -> bool:
    """A lost race on the catalog, worth another attempt: DuckLake raises a TransactionException when
    a commit conflicts with a concurrent one or finds the catalog busy (SQLite's lock). Recognised by
    type alone: no other error is retried, whatever its message says."""
    return isinstance(exc, duckdb.TransactionException)


def retrying(attempts: int) -> Retrying:
    """Up to `attempts` tries of a catalog operation, backing off, while it loses races (is_transient)."""
    return Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.05, max=2.0),
        reraise=True,
    )


def extension_file(package: str, filename: str) -> Path:
    """Path of a DuckDB extension shipped inside a duckdb-extension-* package."""
    module = __import__(package)
    path = Path(module.__file__).parent / "extensions" / DUCKDB_VERSION / filename
    if not path.exists():
        raise LakeError(f"DuckDB extension {filename} missing from the {package} package (expected {path})")
    return path


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _load_extensions(con: duckdb.DuckDBPyConnection, catalog_url: str, data_dir: Path) -> None:
    ducklake = extension_file("duckdb_extension_ducklake", "ducklake.duckdb_extension")
    con.execute(f"LOAD {sql_string(str(ducklake))}")
    if catalog_url.startswith("sqlite:"):
        package, source, name = "duckdb_extension_sqlite", "sqlite.duckdb_extension", "sqlite_scanner"
    elif catalog_url.startswith("postgres:"):
        package, source, name = (
            "duckdb_extension_postgres_scanner",
            "postgres_scanner.duckdb_extension",
            "postgres_scanner",
        )
    else:
        raise LakeError(f"unsupported lake catalog {catalog_url!r}: use sqlite:PATH or postgres:DSN")
    # DuckDB checks that a loaded file's name matches the extension's entry point, and the
    # packaged SQLite file is named `sqlite` while its entry point is `sqlite_scanner`.
    link_dir = data_dir / "duckdb_extensions"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / f"{name}.duckdb_extension"
    target = extension_file(package, source)
    if not link.exists() or link.resolve() != target.resolve():
        tmp = link_dir / f".{name}.{uuid.uuid4().hex}"
        tmp.symlink_to(target)
        tmp.replace(link)
    con.execute(f"LOAD {sql_string(str(link))}")


SQLITE_BUSY_TIMEOUT_MS = 30_000


def attach(catalog_url: str, data_path: Path, data_dir: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as `lake` (read only or not)."""
    con = duckdb.connect(config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false"})
    try:
        _load_extensions(con, catalog_url, data_dir)
        options = [f"DATA_PATH {sql_string(str(data_path) + os.sep)}", "DATA_INLINING_ROW_LIMIT 0"]
        if catalog_url.startswith("sqlite:"):
            # Wait for another process's catalog lock rather than fail at once: a busy SQLite catalog
            # otherwise raises a plain duckdb.Error from the attach probe, which is not a lost race.
            options.append(f"META_BUSY_TIMEOUT {SQLITE_BUSY_TIMEOUT_MS}")
        if read_only:
            options.append("READ_ONLY")
        con.execute(f"ATTACH {sql_string('ducklake:' + catalog_url)} AS lake ({', '.join(options)})")
    except Exception:
        con.close()
        raise
    return con


def lake_columns(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """The columns of every table of the attached lake."""
    existing: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'lake'"
    ).fetchall():
        existing.setdefault(table, set()).add(column)
    return existing


def missing_columns(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the attached lake lacks a table or a column the schemas have."""
    existing = lake_columns(con)
    missing = any(not set(schema.names) <= existing.get(table, set()) for table, schema in SCHEMAS.items())
    return missing or CLOCK_TABLE not in existing


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables and add columns that newer schemas gained (DuckLake supports ADD COLUMN)."""
    existing = lake_columns(con)
    if CLOCK_TABLE not in existing:
        con.execute(f"CREATE TABLE lake.{CLOCK_TABLE} (tick VARCHAR)")
        con.execute(f"INSERT INTO lake.{CLOCK_TABLE} VALUES ('')")
    for table, schema in SCHEMAS.items():
        if table not in existing:
            con.register("_empty", schema.empty_table())
            con.execute(f"CREATE TABLE lake.{table} AS SELECT * FROM _empty")
            con.unregister("_empty")
            continue
        for column in schema:
            if column.name not in existing[table]:
                con.execute(f"ALTER TABLE lake.{table} ADD COLUMN {column.name} {_duckdb_type(con, column)}")


def _duckdb_type(con: duckdb.DuckDBPyConnection, column: pa.Field) -> str:
    con.register("_probe", pa.schema([column]).empty_table())
    try:
        (type_name,) = [row[1] for row in con.execute("DESCRIBE _probe").fetchall()]
    finally:
        con.unregister("_probe")
    return type_name


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """The views user SQL sees: `<table>` (latest version of each dataset; stages' internal shard
    datasets left out, so each trajectory counts once), `<table>_all` (every version), `runs`."""
    con.execute(
        "CREATE OR REPLACE TEMP VIEW latest_versions AS SELECT * FROM lake.runs "
        f"WHERE position('{SHARD_MARKER}' IN dataset) = 0 "
        "QUALIFY row_number() OVER (PARTITION BY table_name, dataset ORDER BY version DESC) = 1"
    )
    con.execute("CREATE OR REPLACE TEMP VIEW runs AS SELECT * FROM lake.runs")
    for table in VERSIONED_TABLES:
        for view, source in ((table, "latest_versions"), (f"{table}_all", "lake.runs")):
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {view} AS "
                f"SELECT d.*, v.dataset, v.version FROM lake.{table} d "
                f"JOIN (SELECT version_id, dataset, version FROM {source} WHERE table_name = '{table}') v "
                f"USING ({VERSION_COLUMN})"
            )
