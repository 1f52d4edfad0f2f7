"""Intervals and paired tests against hand-computed values, and the evaluation rows built from them."""

from __future__ import annotations

import json
import math

import pytest

from tasks.scoring.evaluation import evaluation_rows, model_metrics
from tasks.scoring.statistics import mean, paired_difference, proportion

Z = 1.959963984540054  # the 97.5th percentile of the standard normal


def _wilson(successes: int, n: int) -> tuple[float, float]:
    p = successes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("successes", "n"), [(8, 10), (0, 5), (5, 5), (113, 200)])
def test_wilson_interval_matches_the_formula(successes: int, n: int) -> None:
    estimate = proportion(successes, n)
    low, high = _wilson(successes, n)
    assert estimate.value == successes / n and estimate.n == n and estimate.method == "wilson"
    assert estimate.low == pytest.approx(max(0.0, low), abs=1e-9)
    assert estimate.high == pytest.approx(min(1.0, high), abs=1e-9)
    assert proportion(8, 10).low == pytest.approx(0.4902, abs=1e-4)  # the textbook value
    assert proportion(0, 0).low is None
    with pytest.raises(ValueError, match="11 successes out of 10"):
        proportion(11, 10)


def test_bootstrap_mean_interval() -> None:
    # [0, 1]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles are 0 and 1.
    two = mean([0.0, 1.0])
    assert (two.value, two.low, two.high) == (0.5, 0.0, 1.0)
    constant = mean([3.0, 3.0, 3.0])
    assert (constant.low, constant.high) == (3.0, 3.0)
    assert mean([2.0]).low is None and mean([]).n == 0  # too few values for an interval
    wide = mean([1.0, 9.0, 4.0, 7.0, 2.0, 8.0, 5.0, 3.0])
    assert wide.low < wide.value == 4.875 < wide.high and mean([1.0, 9.0, 4.0, 7.0, 2.0, 8.0, 5.0, 3.0]) == wide


def test_paired_difference_interval_and_permutation_p_value() -> None:
    # b beats a on all 5 questions: of the 2^5 equally likely swaps only "none" and "all" reach |mean| = 1,
    # so the exact two-sided p-value is 2/32.
    sweep = paired_difference([0, 0, 0, 0, 0], [1, 1, 1, 1, 1])
    assert (sweep.difference, sweep.low, sweep.high, sweep.n) == (1.0, 1.0, 1.0, 5)
    # Five questions cannot reach p < 0.05 however they fall, so it is not called significant, though the
    # bootstrap interval (every resample's mean is 1) excludes 0.
    assert sweep.p_value == pytest.approx(2 / 32) and not sweep.significant
    six = paired_difference([0] * 6, [1] * 6)
    assert six.p_value == pytest.approx(2 / 64) and six.significant
    # Differences +1, -1, 0, 0: the mean is 0 and every sign assignment is at least as extreme: p = 1.
    tie = paired_difference([0, 1, 1, 0], [1, 0, 1, 0])
    assert tie.difference == 0.0 and tie.p_value == pytest.approx(1.0) and not tie.significant
    assert tie.low < 0 < tie.high
    # Differences [1, 0]: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: interval [0, 1].
    half = paired_difference([0, 0], [1, 0])
    assert (half.low, half.high) == (0.0, 1.0) and not half.significant
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1, 2], [1])
    assert paired_difference([], []).n == 0 and paired_difference([1], [2]).p_value is None


def _scored(query_id: str, correct: bool, quality: float, tokens: int) -> dict:
    return {"query_id": query_id, "correct": correct, "format_ok": True, "quality": quality, "tool_calls": 1,
            "tool_errors": 0, "completion_tokens": tokens}  # fmt: skip


def test_evaluation_rows_per_subset_and_paired_comparisons() -> None:
    queries = {f"q{i}": {"query_id": f"q{i}", "task": "math" if i < 4 else "qa",
                         "metadata": json.dumps({"difficulty": 1 + i % 2})} for i in range(6)}  # fmt: skip
    scored = {
        "a": [_scored(f"q{i}", i < 2, 0.5, 100) for i in range(6)],
        "b": [_scored(f"q{i}", True, 0.9, 60) for i in range(5)],  # q5 errored
    }
    results, comparisons = evaluation_rows("bench", queries, scored, {"a": [], "b": ["q5"]}, {"a": "A", "b": "B"},
                                           "difficulty")  # fmt: skip
    value = {(row["subset"], row["model_id"], row["metric"]): row for row in results}
    assert {row["subset"] for row in results} == {"all", "task=math", "task=qa", "difficulty=1", "difficulty=2"}
    accuracy_b = value["all", "b", "accuracy"]
    assert accuracy_b["value"] == 5 / 6 and accuracy_b["n_examples"] == 6 and accuracy_b["label"] == "B"
    assert (accuracy_b["ci_low"], accuracy_b["ci_high"]) == pytest.approx(_wilson(5, 6))
    assert value["all", "b", "generation_errors"]["value"] == 1.0
    assert value["all", "b", "mean_tokens"]["value"] == 60 and value["task=qa", "a", "accuracy"]["value"] == 0.0
    compared = {(row["subset"], row["metric"]): row for row in comparisons}
    accuracy = compared["all", "accuracy"]
    # The errored q5 counts as wrong for b: per question b − a is 0, 0, 1, 1, 1, 0.
    assert (accuracy["model_a"], accuracy["model_b"], accuracy["n"]) == ("a", "b", 6)
    assert accuracy["difference"] == pytest.approx(3 / 6)
    tokens = compared["all", "mean_tokens"]  # only questions both answered: 5
    assert tokens["n"] == 5 and tokens["difference"] == -40 and not tokens["significant"]
    assert tokens["p_value"] == pytest.approx(2 / 32)
    assert model_metrics([], 3)["accuracy"].value == 0.0  # all errored: nothing correct
