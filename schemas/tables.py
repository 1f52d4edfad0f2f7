"""Arrow schemas of every lake table, and validation of rows against them.

Every versioned table starts with `version_id`, which the lake fills in on write; callers supply the
other columns. A mismatch raises SchemaError naming the table, the column and the first offending row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

VERSION_COLUMN = "version_id"


def _field(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


# One turn segment of a trajectory: text the model wrote, or text a tool returned.
SEGMENT = pa.struct(
    [
        _required("kind", pa.string()),  # "model" | "tool"
        _field("tool", pa.string()),  # "python" | "search" for tool segments
        _required("text", pa.string()),
        _field("token_ids", pa.list_(pa.int32())),
        _required("n_tokens", pa.int32()),
    ]
)
SEGMENTS = pa.list_(SEGMENT)
STRINGS = pa.list_(pa.string())
TIMESTAMP = pa.timestamp("us", tz="UTC")

_VERSION = _required(VERSION_COLUMN, pa.string())

SCHEMAS: dict[str, pa.Schema] = {
    "queries": pa.schema(
        [
            _VERSION,
            _required("query_id", pa.string()),
            _field("source_id", pa.string()),
            _required("question", pa.string()),
            _required("answer", pa.string()),
            _required("answers", STRINGS),  # every acceptable gold answer; `answer` is the first
            _required("task", pa.string()),  # "math" | "qa"
            _field("source", pa.string()),
            _field("metadata", pa.string()),  # JSON of the source row's other fields
        ]
    ),
    "rollouts": pa.schema(
        [
            _VERSION,
            _required("trajectory_id", pa.string()),
            _required("query_id", pa.string()),
            _required("sample_index", pa.int32()),
            _required("model", pa.string()),
            _required("prompt", pa.string()),
            _field("prompt_token_ids", pa.list_(pa.int32())),
            _required("response", pa.string()),
            _required("segments", SEGMENTS),
            # answer | eos | length | max_tool_calls | max_turns | rejected (input over its limit) | error
            _required("finish_reason", pa.string()),
            _required("num_turns", pa.int32()),
            _required("num_tool_calls", pa.int32()),
            _required("prompt_tokens", pa.int32()),
            _required("completion_tokens", pa.int32()),
            _field("error", pa.string()),
            # What a served model reported in `usage`, summed over the turns (null: a local model).
            _field("usage_prompt_tokens", pa.int64()),
            _field("usage_completion_tokens", pa.int64()),
        ]
    ),
    "scores": pa.schema(
        [
            _VERSION,
            _required("trajectory_id", pa.string()),
            _required("query_id", pa.string()),
            _field("extracted_answer", pa.string()),
            _required("correct", pa.bool_()),
            _required("outcome", pa.float64()),
            _field("verify_error", pa.string()),
            _required("format_ok", pa.bool_()),
            _field("format_reason", pa.string()),
            _required("confidence", pa.float64()),
            _required("length_score", pa.float64()),
            _required("repetition_score", pa.float64()),
            _required("quality", pa.float64()),
            _required("n_words", pa.int32()),
            _required("tool_calls", pa.int32()),
            _required("tool_errors", pa.int32()),
            _required("redundant_tool_calls", pa.int32()),
            _required("label", pa.string()),  # high_quality | correct_low_quality | wrong
        ]
    ),
    "repairs": pa.schema(
        [
            _VERSION,
            _required("repair_id", pa.string()),
            _required("source_trajectory_id", pa.string()),
            _required("query_id", pa.string()),
            _required("attempt", pa.int32()),
            _required("source_label", pa.string()),
            _required("prompt_variant", pa.string()),  # "low_quality" | "wrong"
            _required("model", pa.string()),
            _required("prompt", pa.string()),
            _required("response", pa.string()),
            _required("segments", SEGMENTS),
            _required("finish_reason", pa.string()),
            _required("correct", pa.bool_()),
            _required("outcome", pa.float64()),
            _required("quality", pa.float64()),
            _required("accepted", pa.bool_()),
            _field("reject_reason", pa.string()),  # why a hard case is one
        ]
    ),
    "sft_examples": pa.schema(
        [
            _VERSION,
            _required("example_id", pa.string()),
            _required("query_id", pa.string()),
            _required("origin", pa.string()),  # "high_quality" | "repair"
            _required("source_id", pa.string()),  # trajectory_id or repair_id
            _required("prompt", pa.string()),
            _required("segments", SEGMENTS),
            _required("quality", pa.float64()),
        ]
    ),
    "preference_pairs": pa.schema(
        [
            _VERSION,
            _required("pair_id", pa.string()),
            _required("query_id", pa.string()),
            _required("prompt", pa.string()),
            _required("chosen", pa.string()),
            _required("rejected", pa.string()),
            _field("chosen_segments", SEGMENTS),
            _field("rejected_segments", SEGMENTS),
            _required("source_label", pa.string()),
            _required("repair_id", pa.string()),
            _required("source_trajectory_id", pa.string()),
            _required("chosen_quality", pa.float64()),
            _required("rejected_quality", pa.float64()),
            _required("chosen_outcome", pa.float64()),
            _required("rejected_outcome", pa.float64()),
        ]
    ),
    "models": pa.schema(
        [
            _VERSION,
            _required("model_id", pa.string()),
            _required("kind", pa.string()),  # "policy" | "reward_model" | "teacher" | "repairer"
            _required("path", pa.string()),
            _field("base_model", pa.string()),
            _field("method", pa.string()),  # "full" | "lora" | "scratch"
            _field("metrics", pa.string()),  # JSON
        ]
    ),
    "train_metrics": pa.schema(
        [
            _VERSION,
            _required("model_id", pa.string()),
            _required("step", pa.int64()),
            _field("epoch", pa.float64()),
            _required("name", pa.string()),
            _required("value", pa.float64()),
        ]
    ),
    "eval_results": pa.schema(
        [
            _VERSION,
            _required("model_id", pa.string()),
            _required("benchmark", pa.string()),
            _required("metric", pa.string()),
            _required("value", pa.float64()),
            _required("n_examples", pa.int64()),
            _field("label", pa.string()),  # the model's display name (its role in the run)
            _field("subset", pa.string()),  # "all", "task=qa", "difficulty=3"
            _field("ci_low", pa.float64()),  # 95% interval; null where too few observations give one
            _field("ci_high", pa.float64()),
            _field("interval", pa.string()),  # "wilson" | "bootstrap" | "count"
        ]
    ),
    # Two models on the same questions: mean(b − a), its 95% paired-bootstrap interval, a paired permutation p.
    "eval_comparisons": pa.schema(
        [
            _VERSION,
            _required("benchmark", pa.string()),
            _required("subset", pa.string()),
            _required("metric", pa.string()),
            _required("model_a", pa.string()),
            _required("model_b", pa.string()),
            _field("label_a", pa.string()),
            _field("label_b", pa.string()),
            _required("difference", pa.float64()),
            _field("ci_low", pa.float64()),
            _field("ci_high", pa.float64()),
            _field("p_value", pa.float64()),
            _required("n", pa.int64()),
            _required("significant", pa.bool_()),
        ]
    ),
    "rejected_inputs": pa.schema(
        [
            _VERSION,
            _required("stage", pa.string()),
            _required("source", pa.string()),
            _required("row_number", pa.int64()),  # 1-based position in the source
            _required("reason", pa.string()),  # a short code, e.g. missing_answer
            _required("detail", pa.string()),
            _field("raw", pa.string()),
        ]
    ),
    # The counts and distributions a stage printed, committed with its output (same run id).
    "stage_reports": pa.schema(
        [
            _VERSION,
            _required("stage", pa.string()),
            _required("table_name", pa.string()),  # the output table it describes
            _required("metrics", pa.string()),  # JSON
        ]
    ),
    # The lineage catalog: one row per committed dataset version (not itself versioned).
    "runs": pa.schema(
        [
            _required(VERSION_COLUMN, pa.string()),
            _required("table_name", pa.string()),
            _required("dataset", pa.string()),
            _required("version", pa.int64()),
            _required("stage", pa.string()),
            _required("run_id", pa.string()),
            _required("config_hash", pa.string()),
            _required("input_versions", STRINGS),
            _field("prefect_flow_run_id", pa.string()),
            _required("row_count", pa.int64()),
            _field("code_version", pa.string()),
            _required("created_at", TIMESTAMP),
            # Rows that failed (errored generations): the version is incomplete, and a re-run of the
            # same stage retries them instead of returning it. Null on versions written before it existed.
            _field("errored_rows", pa.int64()),
        ]
    ),
}

LINEAGE_TABLE = "runs"
SHARD_MARKER = ".partial-"  # a resumable stage commits its shards to <dataset>.partial-<key>: internal datasets
VERSIONED_TABLES = tuple(name for name in SCHEMAS if name != LINEAGE_TABLE)


class SchemaError(ValueError):
    """Rows that do not match a table's schema."""

    def __init__(self, table: str, column: str, row: int | None, message: str):
        self.table, self.column, self.row = table, column, row
        where = f", row {row}" if row is not None else ""
        super().__init__(f"table {table!r}, column {column!r}{where}: {message}")


def schema_of(table: str) -> pa.Schema:
    """The Arrow schema of a table, or a clear error for an unknown table."""
    try:
        return SCHEMAS[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; tables: {', '.join(SCHEMAS)}") from None


def payload_schema(table: str) -> pa.Schema:
    """The columns a writer supplies: the table's schema without the lake-filled version_id."""
    schema = schema_of(table)
    if table == LINEAGE_TABLE:
        return schema
    return schema.remove(schema.get_field_index(VERSION_COLUMN))


def _first_bad_element(table: str, field: pa.Field, values: Sequence[Any] | pa.ChunkedArray) -> SchemaError:
    """Find the first element that does not convert (Arrow values by Arrow cast, Python values by pa.array)."""
    arrow = isinstance(values, pa.ChunkedArray)
    for index in range(len(values)):
        try:
            if arrow:
                values.slice(index, 1).cast(field.type, safe=True)
            else:
                pa.array([values[index]], type=field.type)
        except (
            pa.ArrowInvalid,
            pa.ArrowNotImplementedError,
            pa.ArrowTypeError,
            TypeError,
            ValueError,
            OverflowError,
        ) as exc:
            value = values[index].as_py() if arrow else values[index]
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            return SchemaError(table, field.name, index, f"expected {field.type}, got {shown} ({exc})")
    return SchemaError(table, field.name, None, f"values do not convert to {field.type}")


def _check_nulls(table: str, field: pa.Field, array: pa.Array | pa.ChunkedArray) -> None:
    if field.nullable or array.null_count == 0:
        return
    nulls = array.is_null()
    if isinstance(nulls, pa.ChunkedArray):
        nulls = nulls.combine_chunks()
    first = nulls.to_numpy(zero_copy_only=False).argmax()
    raise SchemaError(table, field.name, int(first), "missing or null in a required column")


def _from_rows(table: str, schema: pa.Schema, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    allowed = set(schema.names)
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(table, "*", index, f"a row must be a mapping, got {type(row).__name__}")
        unknown = set(row) - allowed
        if unknown:
            raise SchemaError(table, sorted(unknown)[0], index, "column not in the schema")
    arrays = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        try:
            array = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            raise _first_bad_element(table, field, values) from None
        _check_nulls(table, field, array)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def _from_arrow(table: str, schema: pa.Schema, data: pa.Table) -> pa.Table:
    extra = [name for name in data.column_names if name not in schema.names]
    if extra:
        raise SchemaError(table, extra[0], None, "column not in the schema")
    columns = []
    for field in schema:
        if field.name not in data.column_names:
            if not field.nullable:
                raise SchemaError(table, field.name, 0 if data.num_rows else None, "required column missing")
            columns.append(pa.nulls(data.num_rows, type=field.type))
            continue
        column = data.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise _first_bad_element(table, field, column) from None
        _check_nulls(table, field, column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def validate(table: str, data: pa.Table | Iterable[Mapping[str, Any]], *, schema: pa.Schema | None = None) -> pa.Table:
    """Convert rows (Arrow table or mappings) to the table's payload schema, or raise SchemaError."""
    schema = schema or payload_schema(table)
    if isinstance(data, pa.Table):
        return _from_arrow(table, schema, data)
    return _from_rows(table, schema, list(data))
