"""Reading what a version was made from, through its lineage."""

from __future__ import annotations

from schemas.lake import Lake, VersionInfo


def gold_answers(lake: Lake, rollouts: VersionInfo) -> dict[str, dict]:
    """The queries (question, gold answers, task) behind a rollouts version, by query id."""
    queries = lake.input_of(rollouts, "queries")
    columns = ["query_id", "question", "answers", "task"]
    return {row["query_id"]: row for row in lake.read(queries, columns=columns).to_pylist()}
