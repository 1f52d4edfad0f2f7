"""Import question/answer sets into the `queries` table, setting aside malformed rows with a reason.

Reads JSONL, JSON, Parquet, CSV and Hugging Face datasets saved to disk (regular files only: a FIFO
or a device would hang or never end). Text is decoded as UTF-8 (or `--encoding`), a BOM is dropped,
and a row with undecodable bytes, a nesting deeper than MAX_DEPTH, an oversized question or answer,
or a non-finite answer is rejected on its own with a reason. A dataset's new version is its previous
latest version plus the new, unique questions; re-importing a file already imported, or one that
adds nothing, writes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from schemas.config import config_hash
from schemas.lake import STALE_ATTEMPTS, Lake, LakeError, Lineage, StaleVersion, VersionInfo

STAGE = "import"
TASKS = ("math", "qa")
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
MAX_DEPTH = 32  # nesting of a row's values; deeper is not a question/answer row
NON_FINITE = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


class ImportFormatError(ValueError):
    """A source that cannot be read at all (unknown format, unreadable file, missing split)."""


@dataclass(frozen=True)
class FieldMapping:
    """Which source columns hold the question, answer, id and task."""

    question: str = "question"
    answer: str = "answer"
    id: str = "id"
    task: str = "task"
    default_task: str = "math"
    split: str | None = None
    encoding: str = "utf-8"
    max_question_chars: int = 20_000
    max_answer_chars: int = 1_000


@dataclass(frozen=True)
class Rejection:
    """A source row set aside, with its 1-based position, a reason code and details."""

    row_number: int
    reason: str
    detail: str
    raw: str


@dataclass
class ImportReport:
    """What an import did: counts, rejections and the versions it wrote."""

    dataset: str
    source: str
    rows_read: int = 0
    imported: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    queries_version: VersionInfo | None = None
    rejected_version: VersionInfo | None = None
    already_imported: VersionInfo | None = None
    columns: list[str] = field(default_factory=list)  # the fields the source's rows hold (first seen first)

    @property
    def reason_counts(self) -> Counter[str]:
        """Rejections per reason code."""
        return Counter(rejection.reason for rejection in self.rejected)

    @property
    def duplicates_of_existing(self) -> int:
        """Rows whose question the dataset already held."""
        return self.reason_counts["duplicate_existing"]

    @property
    def nothing_importable(self) -> bool:
        """True when no row of the source was a valid query (new or already present)."""
        if self.already_imported is not None:
            return self.already_imported.table_name == "rejected_inputs"
        return self.imported == 0 and self.duplicates_of_existing == 0


def _raw(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:10_000]


def _decode(path: Path, encoding: str) -> str:
    """The file's text: a BOM dropped, undecodable bytes kept as lone surrogates (each row holding one
    is rejected, the others are imported)."""
    codec = "utf-8-sig" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding
    try:
        return path.read_bytes().decode(codec, errors="surrogateescape")
    except LookupError:
        raise ImportFormatError(f"--encoding {encoding!r} is not a known text encoding") from None


def _read_jsonl(path: Path, encoding: str) -> Iterator[tuple[int, Any]]:
    yield from _jsonl_lines(_decode(path, encoding).splitlines())


def _jsonl_lines(lines: list[str]) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            yield number, Rejection(number, "empty_row", "blank line", line)
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            detail = f"not valid JSON: {exc.msg} at column {exc.colno}"
            yield number, Rejection(number, "invalid_json", detail, line[:10_000])
        except RecursionError:
            yield number, Rejection(number, "too_deeply_nested", "nested deeper than JSON can be parsed", line[:10_000])


def _read_json(path: Path, encoding: str) -> Iterator[tuple[int, Any]]:
    text = _decode(path, encoding)
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        # Many `.json` files are JSON Lines in disguise.
        yield from _jsonl_lines(text.splitlines())
        return
    except RecursionError:
        raise ImportFormatError(
            f"{path}: nested deeper than JSON can be parsed; as JSON Lines (.jsonl) only such rows are rejected"
        ) from None
    if isinstance(document, dict):
        lists = [value for value in document.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise ImportFormatError(f"{path}: a JSON object must hold exactly one list of rows")
        document = lists[0]
    if not isinstance(document, list):
        raise ImportFormatError(f"{path}: expected a JSON list of rows")
    yield from enumerate(document, start=1)


def _read_csv(path: Path, encoding: str) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(1 << 30)  # an oversized cell is rejected by its row's size check, not a crash here
    reader = csv.DictReader(io.StringIO(_decode(path, encoding), newline=""))
    number = 0
    while True:
        number += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield number, Rejection(number, "invalid_csv", f"not valid CSV: {exc}", f"line {reader.line_num}")
            continue
        # DictReader puts surplus cells under the key None; keep them visible, not as a column.
        surplus = row.pop(None, None)  # type: ignore[call-overload]
        if surplus:
            row["_extra_cells"] = surplus
        yield number, row


def _read_parquet(path: Path, encoding: str) -> Iterator[tuple[int, Any]]:
    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _read_hf_dataset(path: Path, split: str | None) -> Iterator[tuple[int, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            raise ImportFormatError(f"{path}: choose a split with --split ({', '.join(splits)})")
        loaded = loaded[split]
    yield from enumerate(loaded, start=1)


def check_source(path: Path) -> None:
    """Raise ImportFormatError unless `path` is a regular file or a saved dataset directory."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ImportFormatError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            raise ImportFormatError(f"{path}: a directory must be a Hugging Face dataset saved with save_to_disk")
    elif not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else ("a socket")
        )
        raise ImportFormatError(f"{path}: not a regular file ({kind}); import reads files and dataset directories")


def read_source(path: Path, split: str | None = None, encoding: str = "utf-8") -> Iterator[tuple[int, Any]]:
    """Yield (row_number, row) from a supported file; unreadable rows come as Rejection values."""
    check_source(path)
    if path.is_dir():
        return _read_hf_dataset(path, split)
    suffix = path.suffix.lower()
    readers = {".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet, ".pq": _read_parquet}
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, encoding)
    if suffix in readers:
        return readers[suffix](path, encoding)
    raise ImportFormatError(
        f"{path}: unsupported format {suffix!r}; use .jsonl, .json, .csv, .parquet or a dataset dir"
    )


def _shape_problem(row: Any) -> tuple[str, str] | None:
    """Why a row's values cannot be stored: undecodable text, or a nesting deeper than MAX_DEPTH."""
    stack = [(row, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "too_deeply_nested", f"values nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str) and _undecodable(value):
            return "invalid_encoding", "holds bytes that are not valid text in the file's encoding (see --encoding)"
        if isinstance(value, dict):
            stack += [(key, depth + 1) for key in value] + [(item, depth + 1) for item in value.values()]
        elif isinstance(value, list | tuple):
            stack += [(item, depth + 1) for item in value]
    return None


def _undecodable(text: str) -> bool:
    """Whether text holds lone surrogates (undecodable bytes, or a JSON \\udXXX escape): not storable."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _storable(text: str) -> str:
    """Text whose undecodable bytes (and other lone surrogates) are shown as escapes, so a rejected row's
    raw text can be stored: the byte 0xE9 as `\\xe9`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _answer_text(value: Any) -> str | None:
    """A gold answer as text, or None when the value is not a string or a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else "inf"  # rejected as non-finite, as the same text is
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip()
    return None


def normalize_question(question: str) -> str:
    """Whitespace-collapsed question text, the identity used for deduplication."""
    return " ".join(question.split())


def query_id_for(question: str) -> str:
    """Stable id of a query: a hash of its normalized question."""
    return "q" + hashlib.sha1(normalize_question(question).encode()).hexdigest()[:16]


def to_query(number: int, row: Any, mapping: FieldMapping, source: str) -> dict[str, Any] | Rejection:
    """Map one source row onto the queries schema, or explain why it cannot be."""
    if isinstance(row, Rejection):
        return row
    if not isinstance(row, dict):
        return Rejection(number, "not_an_object", f"expected an object, got {type(row).__name__}", _raw(row))
    raw = _raw(row)
    shape = _shape_problem(row)
    if shape is not None:
        return Rejection(number, *shape, raw)
    question = row.get(mapping.question)
    if question is None:
        columns = ", ".join(map(str, list(row)[:20]))
        detail = f"no {mapping.question!r} field (this row has: {columns}; name the question's with --question-field)"
        return Rejection(number, "missing_question", detail, raw)
    if not isinstance(question, str):
        return Rejection(
            number, "wrong_type_question", f"{mapping.question!r} is {type(question).__name__}, expected a string", raw
        )
    if not question.strip():
        return Rejection(number, "empty_question", f"{mapping.question!r} is empty", raw)
    if len(question) > mapping.max_question_chars:
        detail = f"the question has {len(question)} characters; the limit is {mapping.max_question_chars}"
        return Rejection(number, "question_too_long", detail, raw[:10_000])
    answer = row.get(mapping.answer)
    if answer is None:
        return Rejection(number, "missing_answer", f"no {mapping.answer!r} field", raw)
    values = answer if isinstance(answer, list) else [answer]
    answers = [_answer_text(value) for value in values]
    if any(text is None for text in answers):
        bad = next(value for value, text in zip(values, answers, strict=True) if text is None)
        return Rejection(
            number,
            "wrong_type_answer",
            f"{mapping.answer!r} holds {type(bad).__name__} {bad!r}, "
            "expected a string or a finite number (or a list of them)",
            raw,
        )
    answers = [text for text in answers if text]
    if not answers:
        return Rejection(number, "empty_answer", f"{mapping.answer!r} is empty", raw)
    if any(text.lower() in NON_FINITE for text in answers):
        return Rejection(number, "non_finite_answer", f"{mapping.answer!r} holds {answers}: not a finite value", raw)
    if any(len(text) > mapping.max_answer_chars for text in answers):
        detail = f"an answer has {max(map(len, answers))} characters; the limit is {mapping.max_answer_chars}"
        return Rejection(number, "answer_too_long", detail, raw[:10_000])
    task = row.get(mapping.task) or mapping.default_task
    if task not in TASKS:
        return Rejection(number, "invalid_task", f"task {task!r} is not one of {', '.join(TASKS)}", raw)
    source_id = row.get(mapping.id)
    mapped = {mapping.question, mapping.answer, mapping.id, mapping.task}
    extra = {key: value for key, value in row.items() if key not in mapped}
    return {
        "query_id": query_id_for(question),
        "source_id": None if source_id is None else str(source_id),
        "question": question.strip(),
        "answer": answers[0],
        "answers": answers,
        "task": task,
        "source": source,
        "metadata": _raw(extra) if extra else None,
    }


def _fingerprint(path: Path, mapping: FieldMapping) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return config_hash({"content": digest.hexdigest(), "mapping": mapping.__dict__})


def import_queries(lake: Lake, path: str | Path, dataset: str, mapping: FieldMapping | None = None) -> ImportReport:
    """Import a question/answer file as the next version of `queries/<dataset>`.

    The new version is the latest version plus the new, unique questions. It is committed only if
    that latest version is still the latest (checked inside the commit): when another import got
    there first, the import starts again from the new latest, so concurrent imports all land.
    """
    mapping = mapping or FieldMapping()
    if mapping.default_task not in TASKS:
        raise ImportFormatError(f"--task must be one of {', '.join(TASKS)}, got {mapping.default_task!r}")
    path = Path(path)
    check_source(path)
    fingerprint = _fingerprint(path, mapping)
    for _ in range(STALE_ATTEMPTS):
        try:
            return _import_once(lake, path, dataset, mapping, fingerprint)
        except StaleVersion:
            continue
    raise LakeError(f"queries/{dataset} kept changing under {STALE_ATTEMPTS} attempts to import {path}")


def _import_once(lake: Lake, path: Path, dataset: str, mapping: FieldMapping, fingerprint: str) -> ImportReport:
    """One attempt: read the latest version, add the file's new questions, commit if still the latest."""
    source = str(path)
    report = ImportReport(dataset=dataset, source=source)
    previous = lake.versions("queries", dataset)
    for info in previous + lake.versions("rejected_inputs", dataset):
        if info.stage == STAGE and info.config_hash == fingerprint:
            report.already_imported = info
            return report

    existing_rows = lake.read(previous[-1]).to_pylist() if previous else []
    existing_ids = {row["query_id"] for row in existing_rows}
    first_seen: dict[str, tuple[int, list[str]]] = {}
    new_rows = []
    for number, row in read_source(path, mapping.split, mapping.encoding):
        report.rows_read += 1
        if isinstance(row, dict) and len(report.columns) < 100:
            report.columns += [str(key) for key in row if str(key) not in report.columns]
        query = to_query(number, row, mapping, source)
        if isinstance(query, Rejection):
            report.rejected.append(query)
            continue
        query_id = query["query_id"]
        if query_id in existing_ids:
            report.rejected.append(
                Rejection(number, "duplicate_existing", f"question already in {previous[-1].version_id}", _raw(row))
            )
            continue
        if query_id in first_seen:
            first_row, first_answers = first_seen[query_id]
            conflict = " with a different answer" if first_answers != query["answers"] else ""
            report.rejected.append(
                Rejection(number, "duplicate_question", f"same question as row {first_row}{conflict}", _raw(row))
            )
            continue
        first_seen[query_id] = (number, query["answers"])
        new_rows.append(query)

    report.imported = len(new_rows)
    if not new_rows and all(rejection.reason == "duplicate_existing" for rejection in report.rejected):
        return report  # it adds nothing: no version, not even of its (all duplicate) rejections
    latest = previous[-1].version_id if previous else None
    lineage = Lineage(stage=STAGE, config_hash=fingerprint, input_versions=(latest,) if latest else ())
    with lake.transaction(lineage) as batch:
        if new_rows:
            batch.write("queries", dataset, existing_rows + new_rows, expect=latest)
        if report.rejected:
            batch.write(
                "rejected_inputs",
                dataset,
                [
                    {
                        "stage": STAGE,
                        "source": source,
                        "row_number": r.row_number,
                        "reason": r.reason,
                        "detail": _storable(r.detail),
                        "raw": _storable(r.raw),
                    }
                    for r in report.rejected
                ],
            )
    for info in batch.committed:
        if info.table_name == "queries":
            report.queries_version = info
        else:
            report.rejected_version = info
    return report
