"""GRPO: the paper's reward, rollouts that line up with what TRL trains on, RM failures that stop
training, a short run that moves the policy, and a killed run that resumes from its checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.config import load_config
from schemas.lake import Lake
from tasks.bootstrap import synth
from tasks.core.prompts import Prompts
from tasks.generation.llm import load_tokenizer
from tasks.generation.tools import ToolRunner
from tasks.serving.reward_model import (
    ActorRewardModel,
    HttpRewardModel,
    RewardInput,
    RewardModelError,
    RewardScorer,
    serve_app,
)
from tasks.stages.grpo import ENDED, GrpoReward, composite_reward, grpo_dataset, grpo_trainer
from tests.conftest import free_port, run_stage_here, serve_in_thread

# Small budgets keep the test-size policy's rollouts short.
GRPO_TEST = [
    "rollout.max_new_tokens_per_turn=256",
    "rollout.max_total_tokens=512",
    "grpo.prompts_per_step=2",
    "grpo.num_generations=4",
    "grpo.learning_rate=0.0001",
    "grpo.temperature=1.0",
    "runtime.train_dispatch=local",
]


@pytest.mark.parametrize(
    ("format_ok", "outcome", "rm", "expected"),
    [
        (False, 1.0, 5.0, -1.0),  # invalid format: the penalty, whatever else
        (True, 0.0, 5.0, 0.0),  # wrong: no RM bonus
        (True, 1.0, 2.0, 1.4),  # o + 0.2·RM
        (True, 1.0, -2.0, 1.0),  # a negative bonus never lowers a correct answer: max(o, ·)
        (True, 1.0, 50.0, 3.0),  # clipped to 3
        (True, 0.5, 1.0, 0.7),  # open QA: F1 outcome plus the bonus
        (True, 1.0, None, 1.0),  # no RM
    ],
)
def test_composite_reward(format_ok: bool, outcome: float, rm: float | None, expected: float) -> None:
    config = load_config("cpu").grpo
    assert composite_reward(format_ok, outcome, rm, config) == pytest.approx(expected)


@pytest.fixture(scope="module")
def tiny_rm(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reward model with a fixed (untrained) score head on the test-size policy: any fixed scorer will do."""
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("rm") / "model"
    AutoModelForSequenceClassification.from_pretrained(tiny_models.teacher, num_labels=1).save_pretrained(path)
    load_tokenizer(tiny_models.teacher).save_pretrained(path)
    return str(path)


def _clean_response(problem: synth.Problem) -> str:
    return synth.trajectory_text(synth.render(problem, "clean", random.Random(0)))


def test_reward_scores_correct_answers_with_the_rm_and_fails_loudly(tiny_rm: str, local_ray) -> None:
    config = load_config("cpu")
    problems = synth.generate(3, seed=21)
    responses = [_clean_response(p) for p in problems]
    responses[1] = responses[1].replace(f"\\boxed{{{problems[1].answer}}}", "\\boxed{-1}")  # wrong
    responses[2] = responses[2].replace("<answer>", "")  # invalid format
    prompts = [p.question for p in problems]
    tokenizer = load_tokenizer(tiny_rm)
    ids = [tokenizer.encode(p + r) for p, r in zip(prompts, responses, strict=True)]
    logged: dict[str, float] = {}
    scorer = RewardScorer(tiny_rm)

    with serve_in_thread(serve_app(scorer, "rm")) as url:
        http = HttpRewardModel(url)
        http.check()
        reward = GrpoReward(config.grpo, http, 1.0)
        rewards = reward(
            prompts, [], answers=[[str(p.answer)] for p in problems], task=["math"] * 3, response=responses,
            rm_ids=ids, log_metric=lambda name, value: logged.__setitem__(name, value),
        )  # fmt: skip
    rm_score = scorer.score([(prompts[0], responses[0])])[0]
    assert rewards == pytest.approx([composite_reward(True, 1.0, rm_score, config.grpo), 0.0, -1.0], abs=1e-4)
    assert logged["reward_parts/format_valid"] == pytest.approx(2 / 3)
    assert logged["reward_parts/outcome"] == pytest.approx(2 / 3)  # the malformed one still boxes the answer
    assert logged["reward_parts/rm_scored"] == 1 and logged["reward_parts/rm_score"] == pytest.approx(rm_score, 1e-4)

    # The same scorer in a Ray actor scores token ids, in one batch.
    actor = ActorRewardModel(tiny_rm, Prompts.from_config().system)
    try:
        actor.check()
        assert actor.score([RewardInput(i, "", "") for i in ids]) == pytest.approx(scorer.score_ids(ids), abs=1e-4)
    finally:
        actor.close()

    class Failing(RewardScorer):
        def score_ids(self, sequences):  # healthy (its one-token probe scores), but every trajectory fails
            if any(len(sequence) > 1 for sequence in sequences):
                raise RuntimeError("CUDA error: device-side assert triggered")
            return super().score_ids(sequences)

    with serve_in_thread(serve_app(Failing(tiny_rm), "rm")) as url:
        reward = GrpoReward(config.grpo, HttpRewardModel(url), 1.0)
        with pytest.raises(RewardModelError, match=r"500 .*device-side assert"):
            reward(prompts[:1], [], answers=[[str(problems[0].answer)]], task=["math"], response=responses[:1],
                   rm_ids=ids[:1])  # fmt: skip


def test_rollouts_line_up_with_segments_and_trl_masks_tool_tokens(tiny_models, tmp_path: Path) -> None:
    from tools_sandbox.executor import SandboxPool

    config = load_config("cpu", GRPO_TEST)
    queries = [{"query_id": p.id, "question": p.question, "answers": [str(p.answer)], "task": "math"}
               for p in synth.generate(2, seed=22)]  # fmt: skip
    dataset = grpo_dataset(queries, Prompts.from_config())
    tokenizer = load_tokenizer(tiny_models.teacher)
    with SandboxPool(config.tools.python) as pool:
        runner = ToolRunner(pool, None, config.tools.max_result_chars)
        trainer = grpo_trainer(config, tiny_models.teacher, dataset, tokenizer, None, runner, tmp_path, steps=1)
        inputs = [dict(row) for row in dataset for _ in range(config.grpo.num_generations)]
        batch = trainer._generate_and_score_completions(inputs)  # what TRL trains on for these prompts
        runner.close()
    trajectories = trainer.rollout_func.last
    assert len(trajectories) == len(inputs) == batch["completion_ids"].shape[0]
    tool_tokens = 0
    for row, trajectory in enumerate(trajectories):
        expected_ids = [token for segment in trajectory.segments for token in segment.token_ids]
        expected_mask = [int(s.kind == "model") for s in trajectory.segments for _ in s.token_ids]
        if trajectory.finish_reason in ENDED or not expected_ids:
            expected_ids, expected_mask = [*expected_ids, tokenizer.eos_token_id], [*expected_mask, 1]
        length = int(batch["completion_mask"][row].sum())
        assert batch["completion_ids"][row][:length].tolist() == expected_ids
        assert batch["tool_mask"][row][:length].tolist() == expected_mask
        # The masked runs are exactly the tool results.
        for segment in trajectory.segments:
            if segment.kind == "tool":
                assert tokenizer.decode(segment.token_ids) == segment.text
                assert segment.text.strip().startswith("<result>") and segment.text.strip().endswith("</result>")
                tool_tokens += len(segment.token_ids)
        assert len(batch["prompt_ids"][row][batch["prompt_mask"][row].bool()]) == len(trajectory.prompt_ids)
    assert tool_tokens > 0  # the test-size policy does call the tool
    assert batch["advantages"].shape[0] == len(inputs)


def test_an_unhealthy_reward_model_stops_grpo_before_training(tiny_models, tiny_rm: str, lake: Lake, cli) -> None:
    cli("data", "synth", "--n", "4", "--seed", "23")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RewardModelError, match=f"reward model at {url} is unreachable"):
        run_stage_here("grpo", GRPO_TEST, queries="arith-s23-n4", name="g", policy=tiny_models.teacher,
                       reward_model=url, max_steps=2)  # fmt: skip

    class Broken(RewardScorer):
        def health(self) -> float:
            raise RuntimeError("weights are NaN")

    with (
        serve_in_thread(serve_app(Broken(tiny_rm), "rm")) as url,
        pytest.raises(RewardModelError, match=r"unhealthy: 503 .*weights are NaN"),
    ):
        run_stage_here("grpo", GRPO_TEST, queries="arith-s23-n4", name="g", policy=tiny_models.teacher,
                       reward_model=url, max_steps=2)  # fmt: skip
    assert lake.versions("models") == []


def _parameters(path: str) -> dict:
    from transformers import AutoModelForCausalLM

    return {name: tensor.clone() for name, tensor in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_grpo_moves_the_policy_and_a_killed_run_resumes_from_its_checkpoint(
    tiny_models, lake: Lake, home: Path, cli
) -> None:
    cli("data", "synth", "--n", "8", "--seed", "24")
    overrides = [*GRPO_TEST, "grpo.checkpoint_every=2"]
    steps = 6
    command = [sys.executable, "-m", "flows.cli"]
    for override in overrides:
        command += ["--set", override]
    command += ["grpo", "--queries", "arith-s24-n8", "--policy", tiny_models.teacher, "--max-steps", str(steps)]
    env = {**os.environ, "AUTOTRAJ_HOME": str(home)}
    log_path = home / "grpo-killed.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = home / "models" / "grpo"
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*/checkpoints/checkpoint-2/trainer_state.json")):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # killed mid-stage, as a lost worker would be
        process.wait()
    assert lake.versions("models") == []  # nothing was registered by the killed run

    arguments = {"queries": "arith-s24-n8", "policy": tiny_models.teacher, "max_steps": steps}
    result = run_stage_here("grpo", overrides, **arguments)
    metrics = result.metrics
    assert "already" not in result.summary.title and metrics["steps"] == steps
    assert 2 <= metrics["resumed_from_step"] < steps  # resumed from a checkpoint, not from scratch
    print(f"GRPO mean reward: first step {metrics['first_reward']:.3f}, last step {metrics['final_reward']:.3f}")

    registered = lake.read(result.outputs["models"]).to_pylist()[0]
    before, after = _parameters(tiny_models.teacher), _parameters(registered["path"])
    assert any(not (before[name] == after[name]).all() for name in before)  # the policy moved

    logged = lake.sql(
        "SELECT name, count(*) AS n, count(DISTINCT step) AS steps FROM train_metrics "
        "WHERE model_id = ? AND (name LIKE 'reward_parts/%' OR name LIKE 'rollout/%' OR name = 'reward') GROUP BY name",
        [result.outputs["model"]],
    ).to_pylist()
    by_name = {row["name"]: row for row in logged}
    parts = ("reward", "reward_parts/format_valid", "reward_parts/outcome", "reward_parts/rm_bonus",
             "rollout/python_calls", "rollout/search_calls")  # fmt: skip
    for part in parts:
        assert by_name[part]["n"] == by_name[part]["steps"] == steps  # every step logged once, none twice
    again = run_stage_here("grpo", overrides, **arguments)
    assert "already trained" in again.summary.title and again.outputs["model"] == result.outputs["model"]
