"""Evaluation figures from scored trajectories: each model's metrics with 95% intervals, per benchmark and
subset (all questions, each task, each stratum), and paired comparisons of models on the same questions.

Errored trajectories count as wrong in accuracy and format validity (a failed generation is not an
answer) and are left out of the means; they are counted in `generation_errors`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

from tasks.scoring.statistics import Estimate, mean, paired_difference, proportion

METRICS = ("accuracy", "format_valid", "mean_quality", "tool_calls", "tool_error_rate", "mean_tokens")
# The metrics compared question by question, and the column of a scored row each is the mean of.
COMPARED = {
    "accuracy": "correct",
    "mean_quality": "quality",
    "mean_tokens": "completion_tokens",
    "tool_calls": "tool_calls",
}
ALL = "all"


def model_metrics(rows: Sequence[Mapping[str, Any]], errors: int = 0) -> dict[str, Estimate]:
    """One model's metrics over its scored rows (each a scores row + completion_tokens) and errored count."""
    count = len(rows) + errors
    calls = sum(row["tool_calls"] for row in rows)
    empty = Estimate(0.0, None, None, 0, "bootstrap")

    def average(key: str) -> Estimate:
        return mean([row[key] for row in rows]) if rows else empty

    return {
        "accuracy": proportion(sum(row["correct"] for row in rows), count),
        "format_valid": proportion(sum(row["format_ok"] for row in rows), count),
        "mean_quality": average("quality"),
        "tool_calls": average("tool_calls"),
        "tool_error_rate": proportion(sum(row["tool_errors"] for row in rows), calls) if calls else empty,
        "mean_tokens": average("completion_tokens"),
        "generation_errors": Estimate(float(errors), None, None, count, "count"),
    }


def subsets_of(query: Mapping[str, Any], tasks: int, strata_key: str | None) -> list[str]:
    """The subsets a query counts in: all, its task (when the benchmark mixes tasks), its stratum."""
    subsets = [ALL]
    if tasks > 1:
        subsets.append(f"task={query['task']}")
    if strata_key and query.get("metadata"):
        try:
            value = json.loads(query["metadata"]).get(strata_key)
        except (ValueError, AttributeError):
            value = None
        if value is not None:
            subsets.append(f"{strata_key}={value}")
    return subsets


def _question_value(row: Mapping[str, Any] | None, metric: str) -> float | None:
    """One question's figure for a paired comparison: an errored trajectory is wrong, and has no mean figure."""
    if metric == "accuracy":
        return float(bool(row and row["correct"]))
    return None if row is None else float(row[COMPARED[metric]])


Answers = Mapping[str, Mapping[str, Any]]  # a model's scored rows by query id


def paired_values(
    first: Answers, second: Answers, metric: str, questions: Iterable[str]
) -> tuple[list[float], list[float]]:
    """Two models' figures on the same questions (scored rows by query id; a missing one errored), for
    `paired_difference`: every question for accuracy, those both answered for the means."""
    pairs = [(_question_value(first.get(q), metric), _question_value(second.get(q), metric)) for q in questions]
    kept = [(a, b) for a, b in pairs if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def evaluation_rows(
    benchmark: str,
    queries: Mapping[str, Mapping[str, Any]],
    scored: Mapping[str, Sequence[Mapping[str, Any]]],
    errored: Mapping[str, Sequence[str]],
    labels: Mapping[str, str],
    strata_key: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """eval_results and eval_comparisons rows of one benchmark: `scored` and `errored` (query ids) by model,
    `labels` the models' display names in order; comparisons are later model minus earlier."""
    evaluated = {row["query_id"] for rows in scored.values() for row in rows} | {
        query_id for query_ids in errored.values() for query_id in query_ids
    }
    queries = {query_id: query for query_id, query in queries.items() if query_id in evaluated}
    tasks = len({query["task"] for query in queries.values()})
    subsets = {query_id: subsets_of(query, tasks, strata_key) for query_id, query in queries.items()}
    by_subset: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_question: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for model, rows in scored.items():
        for row in rows:
            by_question[model][row["query_id"]] = row
            for subset in subsets[row["query_id"]]:
                by_subset[subset][model].append(row)
    for model, query_ids in errored.items():
        for query_id in query_ids:
            for subset in subsets[query_id]:
                errors[subset][model] += 1
    order = [ALL, *sorted({s for names in subsets.values() for s in names} - {ALL})]
    results, comparisons = [], []
    for subset in order:
        for model, label in labels.items():
            for metric, estimate in model_metrics(by_subset[subset][model], errors[subset][model]).items():
                results.append({"model_id": model, "label": label, "benchmark": benchmark, "subset": subset,
                                "metric": metric, "value": float(estimate.value), "ci_low": estimate.low,
                                "ci_high": estimate.high, "interval": estimate.method,
                                "n_examples": len(by_subset[subset][model]) + errors[subset][model]})  # fmt: skip
        questions = [query_id for query_id in queries if subset in subsets[query_id]]
        for first, second in combinations(labels, 2):
            for metric in COMPARED:
                result = paired_difference(*paired_values(by_question[first], by_question[second], metric, questions))
                comparisons.append({"benchmark": benchmark, "subset": subset, "metric": metric,
                                    "model_a": first, "label_a": labels[first], "model_b": second,
                                    "label_b": labels[second], "difference": result.difference,
                                    "ci_low": result.low, "ci_high": result.high, "p_value": result.p_value,
                                    "n": result.n, "significant": result.significant})  # fmt: skip
    return results, comparisons


def interval_cell(row: Mapping[str, Any]) -> str:
    """A metric as `value [low, high]` (lengths and counts in whole tokens, the rest to 3 decimals)."""
    digits = 0 if row["metric"] == "mean_tokens" else 3
    text = f"{row['value']:.{digits}f}"
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f" [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
    return text


def difference_line(row: Mapping[str, Any]) -> str:
    """One paired comparison in words: b − a, its interval, p and n, and whether it is significant."""
    interval = "" if row["ci_low"] is None else f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
    p_value = "" if row["p_value"] is None else f", p={row['p_value']:.3g}"
    verdict = "significant" if row["significant"] else "not significant"
    return (f"{row['benchmark']} ({row['subset']}) {row['metric']}: {row['label_b']} − {row['label_a']} = "
            f"{row['difference']:+.3f}{interval}{p_value}, n={row['n']}: {verdict}")  # fmt: skip


def significance_notes(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paired differences over all questions whose 95% interval excludes 0."""
    return [difference_line(row) for row in comparisons if row["subset"] == ALL and row["significant"]]
