"""The reward model: trained on the synthetic task's preference pairs, it ranks held-out pairs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import httpx
import pytest

from schemas.config import load_config
from schemas.lake import Lake, Lineage
from tasks.bootstrap import synth
from tasks.serving.reward_model import HttpRewardModel, RewardInput, RewardModelError, RewardScorer
from tasks.stages.reward_model import held_out
from tests.conftest import free_port, run_stage_here


def _segments(problem: synth.Problem, style: str, rng: random.Random) -> list[dict]:
    return [
        {"kind": "model" if kind == "model" else "tool", "tool": None if kind == "model" else kind, "text": text,
         "token_ids": [], "n_tokens": 0}
        for kind, text in synth.render(problem, style, rng)
    ]  # fmt: skip


def test_reward_model_ranks_held_out_pairs_is_registered_and_served(
    tiny_models, lake: Lake, home, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    rows = []
    for index, problem in enumerate(synth.generate(100, seed=13, prefix="rm")):
        flawed = rng.choice(["hedging", "verbose", "skip_tool"])
        chosen, rejected = _segments(problem, "clean", rng), _segments(problem, flawed, rng)
        rows.append(
            {"pair_id": f"p{index}", "query_id": problem.id, "prompt": problem.question,
             "chosen": synth.trajectory_text([(s["kind"], s["text"]) for s in chosen]),
             "rejected": synth.trajectory_text([(s["kind"], s["text"]) for s in rejected]),
             "chosen_segments": chosen, "rejected_segments": rejected,
             "source_label": "wrong" if flawed == "skip_tool" else "correct_low_quality", "repair_id": f"r{index}",
             "source_trajectory_id": f"t{index}", "chosen_quality": 1.0, "rejected_quality": 0.6,
             "chosen_outcome": 1.0, "rejected_outcome": 0.0 if flawed == "skip_tool" else 1.0}
        )  # fmt: skip
    lake.write("preference_pairs", "synthetic", rows, Lineage("pairs"))
    config = load_config("cpu")
    arguments = {"pairs": "preference_pairs/synthetic", "name": "rm", "base": tiny_models.teacher}
    result = run_stage_here("reward_model", ["runtime.train_dispatch=local"], **arguments)
    metrics = result.metrics
    with capsys.disabled():
        print(f"\n  reward model held-out pairwise accuracy {metrics['held_out_accuracy']:.3f} "
              f"on {metrics['held_out_pairs']} pairs (train {metrics['train_accuracy']:.3f})", end="")  # fmt: skip
    held = sum(held_out(row["query_id"], config.reward_model.eval_fraction) for row in rows)
    assert metrics["held_out_pairs"] == held and metrics["train_pairs"] == 100 - held and metrics["too_long"] == 0
    assert metrics["held_out_accuracy"] > 0.8
    assert metrics["final_loss"] < metrics["first_loss"]
    from transformers import AutoModelForSequenceClassification

    registered = lake.read("models/rm").to_pylist()[0]
    assert registered["kind"] == "reward_model" and registered["method"] == "lora"
    assert registered["model_id"] == result.outputs["model"]
    model = AutoModelForSequenceClassification.from_pretrained(registered["path"])
    assert model.config.num_labels == 1
    again = run_stage_here("reward_model", ["runtime.train_dispatch=local"], **arguments)
    assert again.outputs["model"] == result.outputs["model"] and len(lake.versions("models", "rm")) == 1

    # The same model behind `autotraj serve-rm`, found by its model id in the models table.
    scorer = RewardScorer(registered["path"])
    clean, flawed = rows[0]["chosen"], rows[0]["rejected"]
    expected = scorer.score([(rows[0]["prompt"], clean), (None, flawed)])
    port = free_port()
    key = "rm-key-" + os.urandom(4).hex()
    env = {**os.environ, "AUTOTRAJ_HOME": str(home), "AUTOTRAJ_API_KEY": key}
    command = [sys.executable, "-m", "flows.cli", "serve-rm", "--model", registered["model_id"], "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    authorized = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{url}/health", timeout=2)  # open without the key, for load balancers
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.5)
        assert health.json()["status"] == "ok"
        body = {"prompt": rows[0]["prompt"], "response": clean}
        assert httpx.post(f"{url}/score", json=body, timeout=30).status_code == 401  # the key from the env holds
        templated = httpx.post(f"{url}/score", json=body, headers=authorized, timeout=30)
        raw = httpx.post(f"{url}/score", json={"trajectory": flawed}, headers=authorized, timeout=30)
        assert [templated.json()["score"], raw.json()["score"]] == pytest.approx(expected, abs=1e-4)
        bad = httpx.post(f"{url}/score", json={"prompt": "only a prompt"}, headers=authorized, timeout=30)
        assert bad.status_code == 422  # a malformed request is refused, never scored 0.0
        # Bounded by the model's context: past it a 400, past the body bound a 413; neither is scored.
        context = scorer.model.config.max_position_embeddings
        too_long = httpx.post(f"{url}/score", json={"trajectory": "7 " * (context + 10)}, headers=authorized)
        assert too_long.status_code == 400 and f"scores 1 to {context}" in too_long.json()["detail"]
        huge = httpx.post(f"{url}/score", json={"trajectory": "7 " * 1_000_000}, headers=authorized)
        assert huge.status_code == 413
        assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        # GRPO's client sends $AUTOTRAJ_API_KEY.
        monkeypatch.setenv("AUTOTRAJ_API_KEY", key)
        client = HttpRewardModel(url)
        client.check()
        inputs = [RewardInput([], rows[0]["prompt"], clean)]
        assert client.score(inputs) == pytest.approx(expected[:1], abs=1e-4)
        monkeypatch.setenv("AUTOTRAJ_API_KEY", "wrong")
        with pytest.raises(RewardModelError, match="401"):
            HttpRewardModel(url).score(inputs)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_scoring_failure_is_an_error_not_a_zero() -> None:
    from fastapi.testclient import TestClient

    from tasks.serving.reward_model import serve_app

    class Broken:
        def __init__(self, healthy: bool):
            self.healthy = healthy

        def health(self) -> float:
            if not self.healthy:
                raise RuntimeError("weights failed to load")
            return 0.0

        def encode(self, prompt, response):
            return [1, 2, 3]

        def score_ids(self, sequences):
            raise RuntimeError("CUDA out of memory")

    client = TestClient(serve_app(Broken(healthy=True), "rm"))
    reply = client.post("/score", json={"trajectory": "<think> x </think>"})
    assert reply.status_code == 500 and reply.json()["detail"] == "scoring failed: RuntimeError: CUDA out of memory"
    assert client.get("/health").json() == {"status": "ok", "busy_s": 0.0, "cancelled": 0, "model": "rm"}
    unhealthy = TestClient(serve_app(Broken(healthy=False), "rm")).get("/health")
    assert unhealthy.status_code == 503 and "weights failed to load" in unhealthy.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{"prompt": "only a prompt"}, {"trajectory": "t", "prompt": "q"}, {"trajectory": "t", "response": "r"}, {}],
)
def test_a_score_request_takes_exactly_one_form(body: dict[str, str]) -> None:
    from pydantic import ValidationError

    from tasks.serving.reward_model import ScoreRequest

    with pytest.raises(ValidationError, match="send either"):
        ScoreRequest(**body)
    assert ScoreRequest(trajectory="t").response is None and ScoreRequest(prompt="q", response="r").trajectory is None
