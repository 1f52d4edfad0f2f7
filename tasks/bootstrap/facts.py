"""The synthetic search task: questions about fictional towns whose facts only a search finds.

A *world* is a set of invented towns, each with a number of residents and a founding year, written
as one passage per town into a JSONL corpus the project's own search tool (bm25s) indexes. A question
names one or two towns and asks for a fact, or for the sum or difference of two facts: the answer is
in no question and in no model's weights, so a model must search (each town's name is a word only
its own passage holds, so searching the name finds exactly that passage) and, for two towns, compute.

Trajectories are rendered in the styles a real teacher shows (clean, hedging, verbose, redundant
searches, guessing without searching, a number copied wrongly from a result), through the engine's own
segment and search-result format, so a trained model reads exactly what the engine appends.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from schemas.config import PipelineConfig
from tasks.core.tir import tool_segment_text
from tools_sandbox.results import format_result
from tools_sandbox.search import Passage

SYLLABLES = (
    "bar", "del", "fen", "gor", "hal", "ith", "jun", "kel", "lom", "mar", "nor", "ost",
    "pel", "quin", "ras", "sol", "tam", "vek", "wen", "yar", "zor", "dun", "esk", "grim",
)  # fmt: skip
# Every town name, world or training, is one of these two-syllable words: the tokenizer learns them as
# tokens and the models read and copy them often. What a name never carries is its facts: each training
# example gives its towns fresh random facts, so the world's facts are in no model's weights.
NAMES = tuple(f"{first.capitalize()}{second}" for first in SYLLABLES for second in SYLLABLES if first != second)
REGIONS = ("northern", "southern", "eastern", "western", "coastal", "mountain", "river", "desert")
WORLD_SEED = 0
Guess = Callable[[random.Random, int], int]  # a plausible wrong number near the right one
WORLD_TOWNS = 500


@dataclass(frozen=True)
class Town:
    """One fictional town and its facts."""

    name: str
    region: str
    residents: int
    founded: int

    def passage(self) -> dict[str, str]:
        """The town's corpus row: {id, title, contents}."""
        contents = f"{self.name} is a town in the {self.region} region. {self.fact('residents')} {self.fact('founded')}"
        return {"id": f"town-{self.name.lower()}", "title": self.name, "contents": contents}

    def fact(self, attribute: str) -> str:
        """The sentence stating one attribute, as the passage writes it and a clean model copies it."""
        if attribute == "residents":
            return f"{self.name} has {self.residents} residents."
        return f"{self.name} was founded in {self.founded}."

    def value(self, attribute: str) -> int:
        """The number one attribute holds."""
        return self.residents if attribute == "residents" else self.founded


def _town(rng: random.Random, name: str) -> Town:
    return Town(name, rng.choice(REGIONS), rng.randint(1000, 99999), rng.randint(1100, 1990))


def make_world(n: int = WORLD_TOWNS, seed: int = WORLD_SEED) -> list[Town]:
    """n towns with distinct names and their facts, reproducible from the seed."""
    rng = random.Random(seed)
    return [_town(rng, name) for name in rng.sample(NAMES, n)]


def write_corpus(world: list[Town], path: Path) -> Path:
    """The world as a search corpus (JSONL of {id, title, contents}); written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as handle:
        for town in world:
            handle.write(json.dumps(town.passage()) + "\n")
    partial.replace(path)
    return path


def vocabulary_text() -> list[str]:
    """The task's wording and its town names, without numbers, for the tokenizer: numbers then split as
    the arithmetic task taught, and each name becomes one token the models copy as easily as a word."""
    town = Town("", "", 0, 0)
    phrases = [shape.question.format(a="", b="") for shape in SHAPES] + [
        shape.plan.format(a="", b="") for shape in SHAPES
    ]
    phrases += [town.passage()["contents"], "I will search for", "Let me search for it again.", "I think I know it."]
    phrases += [f"the {region} region." for region in REGIONS]
    return phrases + [f"{name} {name}" for name in NAMES]  # with and without a space before


def corpus_path(data_dir: str | Path) -> Path:
    """Where the standard world's corpus lives in a data directory."""
    return Path(data_dir) / "synth" / f"towns-s{WORLD_SEED}-n{WORLD_TOWNS}.jsonl"


def ensure_corpus(data_dir: str | Path) -> Path:
    """The standard world's corpus in the data directory, written once (its search index keys on the file)."""
    path = corpus_path(data_dir)
    return path if path.exists() else write_corpus(make_world(), path)


def with_world_corpus(config: PipelineConfig) -> PipelineConfig:
    """The config with the local search tool over the standard world's corpus."""
    search = config.tools.search.model_copy(
        update={"backend": "local", "corpus": str(ensure_corpus(config.runtime.data_dir))}
    )
    return config.model_copy(update={"tools": config.tools.model_copy(update={"search": search})})


def search_result(town: Town) -> str:
    """What the engine appends after `<search> NAME </search>`: the search tool's format for its one hit."""
    passage = Passage(score=1.0, **town.passage())
    return tool_segment_text(format_result([passage], max_chars=10_000))


@dataclass(frozen=True)
class Shape:
    """One question shape over one or two towns."""

    question: str
    attribute: str
    operation: str  # "lookup", "+" or "-"
    plan: str


SHAPES = (
    Shape("How many residents does {a} have?", "residents", "lookup", "I need the number of residents of {a}."),
    Shape("In which year was {a} founded?", "founded", "lookup", "I need the year {a} was founded."),
    Shape("How many residents do {a} and {b} have together?", "residents", "+",
          "I need the residents of {a} and of {b}, then their sum."),
    Shape("How many more residents does {a} have than {b}?", "residents", "-",
          "I need the residents of {a} and of {b}, then their difference."),
    Shape("How many years after {b} was {a} founded?", "founded", "-",
          "I need the years {a} and {b} were founded, then their difference."),
)  # fmt: skip


@dataclass(frozen=True)
class FactProblem:
    """One generated search question with its gold answer; `seen` is what the model copied from results."""

    id: str
    question: str
    towns: tuple[Town, ...]
    shape: Shape
    answer: int
    seen: tuple[int, ...]  # the values the trajectory writes down (a miscopy changes one)
    difficulty: int  # 1: one search; 3: two searches and an operation
    task: str = "qa"  # a question the search tool must answer: verified by exact match

    @property
    def plan(self) -> str:
        """The first thought: what must be found."""
        names = {"a": self.towns[0].name, "b": self.towns[-1].name}
        return self.shape.plan.format(**names)


def _answer(shape: Shape, values: tuple[int, ...]) -> int:
    if shape.operation == "lookup":
        return values[0]
    return values[0] + values[1] if shape.operation == "+" else values[0] - values[1]


def make_problem(rng: random.Random, index: int, prefix: str = "facts", world: list[Town] | None = None) -> FactProblem:
    """One question over towns of the world (or fresh random towns when there is none, for training)."""
    shape = rng.choice(SHAPES)
    count = 1 if shape.operation == "lookup" else 2
    while True:
        towns = (
            tuple(rng.sample(world, count)) if world else tuple(_town(rng, name) for name in rng.sample(NAMES, count))
        )
        if count == 2 and shape.operation == "-":  # a positive difference: the larger first
            towns = tuple(sorted(towns, key=lambda town: town.value(shape.attribute), reverse=True))
        values = tuple(town.value(shape.attribute) for town in towns)
        if len({town.name for town in towns}) == count and _answer(shape, values) > 0:
            break
    names = {"a": towns[0].name, "b": towns[-1].name}
    return FactProblem(
        id=f"{prefix}-{index:06d}",
        question=shape.question.format(**names),
        towns=towns,
        shape=shape,
        answer=_answer(shape, values),
        seen=values,
        difficulty=1 if count == 1 else 3,
    )


def miscopy(problem: FactProblem, rng: random.Random, wrong_guess: Guess) -> FactProblem:
    """The problem as a model that copied one found number wrongly sees it (its answer follows)."""
    position = rng.randrange(len(problem.seen))
    seen = list(problem.seen)
    while True:
        seen[position] = wrong_guess(rng, problem.seen[position])
        answer = _answer(problem.shape, tuple(seen))
        if answer != problem.answer and answer > 0:
            return replace(problem, seen=tuple(seen), answer=answer)


def _written_fact(town: Town, attribute: str, value: int) -> str:
    return replace(town, residents=value, founded=value).fact(attribute)


def render(problem: FactProblem, style: str, rng: random.Random, wrong_guess: Guess) -> list[tuple[str, str]]:
    """A trajectory as segments ("model", text) / ("search" or "python", tool text), in the engine's format.

    `wrong_guess(rng, value)` is the arithmetic task's plausible wrong number (shared, so both tasks
    guess alike).
    """
    if style == "miscopied":
        return render(miscopy(problem, rng, wrong_guess), "clean", rng, wrong_guess)
    final = f"<answer> The final answer is \\boxed{{{problem.answer}}} </answer>"
    if style == "skip_tool":
        guess = wrong_guess(rng, problem.answer)
        return [("model", f"<think> {problem.plan} I think I know it. </think>\n"
                 f"<answer> The final answer is \\boxed{{{guess}}} </answer>")]  # fmt: skip
    opening = {
        "clean": problem.plan,
        "hedging": f"Maybe {problem.plan} I am unsure, I might check.",
        "verbose": " ".join([problem.plan] * rng.randint(2, 3)),
        "redundant": problem.plan,
    }[style]
    if style == "redundant" and len(problem.towns) == 2:
        style = "verbose"  # a repeated search would leave no call of the budget (3) for the arithmetic
    attribute = problem.shape.attribute
    facts = [_written_fact(town, attribute, value) for town, value in zip(problem.towns, problem.seen, strict=True)]
    segments: list[tuple[str, str]] = []
    thought = opening
    for town, fact in zip(problem.towns, facts, strict=True):
        searches = 2 if style == "redundant" else 1
        for repeat in range(searches):
            lead = "Let me search for it again." if repeat else f"I will search for {town.name}."
            segments += [("model", f"<think> {thought} {lead} </think>\n<search> {town.name} </search>"),
                         ("search", search_result(town))]  # fmt: skip
            thought = fact
    closing = {"hedging": "It seems right, probably.", "verbose": "That is the answer. That is the answer."}
    if len(problem.towns) == 1:
        return [*segments, ("model", f"<think> {thought} {closing.get(style, '')}".rstrip() + f" </think>\n{final}")]
    operator = problem.shape.operation
    code = (
        f'import re\nfacts = "{" ".join(facts)}"\na, b = [int(n) for n in re.findall(r"\\d+", facts)]\n'
        f"answer = a {operator} b\nprint(answer)"
    )
    return [
        *segments,
        ("model", f"<think> {thought} I will compute it with Python. </think>\n<code>\n{code}\n</code>"),
        ("python", tool_segment_text(f"{problem.answer}\n")),
        ("model", f"<think> The code printed the answer. {closing.get(style, '')}".rstrip() + f" </think>\n{final}"),
    ]
