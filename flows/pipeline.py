"""The end-to-end `autotraj` pipeline: every stage in order, each as a subflow.

rollout → score → repair → pairs (high quality + repairs, and high quality only) → SFT on each →
reward model → GRPO from the SFT policy → evaluate teacher, both SFT policies and GRPO side by side.
Stages pass only version and model ids. Each stage's task is cached by its config, inputs and code,
so a re-run skips finished stages and a retried run resumes at the stage that failed.
"""

from __future__ import annotations

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.grpo import grpo_flow
from flows.pairs import pairs_flow
from flows.repair import repair_flow
from flows.reward_model import reward_model_flow
from flows.rollout import rollout_flow
from flows.score import score_flow
from flows.sft import sft_flow
from schemas.config import load_config


@flow(name="autotraj")
def pipeline_flow(
    queries: str,
    test_queries: str,
    name: str | None = None,
    profile: str = "cpu",
    overrides: list[str] | None = None,
) -> dict[str, str]:
    """Run the whole pipeline on `queries`, evaluating on `test_queries`; return every output's id."""
    overrides = list(overrides or [])
    name = name or queries.split("/")[-1].split("@")[0]
    settings = {"profile": profile, "overrides": overrides}
    rollouts = rollout_flow(queries, **settings)
    scores = score_flow(rollouts, name=name, **settings)
    repairs = repair_flow(scores, name=name, **settings)
    pairs = pairs_flow(repairs, name=name, **settings)
    high_quality_only = [*overrides, "pairs.include_repairs=false"]
    pairs_hq = pairs_flow(repairs, name=f"{name}-hq", profile=profile, overrides=high_quality_only)
    sft = sft_flow(pairs["sft_examples"], **settings)
    sft_hq = sft_flow(pairs_hq["sft_examples"], **settings)
    reward_model = reward_model_flow(pairs["preference_pairs"], **settings)
    grpo = grpo_flow(queries, policy=sft, reward_model=reward_model, name=f"{name}-grpo", **settings)
    teacher = load_config(profile, overrides).rollout.model  # the model that wrote the rollouts
    results = evaluate_flow([teacher, sft_hq, sft, grpo], [test_queries], name=name, **settings)
    return {
        "rollouts": rollouts,
        "scores": scores,
        "repairs": repairs,
        **pairs,
        "sft_hq": sft_hq,
        "sft": sft,
        "teacher": teacher,
        "reward_model": reward_model,
        "grpo": grpo,
        "eval_results": results,
    }
