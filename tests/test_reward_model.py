"""The reward model: trained on the synthetic task's preference pairs, it ranks held-out pairs."""

from __future__ import annotations

import random

from schemas.config import load_config
from schemas.lake import Lake, Lineage
from tasks import synth
from tasks.reward_model import held_out, run_reward_model


def _segments(problem: synth.Problem, style: str, rng: random.Random) -> list[dict]:
    return [
        {"kind": "model" if kind == "model" else "tool", "tool": None if kind == "model" else kind, "text": text,
         "token_ids": [], "n_tokens": 0}
        for kind, text in synth.render(problem, style, rng)
    ]  # fmt: skip


def test_reward_model_ranks_held_out_pairs_and_is_registered(tiny_models, lake: Lake, capsys) -> None:
    rng = random.Random(3)
    rows = []
    for index, problem in enumerate(synth.generate(60, seed=13, prefix="rm")):
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
    report = run_reward_model(lake, "preference_pairs/synthetic", "rm", config, base_model=tiny_models.teacher)
    metrics = report.metrics
    with capsys.disabled():
        print(f"\n  reward model held-out pairwise accuracy {metrics['held_out_accuracy']:.3f} "
              f"on {metrics['held_out_pairs']} pairs (train {metrics['train_accuracy']:.3f})", end="")  # fmt: skip
    held = sum(held_out(row["query_id"], config.reward_model.eval_fraction) for row in rows)
    assert metrics["held_out_pairs"] == held and metrics["train_pairs"] == 60 - held and metrics["too_long"] == 0
    assert metrics["held_out_accuracy"] > 0.8
    assert metrics["final_loss"] < metrics["first_loss"]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(report.path)
    assert model.config.num_labels == 1
    registered = lake.read("models/rm").to_pylist()[0]
    assert registered["kind"] == "reward_model" and registered["method"] == "lora"
    again = run_reward_model(lake, "preference_pairs/synthetic", "rm", config, base_model=tiny_models.teacher)
    assert not again.trained and again.model_id == report.model_id
