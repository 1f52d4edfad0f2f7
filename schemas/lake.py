"""The versioned Parquet lake: DuckLake tables queried through DuckDB, with lineage in `runs`.

A dataset version is an immutable set of rows of one table, named `table/dataset@N` and tagged with
that id in the `version_id` column. Its rows and its `runs` row are committed in one DuckLake
transaction, so a failed or killed write leaves no visible trace. Version numbers are allocated
inside that transaction, and every write also replaces the one row of the `write_clock` table, so
two concurrent writers (any processes, any hosts sharing the catalog) conflict and the loser starts
again: numbers are unique, and a write that builds on a version it read (`expect=`) is refused when
that version is no longer the latest. Writers on one host also wait on a file lock next to the
catalog, which spares them the races. The catalog layer (extensions, attach, tables, views, which
errors are transient) is schemas/catalog.py.
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
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from schemas.catalog import (
    CLOCK_TABLE,
    LakeError,
    attach,
    create_tables,
    create_views,
    missing_columns,
    retrying,
    sql_string,
)
from schemas.config import PROJECT_ROOT, RuntimeConfig, private_dir
from schemas.tables import (
    LINEAGE_TABLE,
    SCHEMAS,
    SHARD_MARKER,
    VERSION_COLUMN,
    VERSIONED_TABLES,
    payload_schema,
    validate,
)

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
VERSION_REF = re.compile(r"^(?:(?P<table>[a-z_]+)/)?(?P<dataset>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<version>\d+))?$")


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
    errored_rows: int | None = None  # rows that failed and are retried by a re-run (None: not recorded)

    @property
    def complete(self) -> bool:
        """Whether none of its rows failed (a re-run of the same stage may return it as it is)."""
        return not self.errored_rows

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


def shard_dataset(dataset: str, key: str) -> str:
    """The internal dataset a resumable stage commits `dataset`'s shards to, for the run keyed `key`."""
    return f"{dataset}{SHARD_MARKER}{key[:12]}"


def is_shard(dataset: str) -> bool:
    """Whether a dataset is a stage's internal shard dataset (hidden from listings and latest views)."""
    return SHARD_MARKER in dataset


ANY = "any"  # a write that builds on no particular previous version
STALE_ATTEMPTS = 10  # how often a read-modify-write starts again when another writer got there first


@dataclass
class GarbageReport:
    """What a garbage collection expired and deleted (or, in a dry run, would)."""

    expired_snapshots: list[int]
    old_files: list[str]  # files only expired snapshots used
    orphan_files: list[str]  # files no snapshot references (a killed write's)
    dry_run: bool


class ReadOnlyError(LakeError):
    """User SQL that would change the lake or reach beyond it."""


class StaleVersion(LakeError):
    """A write built on a version that is no longer the latest: recompute from the latest and write again."""


@dataclass
class _PendingWrite:
    table: str
    dataset: str
    data: pa.Table
    expect: str | None  # the version id it builds on (None: no version yet), or ANY
    errored: int = 0  # rows that failed (the version is incomplete)


class WriteBatch:
    """Versions staged for one transaction; committed together by Lake.transaction()."""

    def __init__(self) -> None:
        self.pending: list[_PendingWrite] = []
        self.committed: list[VersionInfo] = []

    def write(
        self,
        table: str,
        dataset: str,
        data: pa.Table | Iterable[Mapping[str, Any]],
        expect: str | None = ANY,
        errored: int = 0,
    ) -> None:
        """Validate rows now and stage them as the next version of `table/dataset`.

        `expect`: the version id these rows build on (None: the dataset has no version yet). The
        commit checks it inside its transaction and raises StaleVersion when another writer got there
        first, so a read-modify-write never loses the other writer's rows. `errored`: how many of
        the rows failed (recorded in `runs.errored_rows`; the version is then incomplete).
        """
        if table not in VERSIONED_TABLES:
            raise LakeError(f"cannot write table {table!r}; versioned tables: {', '.join(VERSIONED_TABLES)}")
        if not DATASET_NAME.match(dataset):
            raise LakeError(f"dataset name {dataset!r} must match {DATASET_NAME.pattern}")
        self.pending.append(_PendingWrite(table, dataset, validate(table, data), expect, errored))


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

    def _attach(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        return attach(self.catalog_url, self.data_path, self.data_dir, read_only)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        private_dir(self.lake_dir.parent)
        private_dir(self.lake_dir)
        with open(self.lake_dir / ".write.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def initialize(self) -> None:
        """Create the lake and every table that does not exist yet; add columns new schemas gained.

        Safe when several processes (on several hosts, for a Postgres catalog) start together: a
        creation that loses the race fails, is retried, and finds the lake the winner made.
        """
        if self._initialized:
            return
        private_dir(self.lake_dir.parent)
        private_dir(self.lake_dir)
        self.data_path.mkdir(parents=True, exist_ok=True)
        for attempt in Retrying(stop=stop_after_attempt(6), wait=wait_exponential(multiplier=0.1, max=2.0),
                                retry=retry_if_exception_type(duckdb.Error), reraise=True):  # fmt: skip
            with attempt, self._write_lock():
                con = self._attach(read_only=False)  # creates an empty lake in an empty catalog
                try:
                    if missing_columns(con):
                        con.execute("BEGIN TRANSACTION")
                        create_tables(con)
                        con.execute("COMMIT")
                finally:
                    con.close()
        self._initialized = True

    def _sqlite_file(self) -> Path | None:
        return Path(self.catalog_url.removeprefix("sqlite:")) if self.catalog_url.startswith("sqlite:") else None

    def _attach_retrying(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        for attempt in retrying(20):
            with attempt:
                return self._attach(read_only=read_only)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    @contextlib.contextmanager
    def connect(self, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection with the lake attached as `lake` and one view per table.

        `<table>` shows the latest version of each dataset (with `dataset` and `version` columns),
        `<table>_all` every committed version; `runs` is the lineage catalog. Readers never take the
        writer lock unless the lake does not exist yet or lacks a table, so they run while a long
        write is in flight. The first command against an empty catalog creates the lake.
        """
        if not self._initialized:
            sqlite = self._sqlite_file()
            if sqlite is not None and not sqlite.exists():
                self.initialize()
            else:
                try:
                    con = self._attach_retrying(read_only)
                except duckdb.InvalidInputException:  # an empty catalog: no lake in it yet
                    self.initialize()
                else:
                    missing = missing_columns(con)
                    con.close()
                    if missing:
                        self.initialize()
            self._initialized = True
        con = self._attach_retrying(read_only)
        try:
            create_views(con)
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
        self,
        table: str,
        dataset: str,
        data: pa.Table | Iterable[Mapping[str, Any]],
        lineage: Lineage,
        errored: int = 0,
    ) -> VersionInfo:
        """Write one new version of `table/dataset` with its lineage (and how many of its rows failed)."""
        with self.transaction(lineage) as batch:
            batch.write(table, dataset, data, errored=errored)
        return batch.committed[0]

    def commit_stage(
        self,
        dataset: str,
        outputs: Mapping[str, pa.Table | Iterable[Mapping[str, Any]]],
        lineage: Lineage,
        metrics: Mapping[str, Any],
        errored: int = 0,
    ) -> dict[str, VersionInfo]:
        """A stage's outputs (table → rows) and its metrics (`stage_reports/<dataset>`), in one commit.

        When every output's latest version already came from the same config, inputs and code and is
        complete, nothing is written and those versions are returned: a re-run, a retry, or the same
        stage committing concurrently elsewhere never duplicates rows. `errored`: the outputs' rows
        that failed; such a version is replaced by the next run's.
        """
        tables = {table: validate(table, rows) for table, rows in outputs.items()}
        reports = [
            {"stage": lineage.stage, "table_name": table, "metrics": json.dumps(metrics, default=str)}
            for table in outputs
        ]
        for _ in range(STALE_ATTEMPTS):
            latest = {table: next(iter(self.versions(table, dataset)[-1:]), None) for table in tables}
            if all(info is not None and _reusable(info, lineage) for info in latest.values()):
                return latest  # type: ignore[return-value]
            try:
                with self.transaction(lineage) as batch:
                    for table, data in tables.items():
                        expect = latest[table].version_id if latest[table] else None
                        batch.write(table, dataset, data, expect=expect, errored=errored)
                    batch.write("stage_reports", dataset, reports)
            except StaleVersion:
                continue  # another writer committed this dataset meanwhile: look again
            return {info.table_name: info for info in batch.committed if info.table_name in tables}
        raise LakeError(f"{dataset}: its versions kept changing under {STALE_ATTEMPTS} attempts to commit")

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
            for attempt in retrying(8):
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
            # Every write deletes and reinserts the clock's one row: two concurrent writes, from any process
            # or host, then delete from the same data file, which DuckLake refuses to commit twice. The
            # loser retries from the start, so version numbers read below are never stale at commit.
            con.execute(f"DELETE FROM lake.{CLOCK_TABLE}")
            con.execute(f"INSERT INTO lake.{CLOCK_TABLE} VALUES (?)", [uuid.uuid4().hex])
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
                    current = version_id_for(write.table, write.dataset, latest) if latest else None
                    if write.expect != ANY and write.expect != current:
                        raise StaleVersion(f"{write.table}/{write.dataset} is at {current}, not {write.expect}")
                next_version[key] += 1
                number = next_version[key]
                version_id = version_id_for(write.table, write.dataset, number)
                con.register("_batch", write.data)
                con.execute(
                    f"INSERT INTO lake.{write.table} BY NAME "
                    f"SELECT {sql_string(version_id)} AS {VERSION_COLUMN}, * FROM _batch"
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
                    errored_rows=write.errored,
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
        """The latest version of a dataset when it came from the same config and inputs as `lineage`
        and is complete.

        A stage that would write the same rows again returns this instead, so a re-run or retry
        adds no version and no row. Another code version counts as another config; a version with
        errored rows is never returned (the re-run retries them and writes a new one).
        """
        versions = self.versions(table, dataset)
        return versions[-1] if versions and _reusable(versions[-1], lineage) else None

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

    # -- maintenance -------------------------------------------------------------------------------

    def gc(self, older_than_hours: float, dry_run: bool = False) -> GarbageReport:
        """Expire snapshots older than the retention, then delete the data files only they used and the
        files no snapshot ever committed (a killed write's), older than the retention too, so a write
        in flight keeps its files. A file a live version reads is never touched: versions are rows of
        the current snapshot, which is never expired."""
        age = f"now() - INTERVAL '{float(older_than_hours)} hours'"
        run = f"dry_run => {'true' if dry_run else 'false'}, older_than => {age}"
        with self._write_lock(), self.connect(read_only=False) as con:
            expired = con.execute(f"SELECT snapshot_id FROM ducklake_expire_snapshots('lake', {run})").fetchall()
            # A dry run expires nothing, so the files that expiry would free are not yet scheduled.
            old = con.execute(f"SELECT path FROM ducklake_cleanup_old_files('lake', {run})").fetchall()
            orphans = con.execute(f"SELECT path FROM ducklake_delete_orphaned_files('lake', {run})").fetchall()
        return GarbageReport([row[0] for row in expired], [row[0] for row in old], [row[0] for row in orphans],
                             dry_run)  # fmt: skip

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run SQL against the lake's views, read only, and return an Arrow table.

        Only SELECT statements run (DuckDB's own parser says which statements a text holds), on a
        connection that can read no file outside the lake's data path and whose settings are locked:
        no ATTACH, COPY, LOAD/INSTALL, SET or CALL, and no table function reading host files.
        """
        refused = sorted({s.type.name for s in duckdb.extract_statements(query)} - {"SELECT"})
        if refused:
            raise ReadOnlyError(f"the lake's SQL is read only: {', '.join(refused)} statements are refused "
                                "(only SELECT runs)")  # fmt: skip
        return self._query(query, params or [], confined=True)

    def _query(self, query: str, params: list[Any], confined: bool = False) -> pa.Table:
        for attempt in retrying(20):
            with attempt, self.connect(read_only=True) as con:
                if confined:
                    con.execute("SET allowed_directories = ?", [[str(self.data_path) + os.sep]])
                    con.execute("SET enable_external_access = false")
                    con.execute("SET lock_configuration = true")
                return con.execute(query, params).to_arrow_table()
        raise AssertionError("unreachable: tenacity re-raises the last error")


def _reusable(info: VersionInfo, lineage: Lineage) -> bool:
    """Whether a version came from the same config, inputs and code as `lineage`, and is complete."""
    return info.complete and (info.config_hash, info.input_versions, info.code_version) == (
        lineage.config_hash,
        tuple(lineage.input_versions),
        code_version(),
    )
