"""Repair prompts and acceptance, pair building with provenance, export, and the SFT-stage data end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.config import load_config
from schemas.lake import Lake
from tasks.bootstrap import mixture, synth
from tasks.core.prompts import repair_prompt
from tasks.scoring.quality import own_length_quality
from tasks.stages.pairs import build_rows
from tasks.stages.repair import judge_repair

CONFIG = load_config("cpu")
QUERY = {"question": "What is 3 + 4?", "answers": ["7"], "task": "math"}


def _trajectory(think: str, answer: str) -> dict:
    text = (
        f"<think> {think} </think>\n<code>\nprint(3 + 4)\n</code>\n<result>\n7\n</result>\n"
        f"<answer> The final answer is \\boxed{{{answer}}} </answer>"
    )
    code_end = text.index("</code>") + len("</code>")
    result_end = text.index("</result>\n") + len("</result>\n")
    segments = [
        {"kind": "model", "tool": None, "text": text[:code_end], "token_ids": [1], "n_tokens": 1},
        {"kind": "tool", "tool": "python", "text": text[code_end:result_end], "token_ids": [2], "n_tokens": 1},
        {"kind": "model", "tool": None, "text": text[result_end:], "token_ids": [3], "n_tokens": 1},
    ]
    return {"response": text, "segments": segments, "error": None}


def test_both_repair_prompts_show_the_question_and_the_bad_trajectory(tmp_path: Path) -> None:
    bad = "<think> Maybe 3 + 4 is 8, I guess. </think>\n<answer> \\boxed{8} </answer>"
    for variant in ("low_quality", "wrong"):
        prompt = repair_prompt(QUERY["question"], bad, variant)
        assert QUERY["question"] in prompt and bad in prompt
    assert "wrong" in repair_prompt("q", "t", "wrong").lower()
    custom = tmp_path / "mine.txt"
    custom.write_text("Fix this. Q: {question}\nA: {trajectory}")
    config = load_config("cpu", [f"repair.wrong_prompt_file={custom}"])
    assert repair_prompt("q?", "bad!", "wrong", config) == "Fix this. Q: q?\nA: bad!"


def test_acceptance_needs_a_correct_answer_and_quality_above_the_source_threshold() -> None:
    clean = _trajectory("Add the numbers with Python.", "7")
    assert own_length_quality(clean["response"], clean["segments"], CONFIG.score) == pytest.approx(1.0)
    assert judge_repair(clean, QUERY, "wrong", CONFIG)["accepted"]

    wrong = judge_repair(_trajectory("Add the numbers with Python.", "8"), QUERY, "wrong", CONFIG)
    assert not wrong["accepted"] and wrong["reject_reason"] == "wrong answer: 8"

    # Hedging costs 0.4: q = 0.6, below both thresholds.
    hedging = judge_repair(_trajectory("Maybe add the numbers.", "7"), QUERY, "correct_low_quality", CONFIG)
    assert not hedging["accepted"] and hedging["quality"] == pytest.approx(0.6)
    assert hedging["reject_reason"] == "quality 0.600 not above 0.86"

    # Repetition alone: 14 words, 12 trigrams, "x y z" three times and "y z x", "z x y" twice each: 7 repeated,
    # e = 5/12 and q = 0.4 + 0.3 + 0.3 * 5/12 = 0.825: accepted for a wrong source (> 0.80), not a low-quality one.
    text = "<think> x y z x y z x y z </think>\n<answer> \\boxed{7} </answer>"
    repeated = {"response": text, "segments": [{"kind": "model", "tool": None, "text": text}], "error": None}
    assert own_length_quality(text, repeated["segments"], CONFIG.score) == pytest.approx(0.7 + 0.3 * 5 / 12)
    assert judge_repair(repeated, QUERY, "wrong", CONFIG)["accepted"]
    assert not judge_repair(repeated, QUERY, "correct_low_quality", CONFIG)["accepted"]

    broken = _trajectory("Add.", "7") | {"response": "<think> add <answer> \\boxed{7} </answer>"}
    assert judge_repair(broken, QUERY, "wrong", CONFIG)["reject_reason"] == "invalid format: unpaired <think> tags"
    errored = _trajectory("Add.", "7") | {"error": "HTTP 500 after 4 attempts"}
    assert (
        judge_repair(errored, QUERY, "wrong", CONFIG)["reject_reason"] == "generation failed: HTTP 500 after 4 attempts"
    )


def _pair_inputs() -> tuple[dict, dict, list[dict]]:
    rollouts = {
        tid: {"trajectory_id": tid, "query_id": "q1", **_trajectory(think, answer)}
        for tid, think, answer in (
            ("t-good", "Add with Python.", "7"),
            ("t-hedge", "Maybe add.", "7"),
            ("t-bad", "Guess.", "8"),
        )
    }
    scores = {
        "t-good": {"label": "high_quality", "quality": 1.0, "outcome": 1.0},
        "t-hedge": {"label": "correct_low_quality", "quality": 0.6, "outcome": 1.0},
        "t-bad": {"label": "wrong", "quality": 0.9, "outcome": 0.0},
    }
    fixed = _trajectory("Add with Python.", "7")
    repairs = [
        {"repair_id": "r1", "source_trajectory_id": "t-hedge", "query_id": "q1", "source_label": "correct_low_quality",
         "accepted": True, "quality": 1.0, "outcome": 1.0, **fixed},
        {"repair_id": "r2", "source_trajectory_id": "t-bad", "query_id": "q1", "source_label": "wrong",
         "accepted": True, "quality": 1.0, "outcome": 1.0, **fixed},
        {"repair_id": "r3", "source_trajectory_id": "t-bad", "query_id": "q1", "source_label": "wrong",
         "accepted": False, "quality": 0.2, "outcome": 0.0, **_trajectory("?", "9")},
    ]  # fmt: skip
    return rollouts, scores, repairs


def test_pairs_carry_provenance_and_exact_duplicates_are_removed() -> None:
    rollouts, scores, repairs = _pair_inputs()
    sft, pairs, removed = build_rows(rollouts, scores, repairs, {"q1": "What is 3 + 4?"}, CONFIG)
    # t-good and both accepted repairs have the same text: one SFT example survives.
    assert [row["origin"] for row in sft] == ["high_quality"] and removed == {"sft_examples": 2, "preference_pairs": 0}
    assert len(pairs) == 2  # the rejected sides differ
    by_source = {pair["source_trajectory_id"]: pair for pair in pairs}
    hedge = by_source["t-hedge"]
    assert hedge["source_label"] == "correct_low_quality" and hedge["repair_id"] == "r1"
    assert (hedge["chosen_quality"], hedge["rejected_quality"]) == (1.0, 0.6)
    assert (hedge["chosen_outcome"], hedge["rejected_outcome"]) == (1.0, 1.0)
    assert hedge["rejected"] == rollouts["t-hedge"]["response"] and hedge["chosen"] == repairs[0]["response"]
    assert by_source["t-bad"]["rejected_outcome"] == 0.0
    assert all(pair["prompt"] == "What is 3 + 4?" for pair in pairs)

    no_dedup = CONFIG.model_copy(update={"pairs": CONFIG.pairs.model_copy(update={"deduplicate": False})})
    sft_all, _, _ = build_rows(rollouts, scores, repairs, {"q1": "What is 3 + 4?"}, no_dedup)
    assert [row["origin"] for row in sft_all] == ["high_quality", "repair", "repair"]


def test_sft_stage_data_end_to_end_on_the_tiny_models(tiny_models, lake: Lake, home: Path, tmp_path: Path, cli) -> None:
    path = mixture.write_jsonl(synth.generate(8, 77, prefix="e2e"), tmp_path / "e2e.jsonl")
    common = ["--set", "rollout.max_new_tokens_per_turn=160", "--set", "tools.python.workers=1"]
    assert cli("data", "import", str(path), "--name", "e2e").exit_code == 0
    result = cli(*common, "rollout", "-q", "e2e", "--model", tiny_models.teacher, "--n", "2", "--no-ray")
    assert result.exit_code == 0, result.output
    result = cli(*common, "score", "--rollouts", "e2e-rollout", "--name", "e2e")
    assert result.exit_code == 0, result.output
    scores = lake.read("scores/e2e").to_pylist()
    assert len(scores) == 16
    labels = {
        label: sum(row["label"] == label for row in scores)
        for label in ("high_quality", "correct_low_quality", "wrong")
    }
    assert sum(labels.values()) == 16
    result = cli(*common, "repair", "--scores", "e2e", "--model", tiny_models.repairer, "--no-ray")
    assert result.exit_code == 0, result.output
    repairs = lake.read("repairs/e2e").to_pylist()
    assert len(repairs) == labels["correct_low_quality"] + labels["wrong"]  # one attempt each
    assert {row["source_trajectory_id"] for row in repairs} == {
        row["trajectory_id"] for row in scores if row["label"] != "high_quality"
    }
    assert all(row["accepted"] == (row["reject_reason"] is None) for row in repairs)
    assert all(
        row["prompt_variant"] == ("wrong" if row["source_label"] == "wrong" else "low_quality") for row in repairs
    )
    result = cli(*common, "pairs", "--repairs", "e2e")
    assert result.exit_code == 0, result.output
    sft = lake.read("sft_examples/e2e").to_pylist()
    pairs = lake.read("preference_pairs/e2e").to_pylist()
    accepted = sum(row["accepted"] for row in repairs)
    assert len(pairs) <= accepted and len(sft) <= labels["high_quality"] + accepted
    metrics = lake.stage_metrics(lake.resolve("repairs/e2e"))
    assert metrics["sources"] == len(repairs) and metrics["accepted"] == accepted

    # Every stage again: nothing new is written.
    before = len(lake.versions())
    for args in (
        ("score", "--rollouts", "e2e-rollout", "--name", "e2e"),
        ("repair", "--scores", "e2e", "--model", tiny_models.repairer, "--no-ray"),
        ("pairs", "--repairs", "e2e"),
    ):
        assert cli(*common, *args).exit_code == 0
    assert len(lake.versions()) == before

    result = cli("report", "--repairs", "e2e", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| wrong |" in report and "repair metrics" in report
    assert (tmp_path / "report" / "quality.png").read_bytes()[:4] == b"\x89PNG"
    result = cli("export", "sft", "--out", str(tmp_path / "sft.jsonl"), "--format", "trl")
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(exported) == len(sft)

    # The shard datasets rollout and repair committed to stay out of listings and latest views.
    assert any(".partial-" in info.dataset for info in lake.versions("rollouts"))
    joined = lake.sql("SELECT count(*) AS n FROM scores JOIN rollouts USING (trajectory_id)").to_pylist()
    assert joined == [{"n": 16}]  # each trajectory once, not once more per shard dataset
    assert lake.sql("SELECT count(*) AS n FROM rollouts_all WHERE dataset LIKE '%.partial-%'").to_pylist()[0]["n"] > 0
    listed, everything = cli("tables").output, cli("tables", "--all").output
    assert ".partial-" not in listed and "e2e-rollout" in listed and ".partial-" in everything
    # Export takes what `tables` lists, and the kind's short name; with two datasets it asks which.
    assert cli("export", "pairs", "--version", "pairs/e2e@1", "--out", str(tmp_path / "p.jsonl")).exit_code == 0
    assert cli(*common, "pairs", "--repairs", "e2e", "--name", "other").exit_code == 0
    ambiguous = cli("export", "sft", "--out", str(tmp_path / "sft2.jsonl"))
    assert ambiguous.exit_code == 2 and "holds 2 datasets (e2e, other); name one with --version" in ambiguous.output
