"""The versioned Parquet lake: DuckLake tables queried through DuckDB, with lineage in `runs`.

A dataset version is an immutable set of rows of one table, named `table/dataset@N` and tagged with
that id in the `version_id` column. Its rows and its `runs` row are committed in one DuckLake
transaction, so a failed or killed write leaves no visible trace. Writers on one host serialise on a
file lock next to the catalog (two DuckLake commits against one SQLite catalog otherwise fail with
"database is locked"); transient catalog errors are retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from schemas.config import PROJECT_ROOT, RuntimeConfig
from schemas.tables import LINEAGE_TABLE, SCHEMAS, VERSION_COLUMN, VERSIONED_TABLES, payload_schema, validate

DUCKDB_VERSION = "v1.5.5"
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
VERSION_REF = re.compile(r"^(?:(?P<table>[a-z_]+)/)?(?P<dataset>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<version>\d+))?$")


class LakeError(RuntimeError):
    """A lake operation that cannot be carried out (unknown version, bad name, catalog trouble)."""


@dataclass(frozen=True)
class Lineage:
    """Who wrote a version: stage, run, config and inputs (the Prefect flow run is detected)."""

    stage: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    config_hash: str = ""
    input_versions: tuple[str, ...] = ()
    prefect_flow_run_id: str | None = None


@dataclass(frozen=True)
class VersionInfo:
    """One committed dataset version, as recorded in `runs`."""

    version_id: str
    table_name: str
    dataset: str
    version: int
    stage: str
    run_id: str
    config_hash: str
    input_versions: tuple[str, ...]
    prefect_flow_run_id: str | None
    row_count: int
    code_version: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> VersionInfo:
        """Build from a `runs` row."""
        values = {name: row[name] for name in SCHEMAS[LINEAGE_TABLE].names}
        values["input_versions"] = tuple(values["input_versions"] or ())
        return cls(**values)


def version_id_for(table: str, dataset: str, version: int) -> str:
    """The id of a version: `table/dataset@N`."""
    return f"{table}/{dataset}@{version}"


def current_flow_run_id() -> str | None:
    """The Prefect flow run this process is in, if any (without importing Prefect when unused)."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit of the checkout, when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("autotraj")
    except PackageNotFoundError:
        base = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}"


def _is_transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, duckdb.Error) and (
        "database is locked" in text or "failed to commit ducklake transaction" in text or "conflict" in text
    )


def _retrying(attempts: int) -> Retrying:
    return Retrying(
        retry=retry_if_exception(_is_transient),
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


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class _PendingWrite:
    table: str
    dataset: str
    data: pa.Table


class WriteBatch:
    """Versions staged for one transaction; committed together by Lake.transaction()."""

    def __init__(self) -> None:
        self.pending: list[_PendingWrite] = []
        self.committed: list[VersionInfo] = []

    def write(self, table: str, dataset: str, data: pa.Table | Iterable[Mapping[str, Any]]) -> None:
        """Validate rows now and stage them as the next version of `table/dataset`."""
        if table not in VERSIONED_TABLES:
            raise LakeError(f"cannot write table {table!r}; versioned tables: {', '.join(VERSIONED_TABLES)}")
        if not DATASET_NAME.match(dataset):
            raise LakeError(f"dataset name {dataset!r} must match {DATASET_NAME.pattern}")
        self.pending.append(_PendingWrite(table, dataset, validate(table, data)))


class Lake:
    """A DuckLake lake: a catalog (SQLite by default, Postgres for clusters) and Parquet data files."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        catalog_url: str | None = None,
        data_path: str | os.PathLike[str] | None = None,
    ):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.lake_dir = self.data_dir / "lake"
        self.catalog_url = catalog_url or f"sqlite:{self.lake_dir / 'catalog.sqlite'}"
        self.data_path = Path(data_path) if data_path else self.lake_dir / "data"
        self._initialized = False

    @classmethod
    def from_config(cls, runtime: RuntimeConfig) -> Lake:
        """Open the lake a runtime config points at."""
        return cls(runtime.data_dir, runtime.lake_catalog_url, runtime.lake_data_path)

    # -- connections -------------------------------------------------------------------------------

    def _load_extensions(self, con: duckdb.DuckDBPyConnection) -> None:
        ducklake = extension_file("duckdb_extension_ducklake", "ducklake.duckdb_extension")
        con.execute(f"LOAD {_sql_string(str(ducklake))}")
        if self.catalog_url.startswith("sqlite:"):
            package, source, name = "duckdb_extension_sqlite", "sqlite.duckdb_extension", "sqlite_scanner"
        elif self.catalog_url.startswith("postgres:"):
            package, source, name = (
                "duckdb_extension_postgres_scanner",
                "postgres_scanner.duckdb_extension",
                "postgres_scanner",
            )
        else:
            raise LakeError(f"unsupported lake catalog {self.catalog_url!r}: use sqlite:PATH or postgres:DSN")
        # DuckDB checks that a loaded file's name matches the extension's entry point, and the
        # packaged SQLite file is named `sqlite` while its entry point is `sqlite_scanner`.
        link_dir = self.data_dir / "duckdb_extensions"
        link_dir.mkdir(parents=True, exist_ok=True)
        link = link_dir / f"{name}.duckdb_extension"
        target = extension_file(package, source)
        if not link.exists() or link.resolve() != target.resolve():
            tmp = link_dir / f".{name}.{uuid.uuid4().hex}"
            tmp.symlink_to(target)
            tmp.replace(link)
        con.execute(f"LOAD {_sql_string(str(link))}")

    def _attach(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false"})
        try:
            self._load_extensions(con)
            options = [f"DATA_PATH {_sql_string(str(self.data_path) + os.sep)}", "DATA_INLINING_ROW_LIMIT 0"]
            if read_only:
                options.append("READ_ONLY")
            con.execute(f"ATTACH {_sql_string('ducklake:' + self.catalog_url)} AS lake ({', '.join(options)})")
        except Exception:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        self.lake_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lake_dir / ".write.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def initialize(self) -> None:
        """Create the catalog and every table that does not exist yet; add columns new schemas gained."""
        if self._initialized:
            return
        self.data_path.mkdir(parents=True, exist_ok=True)
        with self._write_lock():
            con = self._attach_retrying(read_only=False)
            try:
                if _missing_columns(con):
                    con.execute("BEGIN TRANSACTION")
                    _create_tables(con)
                    con.execute("COMMIT")
            finally:
                con.close()
        self._initialized = True

    def _attach_retrying(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        for attempt in _retrying(20):
            with attempt:
                return self._attach(read_only=read_only)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _catalog_exists(self) -> bool:
        return not self.catalog_url.startswith("sqlite:") or Path(self.catalog_url.removeprefix("sqlite:")).exists()

    @contextlib.contextmanager
    def connect(self, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection with the lake attached as `lake` and one view per table.

        `<table>` shows the latest version of each dataset (with `dataset` and `version` columns),
        `<table>_all` every committed version; `runs` is the lineage catalog. Readers never take the
        writer lock unless the catalog still lacks a table, so they run while a long write is in flight.
        """
        if not self._initialized and not self._catalog_exists():
            self.initialize()
        con = self._attach_retrying(read_only)
        try:
            if not self._initialized:
                if _missing_columns(con):
                    con.close()
                    self.initialize()
                    con = self._attach_retrying(read_only)
                self._initialized = True
            _create_views(con)
            yield con
        finally:
            con.close()

    # -- writes ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, lineage: Lineage) -> Iterator[WriteBatch]:
        """Stage writes in the block; on exit commit them all, with their lineage, in one transaction."""
        batch = WriteBatch()
        yield batch
        if batch.pending:
            batch.committed.extend(self._commit(batch.pending, lineage))

    def write(
        self, table: str, dataset: str, data: pa.Table | Iterable[Mapping[str, Any]], lineage: Lineage
    ) -> VersionInfo:
        """Write one new version of `table/dataset` with its lineage; return its record."""
        with self.transaction(lineage) as batch:
            batch.write(table, dataset, data)
        return batch.committed[0]

    def commit_stage(
        self,
        dataset: str,
        outputs: Mapping[str, pa.Table | Iterable[Mapping[str, Any]]],
        lineage: Lineage,
        metrics: Mapping[str, Any],
    ) -> dict[str, VersionInfo]:
        """A stage's outputs (table → rows) and its metrics (`stage_reports/<dataset>`), in one commit.

        When every output's latest version already came from the same config, inputs and code,
        nothing is written and those versions are returned: a re-run or a retry never duplicates rows.
        """
        existing = {table: self.latest_matching(table, dataset, lineage) for table in outputs}
        if all(existing.values()):
            return existing  # type: ignore[return-value]
        reports = [
            {"stage": lineage.stage, "table_name": table, "metrics": json.dumps(metrics, default=str)}
            for table in outputs
        ]
        with self.transaction(lineage) as batch:
            for table, rows in outputs.items():
                batch.write(table, dataset, rows)
            batch.write("stage_reports", dataset, reports)
        return {info.table_name: info for info in batch.committed if info.table_name in outputs}

    def stage_metrics(self, info: VersionInfo) -> dict[str, Any]:
        """The metrics a stage stored with one of its output versions (empty when none)."""
        for report in self.versions("stage_reports", info.dataset, run_id=info.run_id):
            for row in self.read(report).to_pylist():
                if row["table_name"] == info.table_name:
                    return json.loads(row["metrics"])
        return {}

    def input_of(self, info: VersionInfo, table: str) -> VersionInfo:
        """The version of `table` that `info` was made from, found through its lineage."""
        for ref in info.input_versions:
            if ref.startswith(f"{table}/"):
                return self.resolve(ref)
        raise LakeError(f"{info.version_id} records no {table} version among its inputs {list(info.input_versions)}")

    def _commit(self, writes: list[_PendingWrite], lineage: Lineage) -> list[VersionInfo]:
        self.initialize()
        flow_run_id = lineage.prefect_flow_run_id or current_flow_run_id()
        with self._write_lock():
            for attempt in _retrying(8):
                with attempt:
                    con = self._attach_retrying(read_only=False)
                    try:
                        return self._insert_versions(con, writes, lineage, flow_run_id)
                    finally:
                        con.close()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    @staticmethod
    def _insert_versions(
        con: duckdb.DuckDBPyConnection, writes: list[_PendingWrite], lineage: Lineage, flow_run_id: str | None
    ) -> list[VersionInfo]:
        con.execute("BEGIN TRANSACTION")
        try:
            infos = []
            next_version: dict[tuple[str, str], int] = {}
            for write in writes:
                key = (write.table, write.dataset)
                if key not in next_version:
                    (latest,) = con.execute(
                        "SELECT coalesce(max(version), 0) FROM lake.runs WHERE table_name = ? AND dataset = ?",
                        list(key),
                    ).fetchone()
                    next_version[key] = latest
                next_version[key] += 1
                number = next_version[key]
                version_id = version_id_for(write.table, write.dataset, number)
                con.register("_batch", write.data)
                con.execute(
                    f"INSERT INTO lake.{write.table} BY NAME "
                    f"SELECT {_sql_string(version_id)} AS {VERSION_COLUMN}, * FROM _batch"
                )
                con.unregister("_batch")
                info = VersionInfo(
                    version_id=version_id,
                    table_name=write.table,
                    dataset=write.dataset,
                    version=number,
                    stage=lineage.stage,
                    run_id=lineage.run_id,
                    config_hash=lineage.config_hash,
                    input_versions=tuple(lineage.input_versions),
                    prefect_flow_run_id=flow_run_id,
                    row_count=write.data.num_rows,
                    code_version=code_version(),
                    created_at=datetime.now(UTC),
                )
                record = {name: getattr(info, name) for name in SCHEMAS[LINEAGE_TABLE].names}
                record["input_versions"] = list(info.input_versions)
                con.register("_run", validate(LINEAGE_TABLE, [record]))
                con.execute("INSERT INTO lake.runs BY NAME SELECT * FROM _run")
                con.unregister("_run")
                infos.append(info)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return infos

    # -- reads -------------------------------------------------------------------------------------

    def versions(
        self, table: str | None = None, dataset: str | None = None, run_id: str | None = None
    ) -> list[VersionInfo]:
        """Committed versions, oldest first, optionally filtered by table, dataset or run."""
        clauses, params = [], []
        for column, value in (("table_name", table), ("dataset", dataset), ("run_id", run_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM lake.runs {where} ORDER BY table_name, dataset, version", params)
        return [VersionInfo.from_row(row) for row in rows.to_pylist()]

    def latest_matching(self, table: str, dataset: str, lineage: Lineage) -> VersionInfo | None:
        """The latest version of a dataset when it came from the same config and inputs as `lineage`.

        A stage that would write the same rows again returns this instead, so a re-run or retry
        adds no version and no row. Another code version counts as another config.
        """
        versions = self.versions(table, dataset)
        if not versions:
            return None
        latest = versions[-1]
        same = (latest.config_hash, latest.input_versions, latest.code_version) == (
            lineage.config_hash,
            tuple(lineage.input_versions),
            code_version(),
        )
        return latest if same else None

    def resolve(self, ref: str, table: str | None = None) -> VersionInfo:
        """Find a version from `table/dataset@N`, `table/dataset` (latest) or, given a table, `dataset[@N]`."""
        match = VERSION_REF.match(ref.strip())
        if not match:
            raise LakeError(f"cannot parse version reference {ref!r}; expected table/dataset[@N]")
        ref_table = match["table"] or table
        if ref_table is None:
            raise LakeError(f"version reference {ref!r} names no table; write it as table/{ref}")
        if table is not None and ref_table != table:
            raise LakeError(f"version reference {ref!r} is a {ref_table} version, expected {table}")
        candidates = self.versions(ref_table, match["dataset"])
        if match["version"] is not None:
            candidates = [info for info in candidates if info.version == int(match["version"])]
        if not candidates:
            known = sorted({info.dataset for info in self.versions(ref_table)})
            raise LakeError(f"no version {ref!r} in table {ref_table!r}; datasets: {', '.join(known) or 'none'}")
        return candidates[-1]

    def read(self, ref: str | VersionInfo, table: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The rows of one version (payload columns, without version_id)."""
        info = ref if isinstance(ref, VersionInfo) else self.resolve(ref, table)
        schema = payload_schema(info.table_name)
        if columns is not None:
            schema = pa.schema([schema.field(name) for name in columns])
        selected = ", ".join(schema.names)
        data = self._query(
            f"SELECT {selected} FROM lake.{info.table_name} WHERE {VERSION_COLUMN} = ?", [info.version_id]
        )
        return data.cast(schema)

    def read_run(self, run_id: str) -> dict[str, pa.Table]:
        """Every version a run wrote, keyed by version id."""
        infos = self.versions(run_id=run_id)
        if not infos:
            raise LakeError(f"run {run_id!r} wrote no versions")
        return {info.version_id: self.read(info) for info in infos}

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run SQL against the lake's views (read only) and return an Arrow table."""
        return self._query(query, params or [])

    def _query(self, query: str, params: list[Any]) -> pa.Table:
        for attempt in _retrying(20):
            with attempt, self.connect(read_only=True) as con:
                return con.execute(query, params).to_arrow_table()
        raise AssertionError("unreachable: tenacity re-raises the last error")


def _lake_columns(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    existing: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'lake'"
    ).fetchall():
        existing.setdefault(table, set()).add(column)
    return existing


def _missing_columns(con: duckdb.DuckDBPyConnection) -> bool:
    existing = _lake_columns(con)
    return any(not set(schema.names) <= existing.get(table, set()) for table, schema in SCHEMAS.items())


def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables and add columns that newer schemas gained (DuckLake supports ADD COLUMN)."""
    existing = _lake_columns(con)
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


def _create_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP VIEW latest_versions AS SELECT * FROM lake.runs "
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
