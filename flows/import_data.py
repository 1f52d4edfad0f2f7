"""Prefect flow that imports a question/answer file into the lake (deployable, retryable from the UI)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from schemas.config import load_config
from schemas.lake import Lake
from tasks.stages.import_queries import FieldMapping, import_queries


@flow(name="import-queries", log_prints=True)
def import_queries_flow(
    path: str,
    name: str,
    question_field: str = "question",
    answer_field: str = "answer",
    task: str = "math",
    encoding: str = "utf-8",
    max_question_chars: int = 20_000,
    max_answer_chars: int = 1_000,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> str | None:
    """Import `path` as the next version of queries/<name>; return the version id (None if unchanged)."""
    logger = get_run_logger()
    config = load_config(profile, overrides or [])
    mapping = FieldMapping(question=question_field, answer=answer_field, default_task=task, encoding=encoding,
                           max_question_chars=max_question_chars, max_answer_chars=max_answer_chars)  # fmt: skip
    report = import_queries(Lake.from_config(config.runtime), path, name, mapping)
    if report.already_imported is not None:
        logger.info("%s already imported as %s", path, report.already_imported.version_id)
        if report.nothing_importable:
            raise ValueError(f"nothing importable in {path} (see {report.already_imported.version_id})")
        return report.already_imported.version_id
    create_table_artifact(
        key=f"import-{name.lower().replace('_', '-')}",
        table=[
            {"reason": "imported", "rows": report.imported},
            *({"reason": reason, "rows": count} for reason, count in report.reason_counts.most_common()),
        ],
        description=f"Import of {path} into queries/{name}",
    )
    if report.nothing_importable:
        raise ValueError(f"nothing importable in {path}: {dict(report.reason_counts)}")
    logger.info("imported %d rows, rejected %d", report.imported, len(report.rejected))
    return report.queries_version.version_id if report.queries_version else None
