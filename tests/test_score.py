"""Answer verification, the quality scores against their formulas, and the labeling rule at its edges."""

from __future__ import annotations

import math

import pytest

from schemas.config import ScoreConfig
from tasks.scoring import verify
from tasks.scoring.quality import (
    confidence,
    label_query,
    length_score,
    quality,
    repetition_score,
    score_rows,
    tool_stats,
)
from tasks.scoring.verify import qa_outcome, token_f1, verify_answer


@pytest.mark.parametrize(
    ("response", "golds"),
    [
        ("The final answer is \\boxed{0.5}", ["\\frac{1}{2}"]),
        ("\\boxed{\\frac{2}{4}}", ["0.5"]),
        ("\\boxed{1/2}", ["0.5"]),
        ("\\boxed{\\dfrac{3}{4}}", ["0.75"]),
        ("\\boxed{\\text{0.5 meters}}", ["1/2"]),
        ("\\boxed{12 apples}", ["12"]),
        ("\\boxed{50\\%}", ["50"]),
        ("\\boxed{10,466}", ["10466"]),
        ("\\boxed{\\{1,2\\}}", ["\\{2,1\\}"]),
        ("\\boxed{(1, 2)}", ["(1,2)"]),
        ("\\boxed{x^2+2x+1}", ["(x+1)^2"]),
        ("\\boxed{\\sqrt{2}/2}", ["\\frac{\\sqrt{2}}{2}"]),
        ("first \\boxed{3}, finally \\boxed{0.5}", ["0.5"]),  # the last box is graded
        ("\\boxed{7}", ["8", "7"]),  # any gold of the list
    ],
)
def test_equivalent_math_answers_are_correct(response: str, golds: list[str]) -> None:
    verdict = verify_answer(response, golds, "math")
    assert verdict.correct and verdict.outcome == 1.0 and verdict.error is None


@pytest.mark.parametrize(
    ("response", "golds"),
    [
        ("\\boxed{0.6}", ["\\frac{1}{2}"]),
        ("\\boxed{(2, 1)}", ["(1,2)"]),  # tuples are ordered
        ("first \\boxed{0.5}, finally \\boxed{3}", ["0.5"]),
        ("no box: 0.5", ["0.5"]),
        ("\\boxed{}", ["1"]),
        ("\\boxed{10467}", ["10466"]),
    ],
)
def test_different_math_answers_are_wrong(response: str, golds: list[str]) -> None:
    verdict = verify_answer(response, golds, "math")
    assert not verdict.correct and verdict.outcome == 0.0


def test_a_parser_failure_is_an_error_value_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_boxed: str, _golds: list[str]) -> bool:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(verify, "verify_math", broken)
    verdict = verify_answer("\\boxed{1}", ["1"], "math")
    assert (verdict.correct, verdict.outcome, verdict.extracted) == (False, 0.0, "1")
    assert verdict.error == "RecursionError: maximum recursion depth exceeded"
    assert verify_answer("\\boxed{1}", ["1"], "chemistry").error.startswith("ValueError: unknown task")


def test_open_qa_uses_normalized_exact_match_and_token_f1() -> None:
    assert qa_outcome("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert qa_outcome("Barack Obama", ["Obama", "President Obama"]) == pytest.approx(2 / 3)  # best gold
    assert token_f1("the big red house", "red house") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("yes it is", "yes") == 0.0  # yes/no answers must match exactly
    assert token_f1("Yes.", "yes") == 1.0
    assert token_f1("no", "yes") == 0.0
    verdict = verify_answer("<answer> The final answer is Paris </answer>", ["paris"], "qa")
    assert verdict.correct and verdict.extracted == "Paris"
    partial = verify_answer("\\boxed{Barack Obama}", ["Obama"], "qa", threshold=0.5)
    assert partial.correct and partial.outcome == pytest.approx(2 / 3)
    assert not verify_answer("\\boxed{Barack Obama}", ["Obama"], "qa").correct  # default threshold 1.0


CONFIG = ScoreConfig()


def test_confidence_looks_for_whole_hedging_words_inside_think_only() -> None:
    assert confidence("<think> Maybe add them. </think><answer>\\boxed{1}</answer>", CONFIG.hedging_words) == 0.0
    assert confidence("<think> Add them. </think> maybe <answer>\\boxed{1}</answer>", CONFIG.hedging_words) == 1.0
    assert confidence("<think> The guesswork is over. </think>", CONFIG.hedging_words) == 1.0
    assert confidence("<think> a </think><think> PROBABLY b </think>", CONFIG.hedging_words) == 0.0


def test_length_score_is_the_gaussian_around_the_ideal_length() -> None:
    assert length_score(10, 10) == 1.0
    assert length_score(15, 10) == pytest.approx(math.exp(-25 / (2 * 5**2)))
    assert length_score(30, 10) == pytest.approx(math.exp(-400 / 50))


def test_repetition_counts_repeated_trigrams_with_multiplicity() -> None:
    # trigrams: (a b c) (b c a) (c a b) (a b c): one trigram twice -> 2 of 4 repeated.
    assert repetition_score("a b c a b c") == pytest.approx(0.5)
    assert repetition_score("one two three four five six") == 1.0
    assert repetition_score("a a a a a") == 1.0  # under 6 words
    assert repetition_score("x x x x x x x x") == 0.0  # every trigram repeated: clipped at 0


def test_quality_is_the_weighted_sum() -> None:
    assert quality(1.0, 0.5, 0.5, CONFIG) == pytest.approx(0.4 + 0.15 + 0.15)
    assert quality(0.0, 1.0, 1.0, CONFIG) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("qualities", "expected"),
    [
        ([0.90, 0.95], ["high_quality", "high_quality"]),  # all at or above 0.90
        ([0.86, 0.70], ["high_quality", "correct_low_quality"]),  # best exactly 0.86
        ([0.8599, 0.70], ["correct_low_quality", "correct_low_quality"]),
        ([0.70, 0.89, 0.89], ["correct_low_quality", "high_quality", "correct_low_quality"]),  # first best wins
    ],
)
def test_labeling_rule_at_its_thresholds(qualities: list[float], expected: list[str]) -> None:
    assert label_query([True] * len(qualities), qualities, CONFIG) == expected


def test_wrong_candidates_stay_wrong_and_do_not_count_for_the_rule() -> None:
    assert label_query([False, True], [0.99, 0.91], CONFIG) == ["wrong", "high_quality"]
    assert label_query([False, False], [0.99, 0.99], CONFIG) == ["wrong", "wrong"]


def _segments(*parts: tuple[str, str]) -> list[dict]:
    return [{"kind": kind, "tool": "python" if kind == "tool" else None, "text": text} for kind, text in parts]


def test_tool_stats_count_errors_and_repeated_calls() -> None:
    code = "<think> x </think>\n<code>\nprint(1/0)\n</code>"
    segments = _segments(
        ("model", code),
        ("tool", "\n<result>\nTraceback...\nZeroDivisionError: division by zero\n</result>\n"),
        ("model", "<think> again </think>\n<code>\nprint(1/0)\n</code>"),
        ("tool", "\n<result>\nZeroDivisionError: division by zero\n</result>\n"),
        ("model", "<code>\nprint(2)\n</code>"),
        ("tool", "\n<result>\n2\n</result>\n"),
    )
    assert tool_stats(segments) == (3, 2, 1)


def test_score_rows_uses_the_shortest_correct_candidate_as_ideal_length() -> None:
    def rollout(trajectory_id: str, think: str, answer: str) -> dict:
        text = f"<think> {think} </think>\n<answer> The final answer is \\boxed{{{answer}}} </answer>"
        return {
            "trajectory_id": trajectory_id,
            "query_id": "q",
            "response": text,
            "segments": _segments(("model", text)),
        }

    rows = score_rows(
        [
            rollout("short-wrong", "no", "5"),
            rollout("clean", "add the two numbers then subtract one", "7"),
            rollout("hedging", "maybe add the two numbers then subtract one", "7"),
            rollout("invalid", "add", "7") | {"response": "<think> add <answer> \\boxed{7} </answer>"},
        ],
        {"q": {"answers": ["7"], "task": "math"}},
        CONFIG,
    )
    by_id = {row["trajectory_id"]: row for row in rows}
    assert by_id["clean"]["length_score"] == 1.0  # the shortest correct one, not the short wrong guess
    assert by_id["clean"]["quality"] == pytest.approx(1.0) and by_id["clean"]["label"] == "high_quality"
    hedging = by_id["hedging"]
    n, ideal = hedging["n_words"], by_id["clean"]["n_words"]
    expected_l = math.exp(-((n - ideal) ** 2) / (2 * (0.5 * ideal) ** 2))
    assert hedging["confidence"] == 0.0 and hedging["length_score"] == pytest.approx(expected_l)
    assert hedging["quality"] == pytest.approx(0.3 * expected_l + 0.3) and hedging["label"] == "correct_low_quality"
    assert by_id["short-wrong"]["label"] == "wrong" and not by_id["short-wrong"]["correct"]
    invalid = by_id["invalid"]
    assert (
        invalid["label"] == "wrong" and not invalid["format_ok"] and invalid["format_reason"] == "unpaired <think> tags"
    )
