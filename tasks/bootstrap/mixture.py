"""The synthetic tasks of the embedded default, one entry point: arithmetic (Python), facts (search), both.

`generate` draws a dataset, `render` writes a trajectory in any style for either kind of problem, and
`write_jsonl` writes questions in the import format; the bootstrap trains on `training_problem`s.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from tasks.bootstrap import facts, synth

TASKS = {
    "arith": "arithmetic word problems that need Python",
    "facts": "questions about fictional towns that need search (and Python for two towns)",
    "tir": "both, mixed",
}
SEARCH_SHARE = 0.4  # of the tir mixture, and of the bootstrap's training problems
STYLES = synth.STYLES
WRONG_STYLES = synth.WRONG_STYLES
Problem = synth.Problem | facts.FactProblem


def needs_world(task: str) -> bool:
    """Whether the task's questions are answered by searching the generated world."""
    return task in ("facts", "tir")


def generate(task: str, n: int, seed: int, world: Sequence[facts.Town] | None = None) -> list[Problem]:
    """n problems of the task, reproducible from the seed (facts over `world`, by default the standard one)."""
    if task == "arith":
        return list(synth.generate(n, seed))
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; available: {', '.join(TASKS)}")
    towns = list(world or facts.make_world())
    rng = random.Random(seed)
    problems: list[Problem] = []
    asked: set[str] = set()
    while len(problems) < n:  # each question once: a world's lookups are few enough to be drawn twice
        index = len(problems)
        if task == "facts" or rng.random() < SEARCH_SHARE:
            problem: Problem = facts.make_problem(rng, index, "facts", towns)
        else:
            problem = synth.make_problem(rng, index, "arith")
        if problem.question not in asked:
            asked.add(problem.question)
            problems.append(problem)
    return problems


def training_problem(rng: random.Random) -> Problem:
    """A fresh problem for the bootstrap's training stream (facts over freshly invented towns)."""
    if rng.random() < SEARCH_SHARE:
        return facts.make_problem(rng, 0, "train")
    return synth.make_problem(rng, 0, "train")


def render(problem: Problem, style: str, rng: random.Random) -> list[tuple[str, str]]:
    """A trajectory of the problem in one of STYLES, as the engine's segments."""
    if isinstance(problem, facts.FactProblem):
        return facts.render(problem, style, rng, synth.wrong_guess)
    return synth.render(problem, style, rng)


def write_jsonl(problems: Sequence[Problem], path: Path) -> Path:
    """Write problems in the import format: {id, question, answer, task, difficulty} (difficulty lands in the
    queries' metadata, where evaluation reads its strata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for problem in problems:
            row = {"id": problem.id, "question": problem.question, "answer": str(problem.answer), "task": problem.task,
                   "difficulty": problem.difficulty}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path
