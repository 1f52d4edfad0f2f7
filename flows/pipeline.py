"""The end-to-end `autotraj` pipeline, declared once as steps: the flow runs them, the dry run plans them.

rollout → score → repair → pairs (high quality + repairs, and high quality only) → SFT on each →
reward model → GRPO from the second SFT policy, with the RM bonus and with the outcome and format
reward only → evaluate the five side by side (the ablations), each shown under its role. Each step
is a stage flow run as a subflow; steps pass only version and model ids. Each stage's task is cached
by its fingerprint, inputs and code, so a re-run skips finished stages and a retried run resumes at
the stage that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.grpo import grpo_flow
from flows.pairs import pairs_flow
from flows.repair import repair_flow
from flows.reward_model import reward_model_flow
from flows.rollout import rollout_flow
from flows.score import score_flow
from flows.sft import sft_flow
from schemas.config import PipelineConfig
from tasks.core.prompts import config_value

STAGE_FLOWS: dict[str, Callable[..., Any]] = {
    "rollout": rollout_flow,
    "score": score_flow,
    "repair": repair_flow,
    "pairs": pairs_flow,
    "sft": sft_flow,
    "reward_model": reward_model_flow,
    "grpo": grpo_flow,
    "evaluate": evaluate_flow,
}


@dataclass(frozen=True)
class Arg:
    """A pipeline argument (`queries`, `test_queries`)."""

    name: str


@dataclass(frozen=True)
class Out:
    """An earlier step's output: its id, or one of its outputs (`pairs` gives two)."""

    step: str
    output: str | None = None


@dataclass(frozen=True)
class Config:
    """A config key's value (the teacher the rollouts came from)."""

    key: str


@dataclass(frozen=True)
class Name:
    """The pipeline's name, with a suffix."""

    suffix: str = ""


Source = Arg | Out | Config | Name | list | str  # a str is the value itself


@dataclass(frozen=True)
class Step:
    """One stage run of the pipeline: its key in the outputs, the stage, and where its arguments come from."""

    key: str
    stage: str
    arguments: dict[str, Source]
    overrides: tuple[str, ...] = field(default_factory=tuple)


# How the evaluated models are shown, in the evaluate step's order.
ROLES = ("teacher", "SFT HQ only", "SFT HQ + repaired", "GRPO outcome only", "GRPO + RM bonus")
STEPS = (
    Step("rollouts", "rollout", {"queries": Arg("queries")}),
    Step("scores", "score", {"rollouts": Out("rollouts"), "name": Name()}),
    Step("repairs", "repair", {"scores": Out("scores"), "name": Name()}),
    Step("pairs", "pairs", {"repairs": Out("repairs"), "name": Name()}),
    Step("pairs_hq", "pairs", {"repairs": Out("repairs"), "name": Name("-hq")}, ("pairs.include_repairs=false",)),
    Step("sft", "sft", {"examples": Out("pairs", "sft_examples")}),
    Step("sft_hq", "sft", {"examples": Out("pairs_hq", "sft_examples")}),
    Step("reward_model", "reward_model", {"pairs": Out("pairs", "preference_pairs")}),
    Step("grpo", "grpo", {"queries": Arg("queries"), "policy": Out("sft"), "reward_model": Out("reward_model"),
                          "name": Name("-grpo")}),
    # The ablation: the same GRPO with no reward model (grpo.reward_model is None unless configured).
    Step("grpo_outcome", "grpo", {"queries": Arg("queries"), "policy": Out("sft"), "name": Name("-grpo-outcome")},
         ("grpo.reward_model=null",)),
    Step("eval_results", "evaluate", {"benchmarks": [Arg("test_queries")], "name": Name(), "labels": ",".join(ROLES),
                                      "models": [Config("rollout.model"), Out("sft_hq"), Out("sft"),
                                                 Out("grpo_outcome"), Out("grpo")]}),
)  # fmt: skip


def default_name(queries: str) -> str:
    """The pipeline's name when none is given: the queries' dataset name."""
    return queries.split("/")[-1].split("@")[0]


def step_overrides(step: Step, overrides: Sequence[str]) -> list[str]:
    """The overrides a step runs with: the pipeline's, then its own."""
    return [*overrides, *step.overrides]


def resolve_source(
    source: Source, arguments: Mapping[str, str], outputs: Mapping[str, Any], name: str, config: PipelineConfig
) -> Any:
    """A step argument's value, from the pipeline's arguments, earlier outputs, config or its name."""
    if isinstance(source, str):
        return source
    if isinstance(source, list):
        return [resolve_source(item, arguments, outputs, name, config) for item in source]
    if isinstance(source, Arg):
        return arguments[source.name]
    if isinstance(source, Name):
        return name + source.suffix
    if isinstance(source, Config):
        return config_value(config, source.key)
    value = outputs[source.step]
    return value[source.output] if source.output else value


@flow(name="autotraj")
def pipeline_flow(
    queries: str,
    test_queries: str,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline on `queries`, evaluating on `test_queries`; return every step's output ids."""
    from schemas.config import load_config

    overrides = list(overrides or [])
    name = name or default_name(queries)
    config = load_config(profile, overrides)
    arguments = {"queries": queries, "test_queries": test_queries}
    outputs: dict[str, Any] = {"teacher": config.rollout.model}
    for step in STEPS:
        values = {key: resolve_source(value, arguments, outputs, name, config) for key, value in step.arguments.items()}
        run = STAGE_FLOWS[step.stage]
        outputs[step.key] = run(**values, profile=profile, overrides=step_overrides(step, overrides))
    return outputs
