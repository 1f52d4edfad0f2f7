"""Evaluation: models side by side on a benchmark, metrics that agree with the trajectories, a chart,
and a re-run that recomputes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.lake import Lake
from tasks.core.tir import extract_boxed


def test_eval_compares_models_and_writes_results_and_a_chart(tiny_models, lake: Lake, home: Path, cli, monkeypatch):
    cli("data", "synth", "--n", "6", "--seed", "31")
    chart = home / "cmp.png"
    monkeypatch.chdir(Path(tiny_models.teacher).parent)
    models = f"./teacher,{tiny_models.repairer}"  # a relative path resolves against the working directory
    shown = "--labels", "the teacher,the repairer"
    result = cli("eval", "--models", models, "--benchmarks", "arith-s31-n6", "--chart", str(chart), "--no-ray", *shown)
    assert result.exit_code == 0, result.output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [f"{Path(tiny_models.teacher).parent.name}-teacher", f"{Path(tiny_models.repairer).parent.name}-repairer"]
    assert "the teacher" in result.output and "the repairer" in result.output and "95% intervals" in result.output

    everything = lake.read("eval_results/eval").to_pylist()
    # The synthetic task's strata (2- and 3-step problems) split the 6 questions besides "all".
    strata = {row["subset"]: row["n_examples"] for row in everything if row["subset"] != "all"}
    assert set(strata) <= {"difficulty=2", "difficulty=3"} and sum(strata.values()) == 6
    results = [row for row in everything if row["subset"] == "all"]
    assert len(results) == 2 * 7 and {row["n_examples"] for row in results} == {6}
    assert {row["label"] for row in results} == {"the teacher", "the repairer"}
    for row in results:  # every proportion and mean has its interval around it
        if row["metric"] in ("accuracy", "format_valid", "mean_quality", "mean_tokens"):
            assert row["ci_low"] <= row["value"] <= row["ci_high"], row
    compared = lake.read("eval_comparisons/eval").to_pylist()
    comparisons = {row["metric"]: row for row in compared if row["subset"] == "all"}
    assert set(comparisons) == {"accuracy", "mean_quality", "mean_tokens", "tool_calls"}
    value = {(row["model_id"], row["metric"]): row["value"] for row in results}
    golds = {row["query_id"]: row["answers"] for row in lake.read("queries/arith-s31-n6").to_pylist()}
    for label in labels:
        rollouts = lake.read(f"rollouts/eval-arith-s31-n6-{label}").to_pylist()
        assert len(rollouts) == 6 and {row["model"] for row in rollouts} == {label}
        correct = [extract_boxed(row["response"]) in golds[row["query_id"]] for row in rollouts]
        # The engine's own counts agree with what evaluation reports.
        assert value[(label, "tool_calls")] == sum(row["num_tool_calls"] for row in rollouts) / 6
        assert value[(label, "mean_tokens")] == sum(row["completion_tokens"] for row in rollouts) / 6
        assert value[(label, "accuracy")] <= sum(correct) / 6  # correct also needs a valid format
        assert 0.0 <= value[(label, "mean_quality")] <= 1.0 and 0.0 <= value[(label, "format_valid")] <= 1.0
    accuracy = comparisons["accuracy"]
    assert (accuracy["model_a"], accuracy["model_b"], accuracy["n"]) == (*labels, 6)
    assert accuracy["difference"] == pytest.approx(value[(labels[1], "accuracy")] - value[(labels[0], "accuracy")])
    assert accuracy["ci_low"] <= accuracy["difference"] <= accuracy["ci_high"] and 0 < accuracy["p_value"] <= 1

    versions = len(lake.versions())
    again = cli("eval", "--models", models, "--benchmarks", "arith-s31-n6", "--chart", str(chart), "--no-ray", *shown)
    assert again.exit_code == 0 and len(lake.versions()) == versions  # greedy and finished: nothing recomputed


def test_eval_refuses_unknown_models_and_benchmarks_in_one_line(tiny_models, lake: Lake, cli) -> None:
    cli("data", "synth", "--n", "2", "--seed", "32")
    result = cli("eval", "--models", "no-such-model", "--benchmarks", "arith-s32-n2", "--no-ray")
    assert result.exit_code == 2 and "model 'no-such-model': not a role" in result.output
    assert f"not a path ({Path.cwd() / 'no-such-model'} does not exist)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    mistyped = cli("eval", "--models", tiny_models.teacher, "--benchmarks", "arith-s32-n3", "--no-ray")
    assert mistyped.exit_code == 2 and len(mistyped.output.strip().splitlines()) == 1
    assert "no version 'arith-s32-n3' in table 'queries'; datasets: arith-s32-n2" in mistyped.output
    with pytest.raises(FileNotFoundError, match="no-such-model"):  # --debug: the error itself, with its traceback
        cli("--debug", "eval", "--models", "no-such-model", "--benchmarks", "arith-s32-n2")
