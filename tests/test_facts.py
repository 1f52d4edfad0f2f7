"""The synthetic search task: a generated world of fictional towns, its corpus, and questions only search answers."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tasks.bootstrap import facts, mixture, synth
from tasks.core.tir import extract_boxed, format_problem, parse_tool_call
from tasks.generation.tools import ToolRunner
from tools_sandbox.search import LocalSearch


@pytest.fixture(scope="module")
def world_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[facts.Town], LocalSearch]:
    directory = tmp_path_factory.mktemp("world")
    world = facts.make_world()
    return world, LocalSearch(facts.write_corpus(world, directory / "towns.jsonl"), directory)


def test_each_town_name_is_a_word_only_its_own_passage_holds(world_search) -> None:
    world, _ = world_search
    assert len(world) == facts.WORLD_TOWNS == len({town.name.lower() for town in world})
    assert world == facts.make_world()  # reproducible
    words: dict[str, set[str]] = {}
    for town in world:
        for word in re.findall(r"\w+", town.passage()["contents"].lower()):
            words.setdefault(word, set()).add(town.name)
    assert all(words[town.name.lower()] == {town.name} for town in world)


def test_questions_are_answerable_only_by_searching_and_their_golds_are_right(world_search) -> None:
    world, search = world_search
    problems = mixture.generate("facts", 120, seed=3, world=world)
    assert {p.shape.operation for p in problems} == {"lookup", "+", "-"}
    for problem in problems:
        # Neither the answer nor any fact is in the question: only the towns' names are.
        assert not re.findall(r"\d", problem.question)
        named = [name for name in re.findall(r"[A-Z][a-z]+", problem.question) if name not in ("How", "In")]
        pattern = r"{} has (\d+) residents" if "residents" in problem.question else r"{} was founded in (\d+)"
        found = []
        for name in named:
            (hit,) = search.search(name, k=3)  # exactly one passage holds the name
            assert hit.title == name
            found.append(int(re.search(pattern.format(name), hit.contents).group(1)))
        # The gold follows from the found facts by what the question's words ask.
        if len(found) == 1:
            gold = found[0]
        else:
            first, second = found
            # "… together" sums; "how many more does A have than B" is A − B; "years after B was A founded" A − B.
            gold = first + second if "together" in problem.question else first - second
            gold = second - first if "after" in problem.question else gold
        assert gold == problem.answer > 0, problem.question
        assert problem.difficulty == (1 if len(named) == 1 else 3)


@pytest.mark.parametrize("style", mixture.STYLES)
def test_search_trajectories_follow_the_grammar_and_read_what_the_search_tool_returns(world_search, style) -> None:
    world, search = world_search
    rng = random.Random(0)
    for problem in mixture.generate("facts", 10, seed=4, world=world):
        segments = mixture.render(problem, style, rng)
        response = synth.trajectory_text(segments)
        assert format_problem(response) is None
        assert (extract_boxed(response) == str(problem.answer)) == (style not in mixture.WRONG_STYLES)
        searches = [(segments[i - 1][1], text) for i, (kind, text) in enumerate(segments) if kind == "search"]
        assert (not searches) == (style == "skip_tool")
        # Each rendered result is exactly what the engine's tool runner appends for that query.
        runner = ToolRunner(None, search, max_result_chars=2000)
        try:
            calls = [parse_tool_call(before.rstrip(), "</search>") for before, _ in searches]
            results = runner.run([(type("Caller", (), {"session": None})(), call) for call in calls])
        finally:
            runner.close()
        assert [f"\n<result>\n{result}\n</result>\n" for result in results] == [text for _, text in searches]
        if style == "redundant" and len(problem.towns) == 1:
            assert len(searches) == 2 and searches[0][1] == searches[1][1]


def test_the_tir_mixture_holds_both_tools_and_every_stratum_each_question_once() -> None:
    problems = mixture.generate("tir", 300, seed=1)
    assert problems == mixture.generate("tir", 300, seed=1)
    # A small world's lookups (two per town) repeat by chance in a large set; none is asked twice.
    small = mixture.generate("facts", 150, seed=1, world=facts.make_world(60))
    assert len({p.question for p in small}) == len(small) == 150
    assert {(p.task, p.difficulty) for p in problems} == {("qa", 1), ("qa", 3), ("math", 2), ("math", 3)}
    with pytest.raises(ValueError, match="unknown synthetic task 'nope'"):
        mixture.generate("nope", 1, seed=1)


def test_data_synth_writes_the_corpus_and_names_the_override(cli, home: Path) -> None:
    result = cli("data", "synth", "--task", "facts", "--n", "5", "--seed", "2")
    assert result.exit_code == 0, result.output
    corpus = facts.corpus_path(home)
    assert corpus.exists() and len(corpus.read_text().splitlines()) == facts.WORLD_TOWNS
    assert f"--set tools.search.corpus={corpus}" in " ".join(result.output.split())
    bad = cli("data", "synth", "--task", "nope")
    assert bad.exit_code != 0 and "unknown synthetic task 'nope'; available: arith, facts, tir" in bad.output
