"""Schema validation: every mismatch names the table, the column and the first offending row."""

from __future__ import annotations

import pyarrow as pa
import pytest

from schemas.tables import SCHEMAS, VERSION_COLUMN, VERSIONED_TABLES, SchemaError, payload_schema, validate


def _segment(**overrides):
    return {"kind": "model", "tool": None, "text": "<think>hi</think>", "token_ids": [1, 2], "n_tokens": 2, **overrides}


def _rollout(**overrides):
    row = {
        "trajectory_id": "t",
        "query_id": "q",
        "sample_index": 0,
        "model": "m",
        "prompt": "p",
        "response": "r",
        "segments": [_segment()],
        "finish_reason": "answer",
        "num_turns": 1,
        "num_tool_calls": 0,
        "prompt_tokens": 3,
        "completion_tokens": 2,
    }
    return {**row, **overrides}


def test_every_table_named_in_the_design_has_a_schema() -> None:
    assert set(SCHEMAS) == {
        "queries",
        "rollouts",
        "scores",
        "repairs",
        "sft_examples",
        "preference_pairs",
        "models",
        "train_metrics",
        "eval_results",
        "eval_comparisons",
        "runs",
        "rejected_inputs",
        "stage_reports",
    }
    for table in VERSIONED_TABLES:
        assert SCHEMAS[table].names[0] == VERSION_COLUMN
        assert VERSION_COLUMN not in payload_schema(table).names


def test_valid_rows_convert_with_nested_segments() -> None:
    table = validate("rollouts", [_rollout(), _rollout(segments=[_segment(), _segment(kind="tool", tool="python")])])
    assert table.num_rows == 2
    assert table.schema == payload_schema("rollouts")
    assert table["segments"][1].as_py()[1]["tool"] == "python"


@pytest.mark.parametrize(
    ("rows", "column", "row", "message"),
    [
        ([_rollout(), _rollout(), _rollout(num_turns="three")], "num_turns", 2, "expected int32"),
        ([_rollout(), _rollout(prompt=None)], "prompt", 1, "missing or null"),
        ([_rollout(), {k: v for k, v in _rollout().items() if k != "model"}], "model", 1, "missing or null"),
        ([_rollout(surprise=1)], "surprise", 0, "not in the schema"),
        ([_rollout(), _rollout(segments=[_segment(n_tokens="2")])], "segments", 1, "expected list"),
    ],
)
def test_row_mismatches_name_table_column_and_row(rows, column, row, message) -> None:
    with pytest.raises(SchemaError) as caught:
        validate("rollouts", rows)
    error = caught.value
    assert (error.table, error.column, error.row) == ("rollouts", column, row)
    assert message in str(error)
    assert str(error).startswith(f"table 'rollouts', column {column!r}, row {row}")


def test_arrow_input_is_cast_or_rejected_with_the_first_bad_row() -> None:
    good = pa.table({"model_id": ["m"], "step": pa.array([1], pa.int32()), "name": ["loss"], "value": [0.5]})
    assert validate("train_metrics", good)["step"].type == pa.int64()
    bad = pa.table({"model_id": ["m", "m"], "step": ["1", "x"], "name": ["loss"] * 2, "value": [0.5, 0.4]})
    with pytest.raises(SchemaError, match=r"table 'train_metrics', column 'step', row 1: expected int64"):
        validate("train_metrics", bad)
    missing = pa.table({"model_id": ["m"], "name": ["loss"], "value": [0.5]})
    with pytest.raises(SchemaError, match="column 'step', row 0: required column missing"):
        validate("train_metrics", missing)


def test_unknown_table_is_named() -> None:
    with pytest.raises(KeyError, match="unknown table 'trajectories'"):
        validate("trajectories", [])
