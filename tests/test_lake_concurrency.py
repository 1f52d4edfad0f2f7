"""The lake under concurrency and across hosts, on SQLite and on a real PostgreSQL catalog: unique
versions from every writer, imports that all land, a catalog the first command creates, SQL that is
read only, and garbage collection that keeps every live file.

"Hosts" are processes with their own data directories (so their own host-local lock files) sharing
one catalog and one data path, as the nodes of a cluster do.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from schemas.catalog import is_transient
from schemas.lake import Lake, Lineage
from tests.conftest import FIXTURES, TESTS_DIR

WRITERS, WRITES, ROWS = 3, 6, 4


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path, postgres) -> tuple[str, str]:
    """A fresh catalog (SQLite file or PostgreSQL database) and data path that several homes share."""
    if request.param == "sqlite":
        catalog = f"sqlite:{tmp_path / 'shared-catalog.sqlite'}"
    else:
        catalog = postgres(f"lake_{uuid.uuid4().hex[:8]}")
    return catalog, str(tmp_path / "shared-data")


def _settings(catalog: str, data_path: str) -> list[str]:
    return ["--set", f"runtime.lake_catalog_url={catalog}", "--set", f"runtime.lake_data_path={data_path}"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "AUTOTRAJ_HOME": str(home)}


def test_writers_on_several_hosts_get_unique_versions(shared: tuple[str, str], tmp_path: Path) -> None:
    catalog, data_path = shared
    workers = [
        subprocess.Popen([sys.executable, str(TESTS_DIR / "lake_worker.py"), "tagged", "shared", str(WRITES),
                          str(ROWS), catalog, data_path], env=_env(tmp_path / f"host{index}"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(WRITERS)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err for _, err in outputs]
    written = {pid_versions for out, _ in outputs for pid_versions in out.split() if "@" in pid_versions}
    assert written == {f"queries/shared@{n}" for n in range(1, WRITERS * WRITES + 1)}  # unique, none lost
    lake = Lake(tmp_path / "reader", catalog, data_path)
    owners = Counter()
    for info in lake.versions("queries", "shared"):
        rows = lake.read(info).to_pylist()
        tags = {row["query_id"].rsplit("-", 1)[0] for row in rows}
        assert len(tags) == 1 and len(rows) == ROWS == info.row_count, info.version_id  # one writer's rows, whole
        owners[tags.pop()] += 1
    assert sorted(owners.values()) == [WRITES] * WRITERS


def test_concurrent_imports_into_one_name_all_land(shared: tuple[str, str], tmp_path: Path) -> None:
    catalog, data_path = shared
    files = []
    for index in range(6):
        path = tmp_path / f"part{index}.jsonl"
        path.write_text("".join(json.dumps({"question": f"part {index} question {q}?", "answer": str(q)}) + "\n"
                                for q in range(5)))  # fmt: skip
        files.append(path)
    # SQLite: one host, one data directory; PostgreSQL: a data directory (a host) per import.
    homes = [tmp_path / "host" if catalog.startswith("sqlite:") else tmp_path / f"host{i}" for i in range(6)]
    imports = [
        subprocess.Popen([sys.executable, "-m", "flows.cli", *_settings(catalog, data_path), "data", "import",
                          str(path), "--name", "together"], env=_env(home), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for path, home in zip(files, homes, strict=True)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in imports]
    assert all(process.returncode == 0 for process in imports), outputs
    lake = Lake(tmp_path / "reader", catalog, data_path)
    versions = lake.versions("queries", "together")
    assert [info.version for info in versions] == list(range(1, 7))
    latest = lake.read(versions[-1]).to_pylist()
    assert len(latest) == 30 and len({row["question"] for row in latest}) == 30
    for earlier, later in itertools.pairwise(versions):  # each built on the one before it
        assert later.input_versions == (earlier.version_id,) and later.row_count == earlier.row_count + 5


def test_the_first_commands_create_a_fresh_postgres_catalog_once(postgres, tmp_path: Path) -> None:
    catalog, data_path = postgres(f"fresh_{uuid.uuid4().hex[:8]}"), str(tmp_path / "data")
    readers = [
        subprocess.Popen([sys.executable, "-m", "flows.cli", *_settings(catalog, data_path), "tables"],
                         env=_env(tmp_path / f"host{index}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for index in range(2)
    ]
    outputs = [reader.communicate(timeout=300)[0] for reader in readers]
    assert [reader.returncode for reader in readers] == [0, 0], outputs
    command = [sys.executable, "-m", "flows.cli", *_settings(catalog, data_path), "data", "import",
               str(FIXTURES / "messy_queries.jsonl"), "--name", "messy"]  # fmt: skip
    imported = subprocess.run(command, env=_env(tmp_path / "host0"), capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert Lake(tmp_path / "host1", catalog, data_path).read("queries/messy").num_rows == 5


REFUSED = {
    "ATTACH 'ducklake:sqlite:{catalog}' AS w (DATA_PATH '{data}/'); DELETE FROM w.queries": "ATTACH, DELETE",
    "ATTACH '{catalog}' AS s (TYPE sqlite); DELETE FROM s.ducklake_data_file": "ATTACH, DELETE",
    "COPY (SELECT * FROM queries) TO '{out}'": "COPY",
    "SELECT * FROM read_text('/etc/hostname')": "file system operations are disabled",
    "SELECT * FROM glob('/etc/*')": "file system operations are disabled",
    "LOAD '{extension}'": "LOAD",
    "INSTALL httpfs": "LOAD",
    "SET enable_external_access = true": "SET",
    "CALL ducklake_expire_snapshots('lake', older_than => now())": "CALL",
    "SELECT 1; DROP TABLE lake.queries": "DROP",
}


def test_sql_is_read_only(lake: Lake, home: Path, tmp_path: Path, cli) -> None:
    assert cli("data", "import", str(FIXTURES / "messy_queries.jsonl"), "--name", "messy").exit_code == 0
    before = (lake.sql("SELECT count(*) AS n FROM queries_all").to_pylist(), len(lake.versions()))
    extension = next((home / "duckdb_extensions").glob("*.duckdb_extension"))
    out = tmp_path / "stolen.csv"
    for statement, refusal in REFUSED.items():
        query = statement.format(catalog=lake.lake_dir / "catalog.sqlite", data=lake.data_path, out=out,
                                 extension=extension)  # fmt: skip
        result = cli("sql", query)
        assert result.exit_code != 0 and refusal in result.output, (statement, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert (lake.sql("SELECT count(*) AS n FROM queries_all").to_pylist(), len(lake.versions())) == before
    assert not out.exists()
    # Nested values print in every format.
    for output_format in ("table", "csv", "json"):
        shown = cli("sql", "SELECT [1, 2] AS xs, {'a': 1} AS s, answers FROM queries LIMIT 1", "-f", output_format)
        assert shown.exit_code == 0 and "1" in shown.output, (output_format, shown.output)
    assert cli("sql", "SELECT [1,2] AS x", "-f", "csv").output.splitlines() == ['"x"', '"[1, 2]"']


def test_only_a_lost_race_is_retried() -> None:
    assert is_transient(duckdb.TransactionException("Failed to commit DuckLake transaction"))
    for error in (duckdb.InvalidInputException("write conflict"), duckdb.Error("database is locked conflict"),
                  RuntimeError("conflict")):  # fmt: skip
        assert not is_transient(error)  # words in a message decide nothing


def test_gc_removes_orphans_and_keeps_every_live_file(lake: Lake, cli) -> None:
    assert cli("data", "import", str(FIXTURES / "messy_queries.jsonl"), "--name", "messy").exit_code == 0
    for index in range(3):
        lake.write("queries", "more", [{"query_id": f"q{index}", "question": f"q {index}?", "answer": "1",
                                        "answers": ["1"], "task": "math"}], Lineage("test"))  # fmt: skip
    live = set(_live_files(lake))
    orphan = lake.data_path / "main" / "queries" / "ducklake-killed-write.parquet"
    orphan.write_bytes(b"PAR1 a write that never committed")
    fresh = lake.data_path / "main" / "queries" / "ducklake-write-in-flight.parquet"
    fresh.write_bytes(b"PAR1 a write still running")
    old = time.time() - 3 * 24 * 3600
    os.utime(orphan, (old, old))
    dry = cli("lake", "gc", "--dry-run", "--older-than", "24")
    assert dry.exit_code == 0 and str(orphan) in dry.output and orphan.exists()
    result = cli("lake", "gc", "--older-than", "24")
    assert result.exit_code == 0 and "1 orphan file(s)" in result.output, result.output
    assert not orphan.exists() and fresh.exists()  # younger than the retention: perhaps a write in flight
    assert set(_live_files(lake)) == live and all(Path(path).exists() for path in live)
    assert [lake.read(info).num_rows for info in lake.versions("queries", "more")] == [1, 1, 1]
    assert lake.read("queries/messy").num_rows == 5


def _live_files(lake: Lake) -> list[str]:
    with lake.connect() as con:
        return [row[0] for table in ("queries", "runs") for row in
                con.execute(f"SELECT data_file FROM ducklake_list_files('lake', '{table}')").fetchall()]  # fmt: skip
