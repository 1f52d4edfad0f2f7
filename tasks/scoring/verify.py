"""Answer verification: math by math-verify, open QA by normalized exact match and token F1.

The graded answer is the last \\boxed{} of the response (the usual convention of math evaluation);
for open QA without a box, the text of the <answer> block. Verifying one trajectory never raises: a
parser failure becomes a verdict with outcome 0 and the reason in `error`.
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tasks.core.tir import extract_boxed

YES_NO = frozenset({"yes", "no"})
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
# A trailing unit: words after a number ("12 apples", "0.5 meters", "5 km/h"), or a percent/degree sign.
_TRAILING_UNIT = re.compile(r"^(.*?\d)\s*(?:[A-Za-z][A-Za-z/^. ]*|\\%|%|\^\\circ|°)$")
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_LEAD = re.compile(r"^\s*(?:the\s+)?final\s+answer\s+is\s*:?", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """How well one response answers: outcome in [0, 1], correct at the threshold, what was graded."""

    outcome: float
    correct: bool
    extracted: str | None
    error: str | None = None


def _no_timeout(name: str) -> dict[str, Any]:
    # math-verify times out with SIGALRM, which only the main thread may set: elsewhere, turn it off.
    return {} if threading.current_thread() is threading.main_thread() else {name: None}


@lru_cache(maxsize=65536)
def _parse_math(text: str) -> tuple:
    from math_verify import parse

    return tuple(parse(text, **_no_timeout("parsing_timeout")))


def math_candidates(boxed: str) -> list[str]:
    """The boxed text, then forms without \\text{} wrappers and without a trailing unit."""
    candidates = [boxed]
    plain = _TEXT_COMMAND.sub(r"\1", boxed).strip()
    unitless = _TRAILING_UNIT.match(plain)
    for form in (plain, unitless.group(1) if unitless else None):
        if form and form not in candidates:
            candidates.append(form)
    return candidates


def verify_math(boxed: str, golds: Sequence[str]) -> bool:
    """Whether the boxed answer equals any gold (fractions, decimals, LaTeX, sets and tuples)."""
    from math_verify import verify

    timeout = _no_timeout("timeout_seconds")
    gold_parses = [parsed for gold in golds if (parsed := _parse_math(f"${gold}$"))]
    for candidate in math_candidates(boxed):
        predicted = _parse_math(f"$\\boxed{{{candidate}}}$")
        if predicted and any(verify(list(gold), list(predicted), **timeout) for gold in gold_parses):
            return True
    return False


def normalize_text(text: str) -> str:
    """SQuAD normalization: lower-case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 of normalized texts; a yes/no answer on either side must match exactly."""
    predicted, expected = normalize_text(prediction), normalize_text(gold)
    if predicted in YES_NO or expected in YES_NO:
        return float(predicted == expected)
    common = Counter(predicted.split()) & Counter(expected.split())
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted.split()), overlap / len(expected.split())
    return 2 * precision * recall / (precision + recall)


def qa_outcome(prediction: str, golds: Sequence[str]) -> float:
    """1 for a normalized exact match with any gold, else the best token F1."""
    if any(normalize_text(prediction) == normalize_text(gold) for gold in golds):
        return 1.0
    return max((token_f1(prediction, gold) for gold in golds), default=0.0)


def extract_answer(response: str) -> str | None:
    """The graded answer: the last \\boxed{}, else the text of the last <answer> block."""
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed
    blocks = _ANSWER_BLOCK.findall(response)
    return _ANSWER_LEAD.sub("", blocks[-1]).strip() or None if blocks else None


def verify_answer(response: str, golds: Sequence[str], task: str, threshold: float = 1.0) -> Verdict:
    """Grade one response against its gold answers; never raises."""
    extracted = extract_answer(response) if task == "qa" else extract_boxed(response)
    if extracted is None:
        return Verdict(0.0, False, None)
    try:
        if task == "math":
            outcome = float(verify_math(extracted, golds))
        elif task == "qa":
            outcome = qa_outcome(_TEXT_COMMAND.sub(r"\1", extracted), golds)
        else:
            raise ValueError(f"unknown task {task!r}; expected math or qa")
    except Exception as error:  # a verifier bug or parser failure costs this trajectory only
        return Verdict(0.0, False, extracted, f"{type(error).__name__}: {error}")
    return Verdict(outcome, outcome >= threshold, extracted)
