"""Importing queries: formats, column mapping, rejected rows with reasons, and idempotent re-imports."""

from __future__ import annotations

import csv
import json
import math
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.lake import Lake
from tasks.stages.import_queries import FieldMapping, ImportFormatError, import_queries, query_id_for
from tests.conftest import FIXTURES, SHARED_DATA

MESSY = FIXTURES / "messy_queries.jsonl"
EXPECTED_REJECTIONS = {
    4: "missing_question",
    5: "missing_answer",
    6: "wrong_type_question",
    7: "wrong_type_answer",
    8: "empty_question",
    9: "empty_answer",
    10: "empty_row",
    11: "invalid_json",
    12: "not_an_object",
    13: "duplicate_question",
    14: "duplicate_question",
    15: "invalid_task",
    18: "non_finite_answer",
    19: "empty_answer",
}
CLEAN = [
    {"id": 1, "question": "What is 12 + 30?", "answer": "42", "task": "math"},
    {"id": 2, "question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci", "task": "qa"},
    {"id": 3, "question": "What is 7 * 6?", "answer": "42", "task": "math"},
]


def test_messy_file_exact_counts_and_reasons(lake: Lake) -> None:
    report = import_queries(lake, MESSY, "messy")

    assert (report.rows_read, report.imported, len(report.rejected)) == (19, 5, 14)
    assert {r.row_number: r.reason for r in report.rejected} == EXPECTED_REJECTIONS
    details = {r.row_number: r.detail for r in report.rejected}
    assert details[13] == "same question as row 1"
    assert details[14] == "same question as row 2 with a different answer"
    queries = lake.read("queries/messy").to_pylist()
    assert [q["source_id"] for q in queries] == ["a1", "a2", "a3", "a16", "a17"]
    assert queries[1]["answers"] == ["21"]
    assert queries[2]["answers"] == ["William Shakespeare", "Shakespeare"] and queries[2]["task"] == "qa"
    assert queries[4]["answers"] == ["2.5", "5/2"] and json.loads(queries[4]["metadata"]) == {"level": 2}
    # Rejected rows are stored with their raw text, nothing is lost.
    stored = lake.sql(
        "SELECT row_number, reason, raw FROM rejected_inputs WHERE dataset = 'messy' ORDER BY row_number"
    ).to_pylist()
    assert {row["row_number"]: row["reason"] for row in stored} == EXPECTED_REJECTIONS
    assert stored[7]["raw"] == '{"id": "a11", "question": "broken'
    assert report.rejected_version.input_versions == ()


def _write_all_formats(tmp_path: Path, rows: list[dict], fields: tuple[str, str] = ("question", "answer")) -> dict:
    question, answer = fields
    renamed = [
        {
            ("id" if k == "id" else question if k == "question" else answer if k == "answer" else k): v
            for k, v in row.items()
        }
        for row in rows
    ]
    paths = {
        "jsonl": tmp_path / "q.jsonl",
        "json": tmp_path / "q.json",
        "csv": tmp_path / "q.csv",
        "parquet": tmp_path / "q.parquet",
        "hf": tmp_path / "q_hf",
    }
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in renamed))
    paths["json"].write_text(json.dumps({"data": renamed}))
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(renamed[0]))
        writer.writeheader()
        writer.writerows(renamed)
    pq.write_table(pa.Table.from_pylist(renamed), paths["parquet"])
    import datasets

    datasets.Dataset.from_list(renamed).save_to_disk(str(paths["hf"]))
    return paths


@pytest.mark.parametrize("fields", [("question", "answer"), ("problem", "solution")])
def test_every_format_imports_the_same_queries(lake: Lake, tmp_path: Path, fields: tuple[str, str]) -> None:
    paths = _write_all_formats(tmp_path, CLEAN, fields)
    mapping = FieldMapping(question=fields[0], answer=fields[1])
    expected = [query_id_for(row["question"]) for row in CLEAN]
    for kind, path in paths.items():
        report = import_queries(lake, path, f"clean_{kind}", mapping)
        assert (report.imported, report.rejected) == (3, []), kind
        rows = lake.read(f"queries/clean_{kind}").to_pylist()
        assert [r["query_id"] for r in rows] == expected, kind
        assert [r["answer"] for r in rows] == ["42", "Leonardo da Vinci", "42"], kind
        assert [r["source_id"] for r in rows] == ["1", "2", "3"], kind


def test_wrong_mapping_rejects_every_row(lake: Lake, tmp_path: Path) -> None:
    paths = _write_all_formats(tmp_path, CLEAN)
    report = import_queries(lake, paths["csv"], "unmapped", FieldMapping(question="problem"))
    assert report.nothing_importable
    assert report.reason_counts == {"missing_question": 3}
    assert lake.versions("queries", "unmapped") == []
    assert lake.read("rejected_inputs/unmapped").num_rows == 3


def test_reimporting_never_duplicates_queries(lake: Lake, tmp_path: Path) -> None:
    first = import_queries(lake, MESSY, "messy")
    again = import_queries(lake, MESSY, "messy")
    assert again.already_imported == first.queries_version
    assert len(lake.versions("queries", "messy")) == 1
    assert len(lake.versions("rejected_inputs", "messy")) == 1

    # A different file with overlapping questions adds only the new ones.
    more = tmp_path / "more.jsonl"
    more.write_text(
        json.dumps({"question": "What is 2+2?", "answer": "4"})
        + "\n"
        + json.dumps({"question": "What is 5+5?", "answer": "10"})
        + "\n"
    )
    report = import_queries(lake, more, "messy")
    assert (report.imported, report.duplicates_of_existing) == (1, 1)
    assert report.reason_counts == {"duplicate_existing": 1}
    assert report.queries_version.version_id == "queries/messy@2"
    assert report.queries_version.input_versions == ("queries/messy@1",)
    assert lake.sql(
        "SELECT count(*) AS n, count(DISTINCT query_id) AS d FROM queries WHERE dataset = 'messy'"
    ).to_pylist() == [{"n": 6, "d": 6}]


def test_unreadable_sources_are_clear_errors(lake: Lake, tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="no such file"):
        import_queries(lake, tmp_path / "absent.jsonl", "x")
    (tmp_path / "q.txt").write_text("hello")
    with pytest.raises(ImportFormatError, match=r"unsupported format '\.txt'"):
        import_queries(lake, tmp_path / "q.txt", "x")
    import datasets

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(CLEAN), "test": datasets.Dataset.from_list(CLEAN)}
    ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ImportFormatError, match=r"choose a split with --split \(train, test\)"):
        import_queries(lake, tmp_path / "dd", "x")
    assert import_queries(lake, tmp_path / "dd", "x", FieldMapping(split="test")).imported == 3


def test_cli_import_prints_counts_and_exit_codes(cli, tmp_path: Path) -> None:
    result = cli("data", "import", str(MESSY), "--name", "messy")
    assert result.exit_code == 0
    assert "19 rows" in result.output and "5 imported" in result.output and "14 rejected" in result.output
    assert "duplicate_question" in result.output

    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"question": ""}\nnot json\n')
    result = cli("data", "import", str(junk), "--name", "junk")
    assert result.exit_code == 1
    assert "nothing importable" in result.output
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text('{"problem": "What is 1 + 1?", "solution": "2"}\n')
    hinted = cli("data", "import", str(renamed), "--name", "renamed")
    assert hinted.exit_code == 1 and "its rows hold problem, solution" in hinted.output
    assert "--question-field and --answer-field" in hinted.output
    counted = cli(
        "sql", "SELECT reason FROM rejected_inputs WHERE dataset = 'junk' ORDER BY row_number", "--format", "json"
    )
    assert [r["reason"] for r in json.loads(counted.stdout)] == ["empty_question", "invalid_json"]


@pytest.mark.skipif(
    not (SHARED_DATA / "benchmarks" / "gsm8k_test.jsonl").exists(),
    reason="needs ../shared/data beside the checkout (CI and dev machines have it)",
)
def test_gsm8k_test_imports_all_1319_queries(cli) -> None:
    result = cli("data", "import", str(SHARED_DATA / "benchmarks" / "gsm8k_test.jsonl"), "--name", "gsm8k_test")
    assert result.exit_code == 0, result.output
    counted = cli("sql", "select count(*) AS n from queries", "--format", "json")
    assert json.loads(counted.stdout) == [{"n": 1319}]


# -- bounded inputs: one bad row never sinks an import -------------------------------------------------

VALID_ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 4)]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _valid_lines() -> list[str]:
    return [json.dumps(row) for row in VALID_ROWS]


def _imported(lake: Lake, dataset: str) -> list[str]:
    return [row["question"] for row in lake.read(f"queries/{dataset}").to_pylist()]


def test_an_oversized_question_or_answer_is_rejected_alone(lake: Lake, tmp_path: Path) -> None:
    huge = json.dumps({"question": "What is " + "1 + " * 2_500_000 + "1?", "answer": "2500001"})  # 10 MB
    long_answer = json.dumps({"question": "Spell it.", "answer": "a" * 5000})
    report = import_queries(lake, _jsonl(tmp_path / "big.jsonl", [huge, *_valid_lines(), long_answer]), "big")
    assert (report.rows_read, report.imported) == (5, 3)
    assert {r.row_number: r.reason for r in report.rejected} == {1: "question_too_long", 5: "answer_too_long"}
    assert "10000010 characters; the limit is 20000" in report.rejected[0].detail
    assert _imported(lake, "big") == [row["question"] for row in VALID_ROWS]
    stored = lake.read("rejected_inputs/big").to_pylist()
    assert len(stored[0]["raw"]) == 10_000  # what is kept of an oversized row is bounded too


def test_deeply_nested_rows_are_rejected_alone(lake: Lake, tmp_path: Path) -> None:
    beyond_the_parser = '{"question": "x", "answer": ' + "[" * 200_000 + "]" * 200_000 + "}"
    deep = json.dumps({"question": "Deep?", "answer": "1", "meta": json.loads("[" * 40 + "]" * 40)})
    report = import_queries(lake, _jsonl(tmp_path / "deep.jsonl", [*_valid_lines(), beyond_the_parser, deep]), "deep")
    assert report.imported == 3
    assert {r.row_number: r.reason for r in report.rejected} == {4: "too_deeply_nested", 5: "too_deeply_nested"}
    assert _imported(lake, "deep") == [row["question"] for row in VALID_ROWS]


def test_only_regular_files_are_read(lake: Lake, tmp_path: Path) -> None:
    fifo = tmp_path / "queries.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(outcome, lambda: import_queries(lake, fifo, "fifo")))
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # unblock the reader before failing, so the suite goes on
        with open(fifo, "w"):
            pass
        pytest.fail("importing a FIFO hangs")
    assert len(outcome) == 1 and isinstance(outcome[0], ImportFormatError)
    assert str(outcome[0]) == f"{fifo}: not a regular file (a FIFO); import reads files and dataset directories"
    with pytest.raises(ImportFormatError, match=r"/dev/null: not a regular file \(a device\)"):
        import_queries(lake, Path("/dev/null"), "device")


def _capture(into: list[BaseException], call) -> None:
    try:
        call()
    except BaseException as exc:  # handed to the test's thread
        into.append(exc)


def test_a_bom_is_stripped(lake: Lake, tmp_path: Path) -> None:
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + b"question,answer\r\n" + b"".join(
        f"{row['question']},{row['answer']}\r\n".encode() for row in VALID_ROWS))  # fmt: skip
    report = import_queries(lake, with_bom, "bom")
    assert (report.imported, report.rejected) == (3, [])
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\n".join(_valid_lines()).encode())
    assert import_queries(lake, jsonl, "bom-jsonl").imported == 3


def test_invalid_utf8_is_rejected_per_row_or_read_with_an_explicit_encoding(lake: Lake, tmp_path: Path) -> None:
    latin = "What is the café's bill of 3 + 4?".encode("latin-1")
    jsonl = tmp_path / "bytes.jsonl"
    jsonl.write_bytes(b"\n".join([*map(str.encode, _valid_lines()), b'{"question": "' + latin + b'", "answer": "7"}']))
    csv_file = tmp_path / "bytes.csv"
    csv_file.write_bytes(b"question,answer\n" + latin + b",7\nWhat is 2 + 2?,4\n")
    for path, valid in ((jsonl, 3), (csv_file, 1)):
        report = import_queries(lake, path, f"utf8-{path.suffix[1:]}")
        assert report.imported == valid and [r.reason for r in report.rejected] == ["invalid_encoding"]
        assert "\\xe9" in lake.read(f"rejected_inputs/utf8-{path.suffix[1:]}").to_pylist()[0]["raw"]
    escaped = _jsonl(tmp_path / "escaped.jsonl", ['{"question": "lone \\udc80 surrogate?", "answer": "1"}'])
    assert [r.reason for r in import_queries(lake, escaped, "escaped").rejected] == ["invalid_encoding"]
    explicit = import_queries(lake, csv_file, "latin", FieldMapping(encoding="latin-1"))
    assert explicit.imported == 2 and _imported(lake, "latin")[0] == "What is the café's bill of 3 + 4?"


def test_non_finite_answers_are_rejected_the_same_in_every_format(lake: Lake, tmp_path: Path) -> None:
    questions = ["What is 0/0?", "What is 1/0?", "What is -1/0?"]
    csv_answers, json_answers = ["nan", "inf", "-Infinity"], ["NaN", "Infinity", "-Infinity"]
    csv_rows = [f"{q},{a}\n" for q, a in zip(questions, csv_answers, strict=True)]
    (tmp_path / "nan.csv").write_text("question,answer\n" + "".join(csv_rows) + "What is 1 + 1?,2\n")
    json_rows = [f'{{"question": "{q}", "answer": {a}}}\n' for q, a in zip(questions, json_answers, strict=True)]
    (tmp_path / "nan.jsonl").write_text("".join(json_rows) + '{"question": "What is 1 + 1?", "answer": 2}\n')
    pq.write_table(pa.table({"question": [*questions, "What is 1 + 1?"],
                             "answer": [math.nan, math.inf, -math.inf, 2.0]}), tmp_path / "nan.parquet")  # fmt: skip
    for suffix in ("csv", "jsonl", "parquet"):
        report = import_queries(lake, tmp_path / f"nan.{suffix}", f"nan-{suffix}")
        assert report.imported == 1, suffix
        assert report.reason_counts == {"non_finite_answer": 3}, suffix


def test_reimporting_a_file_that_adds_nothing_writes_nothing(lake: Lake, tmp_path: Path, cli) -> None:
    junk = _jsonl(tmp_path / "junk.jsonl", ['{"question": ""}', "not json"])
    assert import_queries(lake, junk, "adds").nothing_importable
    again = import_queries(lake, junk, "adds")
    assert again.nothing_importable and again.already_imported == lake.versions("rejected_inputs", "adds")[0]
    assert len(lake.versions("rejected_inputs", "adds")) == 1
    good = _jsonl(tmp_path / "good.jsonl", _valid_lines())
    assert import_queries(lake, good, "adds").imported == 3
    duplicates = _jsonl(tmp_path / "dups.jsonl", _valid_lines()[:2])
    report = import_queries(lake, duplicates, "adds")
    assert (report.imported, report.duplicates_of_existing, report.queries_version, report.rejected_version) == (
        0, 2, None, None)  # fmt: skip
    assert [len(lake.versions(table, "adds")) for table in ("queries", "rejected_inputs")] == [1, 1]
