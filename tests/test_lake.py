"""The versioned lake: writes with lineage, reads by version and run, views, and concurrency/crash safety."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.lake import Lake, LakeError, Lineage
from schemas.tables import SchemaError
from tests.conftest import run_worker


def _queries(*questions: str) -> list[dict]:
    return [
        {"query_id": f"q{i}", "question": q, "answer": str(i), "answers": [str(i)], "task": "math"}
        for i, q in enumerate(questions)
    ]


def test_write_read_and_time_travel(lake: Lake) -> None:
    first = lake.write("queries", "demo", _queries("a", "b"), Lineage(stage="import"))
    second = lake.write("queries", "demo", _queries("a", "b", "c"), Lineage(stage="import"))

    assert (first.version_id, second.version_id) == ("queries/demo@1", "queries/demo@2")
    assert lake.read("queries/demo@1")["question"].to_pylist() == ["a", "b"]
    assert lake.read("queries/demo")["question"].to_pylist() == ["a", "b", "c"]
    assert lake.read("demo@1", table="queries").num_rows == 2
    # The plain view shows each dataset's latest version; `_all` keeps every committed one.
    assert lake.sql("SELECT count(*) AS n FROM queries")["n"].to_pylist() == [3]
    assert lake.sql("SELECT version, count(*) AS n FROM queries_all GROUP BY 1 ORDER BY 1").to_pylist() == [
        {"version": 1, "n": 2},
        {"version": 2, "n": 3},
    ]
    # Older states stay reachable through DuckLake's own snapshots too.
    snapshots = lake.sql("SELECT snapshot_id FROM ducklake_snapshots('lake') ORDER BY 1")["snapshot_id"].to_pylist()
    counts = [
        lake.sql(f"SELECT count(*) AS n FROM lake.queries AT (VERSION => {s})")["n"][0].as_py() for s in snapshots[-2:]
    ]
    assert counts == [2, 5]


def test_lineage_rows_and_read_by_run(lake: Lake) -> None:
    source = lake.write("queries", "demo", _queries("a"), Lineage(stage="import"))
    lineage = Lineage(
        stage="score",
        run_id="run-42",
        config_hash="abc123",
        input_versions=(source.version_id,),
        prefect_flow_run_id="flow-run-7",
    )
    with lake.transaction(lineage) as batch:
        batch.write("queries", "derived", _queries("x", "y"))
        batch.write(
            "rejected_inputs",
            "derived",
            [{"stage": "score", "source": source.version_id, "row_number": 1, "reason": "r", "detail": "d"}],
        )

    runs = lake.sql("SELECT * FROM runs WHERE run_id = 'run-42' ORDER BY table_name").to_pylist()
    assert [(r["version_id"], r["row_count"]) for r in runs] == [
        ("queries/derived@1", 2),
        ("rejected_inputs/derived@1", 1),
    ]
    for row in runs:
        assert (row["stage"], row["config_hash"], row["prefect_flow_run_id"]) == ("score", "abc123", "flow-run-7")
        assert row["input_versions"] == ["queries/demo@1"]
        assert row["code_version"].startswith("0.1.0")
    by_run = lake.read_run("run-42")
    assert sorted(by_run) == ["queries/derived@1", "rejected_inputs/derived@1"]
    assert by_run["queries/derived@1"]["question"].to_pylist() == ["x", "y"]
    assert [v.version_id for v in lake.versions("queries")] == ["queries/demo@1", "queries/derived@1"]
    with pytest.raises(LakeError, match="wrote no versions"):
        lake.read_run("no-such-run")


def test_unknown_versions_and_bad_names_are_clear_errors(lake: Lake) -> None:
    lake.write("queries", "demo", _queries("a"), Lineage(stage="import"))
    with pytest.raises(LakeError, match=r"no version 'queries/demo@9'.*datasets: demo"):
        lake.read("queries/demo@9")
    with pytest.raises(LakeError, match="names no table"):
        lake.read("demo")
    with pytest.raises(LakeError, match="must match"):
        lake.write("queries", "bad name!", _queries("a"), Lineage(stage="import"))
    with pytest.raises(LakeError, match="cannot write table 'runs'"):
        lake.write("runs", "x", [], Lineage(stage="import"))


def test_failed_write_leaves_no_version(lake: Lake) -> None:
    lake.write("queries", "demo", _queries("a"), Lineage(stage="import"))
    with pytest.raises(SchemaError), lake.transaction(Lineage(stage="import")) as batch:
        batch.write("queries", "demo", _queries("b"))
        batch.write("queries", "demo", [{"query_id": 1}])
    assert [v.version_id for v in lake.versions()] == ["queries/demo@1"]
    assert lake.sql("SELECT count(*) AS n FROM lake.queries")["n"][0].as_py() == 1


def test_reader_process_while_writer_process_writes(lake: Lake, home: Path, cli) -> None:
    lake.initialize()
    rows_per_version = 20_000
    # The writer keeps committing versions until told to stop, so reads overlap writes however slow they are.
    writer = run_worker("until-stopped", "stream", "200", str(rows_per_version), home=home, stdin=True)
    assert writer.stdout.readline().strip() == "ready"
    observed = set()
    while writer.poll() is None and len(observed) < 3:
        result = cli("sql", "SELECT count(*) AS n, count(DISTINCT version) AS v FROM queries_all", "--format", "json")
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.stdout)
        # Every read sees whole versions only.
        assert row["n"] == row["v"] * rows_per_version
        observed.add(row["v"])
    written, errors = writer.communicate("stop\n", timeout=120)
    assert writer.returncode == 0, errors
    assert len(observed) >= 3, f"reads never overlapped the writes: {observed}"
    versions = len([line for line in written.splitlines() if line.startswith("queries/")])
    assert lake.sql("SELECT count(*) AS n FROM queries_all")["n"][0].as_py() == versions * rows_per_version


def test_killed_writer_leaves_no_partial_version(lake: Lake, home: Path, cli) -> None:
    lake.write("queries", "demo", _queries("a"), Lineage(stage="import"))
    writer = run_worker("one-transaction", "big", "40", "300000", home=home)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    # A fresh reader is not held up by the writer's lock or its open transaction.
    during = cli("sql", "SELECT count(*) AS n FROM queries", "--format", "json")
    assert json.loads(during.stdout) == [{"n": 1}]
    assert writer.poll() is None, "the writer finished before it could be killed; make its work bigger"
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL

    assert [v.version_id for v in lake.versions()] == ["queries/demo@1"]
    assert lake.sql("SELECT count(*) AS n FROM lake.queries")["n"][0].as_py() == 1
    # The lake stays writable and the next version number is not burnt.
    info = lake.write("queries", "big", _queries("b", "c"), Lineage(stage="import"))
    assert info.version_id == "queries/big@1"
    assert lake.read(info).num_rows == 2


def test_two_writer_processes_both_land(lake: Lake, home: Path) -> None:
    lake.initialize()
    writers = [run_worker("versions", "shared", "8", "5000", home=home) for _ in range(2)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    versions = lake.versions("queries", "shared")
    assert [v.version for v in versions] == list(range(1, 17))
    counts = lake.sql("SELECT version, count(*) AS n FROM queries_all GROUP BY 1").to_pylist()
    assert sorted(counts, key=lambda r: r["version"]) == [{"version": v, "n": 5000} for v in range(1, 17)]


def test_new_schema_columns_are_added_to_existing_tables(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas import tables

    Lake(home).write("queries", "demo", _queries("a"), Lineage(stage="import"))
    extended = tables.SCHEMAS["queries"].append(pa.field("difficulty", pa.int32()))
    monkeypatch.setitem(tables.SCHEMAS, "queries", extended)
    lake = Lake(home)
    lake.write("queries", "demo", [{**_queries("b")[0], "difficulty": 3}], Lineage(stage="import"))
    assert lake.read("queries/demo@2")["difficulty"].to_pylist() == [3]
    assert lake.read("queries/demo@1")["difficulty"].to_pylist() == [None]


def test_a_stage_commit_is_atomic_with_its_metrics_and_never_repeated(lake: Lake) -> None:
    queries = lake.write("queries", "src", _queries("a"), Lineage(stage="import"))
    lineage = Lineage(stage="import", config_hash="c1", input_versions=(queries.version_id,))
    first = lake.commit_stage("out", {"queries": _queries("x", "y")}, lineage, {"rows": 2})["queries"]
    assert lake.stage_metrics(first) == {"rows": 2}
    assert lake.input_of(first, "queries") == queries
    with pytest.raises(LakeError, match="records no scores version"):
        lake.input_of(first, "scores")
    # Same config, inputs and code: the existing version comes back and nothing is written.
    again = lake.commit_stage(
        "out", {"queries": _queries("x", "y")}, Lineage("import", "r2", "c1", lineage.input_versions), {}
    )["queries"]
    assert again.version_id == first.version_id and len(lake.versions("queries", "out")) == 1
    assert len(lake.versions("stage_reports", "out")) == 1
    # Another config writes a new version with its own report.
    other = lake.commit_stage("out", {"queries": _queries("z")}, Lineage("import", config_hash="c2"), {"rows": 1})
    assert other["queries"].version == 2 and lake.stage_metrics(other["queries"]) == {"rows": 1}
