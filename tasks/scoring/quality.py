"""The paper's scores and labels (DESIGN.md §1), shared by the score, repair and evaluate stages.

Per trajectory: correct/outcome (verify.py), format validity with a reason, confidence c (no hedging
word in any <think>), length l = exp(−(n − n*)² / (2σ²)) with σ = 0.5·n*, repetition
e = 1 − repeated word trigrams / all trigrams, quality q = 0.4·c + 0.3·l + 0.3·e, plus tool calls,
tool errors and redundant tool calls (the same code or query twice).

Choices the paper leaves open, made here:
- n counts the words the model wrote (tool results excluded: a long search result is not verbosity);
- n*, the ideal length, is the shortest *correct* candidate of the query (all candidates when none is
  correct): a short wrong guess must not make every correct answer look verbose;
- an invalid format counts as wrong;
- a trajectory whose generation errored is not an answer: it is set aside and counted, never scored.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from schemas.config import ScoreConfig
from tasks.core.tir import TOOL_STOPS, format_problem, parse_tool_call
from tasks.core.trajectory import model_text
from tasks.scoring.verify import verify_answer

LABELS = ("high_quality", "correct_low_quality", "wrong")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_TOOL_ERROR = re.compile(r"^(?:Error|Killed|[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Exceeded)):")


def confidence(response: str, hedging_words: Sequence[str]) -> float:
    """0 when a hedging word (whole word, any case) appears inside a <think> block, else 1."""
    pattern = _hedging_pattern(tuple(hedging_words))
    return 0.0 if any(pattern.search(block) for block in _THINK.findall(response)) else 1.0


@functools.lru_cache(maxsize=8)
def _hedging_pattern(hedging_words: tuple[str, ...]) -> re.Pattern[str]:
    """Compiled once per word list, not once per row."""
    return re.compile(r"\b(?:" + "|".join(map(re.escape, hedging_words)) + r")\b", re.IGNORECASE)


def length_score(n_words: int, ideal: int, sigma_ratio: float = 0.5) -> float:
    """exp(−(n − n*)² / (2σ²)), σ = ratio · n*; 1 at the ideal length."""
    sigma = sigma_ratio * max(ideal, 1)
    return math.exp(-((n_words - ideal) ** 2) / (2 * sigma**2))


def repetition_score(text: str, ngram: int = 3, min_words: int = 6) -> float:
    """1 − (n-grams occurring more than once, with multiplicity) / (all n-grams), clipped at 0."""
    words = text.split()
    if len(words) < min_words:
        return 1.0
    grams = Counter(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    total = sum(grams.values())
    repeated = sum(count for count in grams.values() if count > 1)
    return max(0.0, 1.0 - repeated / total)


def quality(c: float, l: float, e: float, config: ScoreConfig) -> float:  # noqa: E741 (the paper's names)
    """The weighted sum q = w_c·c + w_l·l + w_e·e."""
    weights = config.weights
    return weights.confidence * c + weights.length * l + weights.repetition * e


def own_length_quality(response: str, segments: Sequence[Mapping[str, Any]], config: ScoreConfig) -> float:
    """Quality with the ideal length set to the trajectory's own length (so l = 1): how repairs are judged."""
    written = model_text(segments)
    repetition = repetition_score(written, config.repetition_ngram, config.repetition_min_words)
    return quality(confidence(response, config.hedging_words), 1.0, repetition, config)


def tool_stats(segments: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(tool calls, calls whose result is an error, calls repeating an earlier call's code or query)."""
    calls = errors = redundant = 0
    seen: set[tuple[str, str]] = set()
    for index, segment in enumerate(segments):
        if segment["kind"] != "tool":
            continue
        calls += 1
        lines = segment["text"].strip().removeprefix("<result>").removesuffix("</result>").strip().splitlines()
        errors += bool(lines and _TOOL_ERROR.match(lines[-1]))
        previous = segments[index - 1]["text"] if index else ""
        stop = next((stop for stop in TOOL_STOPS if previous.rstrip().endswith(stop)), None)
        if stop is not None:
            call = parse_tool_call(previous.rstrip(), stop)
            key = (call.tool, call.argument)
            redundant += key in seen
            seen.add(key)
    return calls, errors, redundant


def label_query(correct: Sequence[bool], qualities: Sequence[float], config: ScoreConfig) -> list[str]:
    """The paper's rule over one query's candidates (correct = right answer and valid format)."""
    labels = ["wrong"] * len(correct)
    good = [index for index, ok in enumerate(correct) if ok]
    if not good:
        return labels
    if all(qualities[index] >= config.all_high_quality_threshold for index in good):
        for index in good:
            labels[index] = "high_quality"
        return labels
    best = max(good, key=lambda index: qualities[index])  # first of equals: deterministic
    for index in good:
        labels[index] = "correct_low_quality"
    if qualities[best] >= config.best_high_quality_threshold:
        labels[best] = "high_quality"
    return labels


def errored(row: Mapping[str, Any]) -> bool:
    """Whether a rollouts row's generation failed (it holds no answer to score)."""
    return bool(row.get("error")) or row.get("finish_reason") == "error"


def score_rows(
    rollouts: Sequence[Mapping[str, Any]], queries: Mapping[str, Mapping[str, Any]], config: ScoreConfig
) -> list[dict]:
    """Scores-table rows for rollouts rows, given their queries (by query id); errored rows must be left out."""
    if any(errored(row) for row in rollouts):
        raise ValueError("score_rows got errored trajectories: leave them out (they hold no answer)")
    rows = []
    for rollout in rollouts:
        query = queries[rollout["query_id"]]
        verdict = verify_answer(rollout["response"], query["answers"], query["task"], config.correct_threshold)
        reason = format_problem(rollout["response"])
        written = model_text(rollout["segments"])
        calls, errors, redundant = tool_stats(rollout["segments"])
        rows.append(
            {
                "trajectory_id": rollout["trajectory_id"],
                "query_id": rollout["query_id"],
                "extracted_answer": verdict.extracted,
                "correct": verdict.correct and reason is None,
                "outcome": verdict.outcome,
                "verify_error": verdict.error,
                "format_ok": reason is None,
                "format_reason": reason,
                "confidence": confidence(rollout["response"], config.hedging_words),
                "repetition_score": repetition_score(written, config.repetition_ngram, config.repetition_min_words),
                "n_words": len(written.split()),
                "tool_calls": calls,
                "tool_errors": errors,
                "redundant_tool_calls": redundant,
            }
        )
    by_query: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_query[row["query_id"]].append(row)
    for candidates in by_query.values():
        reference = [row for row in candidates if row["correct"]] or candidates
        ideal = min(row["n_words"] for row in reference)
        for row in candidates:
            row["length_score"] = length_score(row["n_words"], ideal, config.length_sigma_ratio)
            row["quality"] = quality(row["confidence"], row["length_score"], row["repetition_score"], config)
        labels = label_query([row["correct"] for row in candidates], [row["quality"] for row in candidates], config)
        for row, label in zip(candidates, labels, strict=True):
            row["label"] = label
    return rows


def quality_summary(values: Iterable[float]) -> dict[str, float]:
    """Count, mean and quartiles of quality scores (what reports show of a distribution)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 4)

    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 4),
        "p25": at(0.25),
        "p50": at(0.5),
        "p75": at(0.75),
    }


def score_metrics(rows: Sequence[Mapping[str, Any]], generation_errors: int = 0) -> dict[str, Any]:
    """Counts per label, errored generations set aside, format and verifier failures, quality per label."""
    by_label: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row["quality"])
    return {
        "candidates": len(rows),
        "generation_errors": generation_errors,
        **{label: len(by_label[label]) for label in LABELS},
        "format_invalid": sum(not row["format_ok"] for row in rows),
        "verify_errors": sum(row["verify_error"] is not None for row in rows),
        "queries": len({row["query_id"] for row in rows}),
        "quality": {label: quality_summary(by_label[label]) for label in LABELS},
    }
