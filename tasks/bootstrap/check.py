"""Check a bootstrap build against its targets on held-out synthetic questions, with the real engine.

The questions are the main job's mixture (arithmetic, and fictional towns searched in the generated
world's corpus with the real search tool). Teacher (sampled at rollout.temperature): format-valid
>= 80 %, correct in [30 %, 80 %], more often right on easy (difficulty 1-2) than on hard (3) questions,
and every defect kind present (hedging, repetition, redundant calls, skipped tool). Repairer (sampled
at repair.temperature, on repair prompts built from flawed trajectories): format-valid >= 90 %, correct >= 70 %.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig
from tasks.bootstrap import facts, mixture, synth
from tasks.bootstrap.build import REPAIR_SOURCES
from tasks.core.prompts import Prompts, encode_prompt, repair_prompt
from tasks.core.tir import extract_boxed, format_problem
from tasks.generation.engine import EngineLimits, RolloutEngine, Trajectory
from tasks.generation.llm import SamplingParams, TransformersBackend
from tasks.generation.tools import ToolRunner, open_tools

HELD_OUT_SEED = 10_000  # far from the training stream's seeds
HEDGING = re.compile(r"\b(maybe|unsure|guess|seems|perhaps|probably|might|likely|recheck)\b", re.IGNORECASE)


def _think_text(response: str) -> str:
    return " ".join(re.findall(r"<think>(.*?)</think>", response, re.DOTALL))


def _repetitive(text: str) -> bool:
    words = text.split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) != len(set(trigrams))


def _redundant(trajectory: Trajectory) -> bool:
    calls = [segment.text for segment in trajectory.segments if segment.kind == "model"]
    arguments = [re.findall(r"<(?:code|search)>(.*?)</(?:code|search)>", text, re.DOTALL) for text in calls]
    flat = [argument.strip() for found in arguments for argument in found]
    return len(flat) != len(set(flat))


def _run(model: Path, users: list[str], temperature: float, tools: ToolRunner) -> list[Trajectory]:
    backend = TransformersBackend(str(model))
    prompts = Prompts.from_config()
    engine = RolloutEngine(backend, tools, EngineLimits(max_new_tokens_per_turn=256))
    trajectories = []
    for index, user in enumerate(users):
        text, ids = encode_prompt(backend.tokenizer, prompts.system, user)
        trajectories.append(Trajectory(f"q{index}", 0, text, ids))
    return engine.run(trajectories, SamplingParams(temperature=temperature, seed=HELD_OUT_SEED))


def evaluate_build(directory: Path, config: PipelineConfig, questions: int = 200) -> dict[str, Any]:
    """Figures and targets for the teacher and repairer of one build."""
    problems = mixture.generate("tir", questions, HELD_OUT_SEED)
    rng = random.Random(HELD_OUT_SEED)
    sources = [rng.choices(list(REPAIR_SOURCES), weights=list(REPAIR_SOURCES.values()))[0] for _ in problems]
    repair_users = [
        repair_prompt(
            p.question,
            synth.trajectory_text(mixture.render(p, source, rng)),
            "wrong" if source in mixture.WRONG_STYLES else "low_quality",
        )
        for p, source in zip(problems, sources, strict=True)
    ]
    with open_tools(facts.with_world_corpus(config)) as tools:
        # Each model is sampled as the pipeline samples it: the teacher at rollout.temperature, the
        # repairer at repair.temperature.
        questions = [p.question for p in problems]
        teacher = _run(directory / "teacher", questions, config.rollout.temperature, tools)
        repairer = _run(directory / "repairer", repair_users, config.repair.temperature, tools)

    def rates(trajectories: list[Trajectory], keep: Callable[[int], bool] = bool) -> tuple[float, float]:
        pairs = [(t, p) for t, p in zip(trajectories, problems, strict=True) if keep(p.difficulty)]
        valid = sum(format_problem(t.response) is None for t, _ in pairs) / max(1, len(pairs))
        correct = sum(extract_boxed(t.response) == str(p.answer) for t, p in pairs) / max(1, len(pairs))
        return valid, correct

    teacher_valid, teacher_correct = rates(teacher)
    _, teacher_easy = rates(teacher, lambda difficulty: difficulty < 3)
    _, teacher_hard = rates(teacher, lambda difficulty: difficulty == 3)
    repairer_valid, repairer_correct = rates(repairer)
    _, repairer_hard = rates(repairer, lambda difficulty: difficulty == 3)
    defects = {
        "hedging": sum(bool(HEDGING.search(_think_text(t.response))) for t in teacher),
        "repetitive": sum(_repetitive(_think_text(t.response)) for t in teacher),
        "redundant_calls": sum(_redundant(t) for t in teacher),
        "skipped_tool": sum(t.num_tool_calls == 0 and "<answer>" in t.response for t in teacher),
    }
    searched = sum("<search>" in t.response for t in teacher)
    figures = {
        "teacher_format_valid": teacher_valid,
        "teacher_correct": teacher_correct,
        "teacher_correct_easy": teacher_easy,
        "teacher_correct_hard": teacher_hard,
        "teacher_searched": searched,
        "repairer_format_valid": repairer_valid,
        "repairer_correct": repairer_correct,
        "repairer_correct_hard": repairer_hard,
        "teacher_defects": defects,
    }
    met = (
        teacher_valid >= 0.8
        and 0.3 <= teacher_correct <= 0.8
        and teacher_easy > teacher_hard
        and searched > 0
        and all(defects.values())
        and repairer_valid >= 0.9
        and repairer_correct >= 0.7
    )
    rows = [
        ("teacher", "format valid", f"{teacher_valid:.0%}", ">= 80%"),
        ("teacher", "correct", f"{teacher_correct:.0%}", "30-80%"),
        ("teacher", "correct, easy / hard", f"{teacher_easy:.0%} / {teacher_hard:.0%}", "easy > hard"),
        ("teacher", "trajectories that search", str(searched), "> 0"),
        *[("teacher", f"defect: {kind}", str(count), "> 0") for kind, count in defects.items()],
        ("repairer", "format valid", f"{repairer_valid:.0%}", ">= 90%"),
        ("repairer", "correct", f"{repairer_correct:.0%}", ">= 70%"),
        ("repairer", "correct, hard", f"{repairer_hard:.0%}", "(what repairs add to the hard stratum)"),
    ]
    return figures | {"questions": questions, "targets_met": met, "rows": rows}
