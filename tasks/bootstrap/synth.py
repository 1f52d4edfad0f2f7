"""The synthetic tool-use task: arithmetic word problems whose answers need the Python tool.

Each problem is multi-step with large numbers, so a model that skips the tool usually gets it wrong.
The same module renders TIR trajectories for a problem in the styles a real teacher shows (clean,
hedging, verbose and repetitive, skipping the tool and guessing), which `bootstrap` trains the tiny
teacher and repairer on. Rendering goes through the engine's own segment format, so a trained model
writes exactly what the engine expects and gets back exactly what the engine appends.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from tasks.core.tir import tool_segment_text

NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mateo", "Nia")


@dataclass(frozen=True)
class Template:
    """One problem shape: question text, the formula over its numbers (it sets `answer`), the plan in words."""

    question: str
    formula: str
    plan: str
    ranges: dict[str, tuple[int, int]]
    steps: int  # arithmetic operations the answer takes: the problem's difficulty stratum


TEMPLATES = (
    Template(
        "A warehouse has {a} crates with {b} bottles in each crate. {c} bottles are broken. "
        "How many bottles are not broken?",
        "answer = a * b - c",
        "Multiply the crates by the bottles per crate, then subtract the broken bottles.",
        {"a": (120, 9999), "b": (12, 99), "c": (10, 999)},
        2,
    ),
    Template(
        "{name} saves {a} dollars every month for {b} months, then spends {c} dollars on a bike. "
        "How many dollars does {name} have left?",
        "answer = a * b - c",
        "Multiply the monthly savings by the months, then subtract the cost of the bike.",
        {"a": (150, 4999), "b": (12, 60), "c": (100, 999)},
        2,
    ),
    Template(
        "A school orders {a} packs of pencils with {b} pencils per pack and {c} packs of pens with {d} pens "
        "per pack. How many items does the school order in total?",
        "answer = a * b + c * d",
        "Multiply packs by pencils, multiply packs by pens, then add the two products.",
        {"a": (100, 999), "b": (12, 99), "c": (100, 999), "d": (12, 99)},
        3,
    ),
    Template(
        "A farm collects {a} eggs on Monday and {b} eggs on Tuesday. The eggs are packed into cartons of {c}. "
        "How many full cartons can be packed?",
        "eggs = a + b\nanswer = eggs // c",
        "Add the eggs of both days, then divide by the carton size and keep whole cartons.",
        {"a": (1000, 99999), "b": (1000, 99999), "c": (6, 48)},
        2,
    ),
    Template(
        "A train travels at {a} kilometers per hour for {b} hours and then at {c} kilometers per hour for "
        "{d} hours. How many kilometers does it travel?",
        "answer = a * b + c * d",
        "Multiply each speed by its hours, then add the two distances.",
        {"a": (60, 320), "b": (12, 99), "c": (60, 320), "d": (12, 99)},
        3,
    ),
    Template(
        "A library has {a} books. It buys {b} boxes of {c} books each and gives away {d} books. "
        "How many books does it have now?",
        "answer = a + b * c - d",
        "Multiply the boxes by the books per box, add the books it had, then subtract those given away.",
        {"a": (1000, 99999), "b": (12, 99), "c": (12, 99), "d": (100, 999)},
        3,
    ),
)


@dataclass(frozen=True)
class Problem:
    """One generated question with its gold answer."""

    id: str
    question: str
    code: str
    plan: str
    answer: int
    difficulty: int = 1  # the template's arithmetic steps
    task: str = "math"  # verified by math equivalence


def make_problem(rng: random.Random, index: int, prefix: str = "arith") -> Problem:
    """Draw one problem (positive integer answer) from a random template."""
    template = rng.choice(TEMPLATES)
    while True:
        values = {key: rng.randint(low, high) for key, (low, high) in template.ranges.items()}
        question = template.question.format(name=rng.choice(NAMES), **values)
        # The code quotes the question and parses its numbers: copying a contiguous span is what a
        # tiny model learns fast, where picking the k-th number out of a sentence is not.
        code = (
            f'import re\nquestion = "{question}"\n'
            f'{", ".join(values)} = [int(n) for n in re.findall(r"\\d+", question)]\n{template.formula}'
        )
        scope: dict[str, int] = {}
        exec(code, scope)  # our own template with our own integers
        answer = scope["answer"]
        if answer > 0:
            break
    return Problem(
        id=f"{prefix}-{index:06d}",
        question=question,
        code=code,
        plan=template.plan.format(**values),
        answer=answer,
        difficulty=template.steps,
    )


def generate(n: int, seed: int, prefix: str = "arith") -> list[Problem]:
    """n problems, reproducible from the seed."""
    rng = random.Random(seed)
    return [make_problem(rng, index, prefix) for index in range(n)]


# -- trajectories in the TIR grammar ---------------------------------------------------------------

STYLES = ("clean", "hedging", "verbose", "redundant", "skip_tool", "miscopied")
WRONG_STYLES = ("skip_tool", "miscopied")  # the styles whose answer is wrong


def wrong_guess(rng: random.Random, answer: int) -> int:
    """What a model that does the arithmetic 'in its head' writes: close-looking, but wrong."""
    digits = list(str(answer))
    position = rng.randrange(len(digits))
    digits[position] = str((int(digits[position]) + rng.randint(1, 9)) % 10)
    guess = int("".join(digits).lstrip("0") or "1")
    return guess if guess != answer else answer + rng.randint(1, 99)


def miscopy(problem: Problem, rng: random.Random) -> Problem:
    """The problem as a model that copied one number of the question wrongly into its code sees it."""
    start = problem.code.index('question = "')
    head, quoted = problem.code[:start], problem.code[start:]
    while True:
        target = rng.choice(re.findall(r"\d+", problem.question))
        code = head + quoted.replace(target, str(wrong_guess(rng, int(target))), 1)
        scope: dict[str, int] = {}
        exec(code, scope)  # our own template with our own integers
        if scope["answer"] != problem.answer:
            return replace(problem, code=code, answer=scope["answer"])


def render(problem: Problem, style: str, rng: random.Random) -> list[tuple[str, str]]:
    """A trajectory as segments: ("model", text) and ("python", tool text), in the engine's format.

    Styles: clean, hedging, verbose (repetitive thinking), redundant (runs the same code twice),
    skip_tool (guesses a wrong number), miscopied (clean, but one number copied wrongly into the code,
    so the answer is wrong).
    """
    if style == "miscopied":
        return render(miscopy(problem, rng), "clean", rng)
    value = problem.answer
    code = f"<code>\n{problem.code}\nprint(answer)\n</code>"
    tool = ("python", tool_segment_text(f"{value}\n"))
    final = f"<answer> The final answer is \\boxed{{{value}}} </answer>"
    if style == "clean":
        return [
            ("model", f"<think> {problem.plan} I will compute it with Python. </think>\n{code}"),
            tool,
            ("model", f"<think> The code printed the answer. </think>\n{final}"),
        ]
    if style == "hedging":
        return [
            ("model", f"<think> Maybe I should {problem.plan.lower()} I am unsure, I might check. </think>\n{code}"),
            tool,
            ("model", f"<think> It seems right, probably. </think>\n{final}"),
        ]  # fmt: skip
    if style == "verbose":
        repeated = " ".join([problem.plan] * rng.randint(2, 3))
        return [
            ("model", f"<think> {repeated} Let me compute it. Let me compute it. </think>\n{code}"),
            tool,
            ("model", f"<think> The code printed the answer. The code printed the answer. </think>\n{final}"),
        ]  # fmt: skip
    if style == "redundant":
        return [
            ("model", f"<think> {problem.plan} I will compute it with Python. </think>\n{code}"),
            tool,
            ("model", f"<think> Let me run it again to be sure. </think>\n{code}"),
            tool,
            ("model", f"<think> The code printed the answer. </think>\n{final}"),
        ]
    if style == "skip_tool":
        guess = wrong_guess(rng, value)
        return [
            ("model", f"<think> {problem.plan} I can do this in my head. </think>\n"
             f"<answer> The final answer is \\boxed{{{guess}}} </answer>"),
        ]  # fmt: skip
    raise ValueError(f"unknown trajectory style {style!r}; choose from {STYLES}")


def trajectory_text(segments: list[tuple[str, str]]) -> str:
    """The response text of rendered segments, as the engine would store it."""
    return "".join(text for _, text in segments)
