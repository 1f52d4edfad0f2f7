"""The synthetic arithmetic task and the TIR grammar helpers."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re

import pytest

from tasks.bootstrap import mixture, synth
from tasks.core.tir import extract_boxed, format_problem, parse_tool_call, tool_segment_text


def test_problems_are_reproducible_and_answers_are_right() -> None:
    first, again = synth.generate(50, seed=7), synth.generate(50, seed=7)
    assert first == again
    assert first != synth.generate(50, seed=8)
    for problem in first:
        scope: dict[str, int] = {}
        exec(problem.code, scope)
        assert scope["answer"] == problem.answer > 0
        assert problem.answer >= 1000 or "//" in problem.code  # large numbers: mental arithmetic fails
    assert len({p.code.splitlines()[-1] for p in first}) >= 3  # several formulas
    assert len({p.question.split(" ")[1] for p in first}) >= 4  # several templates in use


@pytest.mark.parametrize("style", synth.STYLES)
def test_rendered_styles_follow_the_grammar(style: str) -> None:
    rng = random.Random(0)
    problem = synth.generate(1, seed=3)[0]
    segments = synth.render(problem, style, rng)
    response = synth.trajectory_text(segments)
    assert format_problem(response) is None
    boxed = extract_boxed(response)
    assert (boxed == str(problem.answer)) == (style not in synth.WRONG_STYLES)
    tool_segments = [text for kind, text in segments if kind == "python"]
    assert len(tool_segments) == {"skip_tool": 0, "redundant": 2}.get(style, 1)
    if tool_segments:  # the tool result is what the trajectory's own code prints
        code = response.split("<code>\n")[1].split("\n</code>")[0]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, {})
        assert tool_segments[0] == tool_segment_text(printed.getvalue())


def test_a_miscopied_trajectory_changes_one_number_of_the_quoted_question() -> None:
    problem = synth.generate(1, seed=5)[0]
    wrong = synth.miscopy(problem, random.Random(1))
    quoted = wrong.code.split('question = "')[1].split('"')[0]
    original, changed = re.findall(r"\d+", problem.question), re.findall(r"\d+", quoted)
    assert sum(a != b for a, b in zip(original, changed, strict=True)) == 1
    assert wrong.answer != problem.answer and wrong.question == problem.question


def test_defect_styles_carry_their_defects() -> None:
    rng = random.Random(0)
    problem = synth.generate(1, seed=4)[0]
    hedging = synth.trajectory_text(synth.render(problem, "hedging", rng))
    verbose = synth.trajectory_text(synth.render(problem, "verbose", rng))
    assert any(word in hedging.lower().split() for word in ("maybe", "probably", "might"))
    assert verbose.count(problem.plan) >= 2


def test_write_jsonl_matches_the_import_format(tmp_path) -> None:
    path = mixture.write_jsonl(mixture.generate("tir", 12, seed=1), tmp_path / "q.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(row) for row in rows] == [{"id", "question", "answer", "task", "difficulty"}] * 12
    assert {row["task"] for row in rows} == {"math", "qa"} and all(row["answer"].isdigit() for row in rows)
    assert len({row["id"] for row in rows}) == 12


def test_difficulty_counts_the_templates_arithmetic_steps() -> None:
    problems = synth.generate(60, seed=5)
    for problem in problems:
        formula = problem.code.rsplit("\n", 2 if "eggs" in problem.code else 1)[1:]
        operations = sum("\n".join(formula).count(op) for op in ("//", "*", "+", "-"))
        assert problem.difficulty == operations, problem.code
    assert {problem.difficulty for problem in problems} == {2, 3}


def test_tool_calls_are_parsed_from_the_segment_end() -> None:
    segment = "<think> x </think>\n<code>\n```python\nprint(1)\n```\n</code>"
    call = parse_tool_call(segment, "</code>")
    assert call.tool == "python" and call.argument == "print(1)" and call.error is None
    query = parse_tool_call("<search>  capital   of France </search>", "</search>")
    assert query.tool == "search" and query.argument == "capital of France"
    assert parse_tool_call("no opening </code>", "</code>").error == "</code> without an opening <code>"
    assert parse_tool_call("<code>  </code>", "</code>").error == "empty <code> block"


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ("<think> a </think><answer> \\boxed{3} </answer>", None),
        ("<think> a <answer> \\boxed{3} </answer>", "unpaired <think> tags"),
        ("<code>x</code><answer> \\boxed{3} </answer>", "a tool call without its <result>"),
        ("<code>x<answer> \\boxed{3} </answer>", "unclosed <code> call"),
        ("<answer> 3 </answer>", "the answer has no \\boxed{}"),
        ("<think> a </think>", "no single <answer> block"),
        ("<answer> \\boxed{3} </answer> more", "text after </answer>"),
    ],
)
def test_format_validation_names_the_problem(response: str, problem: str | None) -> None:
    assert format_problem(response) == problem


def test_boxed_extraction_handles_nesting() -> None:
    assert extract_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("no box") is None
    assert extract_boxed("\\boxed{unclosed") is None
