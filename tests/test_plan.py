"""`autotraj pipeline --dry-run` for every profile in deployments/: the cpu profile is ready here; the
gpu and cluster profiles fail only on what this machine lacks, and say what."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.config import PROFILES_DIR
from tasks.core.models import bootstrap_dir

STEPS = (
    "rollouts",
    "scores",
    "repairs",
    "pairs",
    "pairs_hq",
    "sft",
    "sft_hq",
    "reward_model",
    "grpo",
    "grpo_outcome",
    "eval_results",
)
# What a GPU machine or a cluster has and this one does not: the only reasons the other profiles may fail.
LACKING = {
    "gpu": (
        r"served model http://127\.0\.0\.1:8000/v1#Qwen/Qwen2\.5-7B-Instruct: .* does not answer",
        r"tokenizer 'Qwen/Qwen2\.5-7B-Instruct': not a local tokenizer directory",
        r"model '/models/Qwen2\.5-1\.5B-Instruct': not a role .*\(/models/Qwen2\.5-1\.5B-Instruct does not exist\)",
        r"runtime\.train_gpus=1, but this machine has 0 GPU",
        r"DeepSpeed is not installed",
        r"vLLM is not installed",
    ),
    "cluster": (
        r"PostgreSQL at db-host:5432 cannot be reached",
        r"the Ray cluster cannot be reached",
        r"model '/shared/models/Qwen2\.5-7B-Instruct': not a role .* does not exist",
        r"runtime\.train_gpus=8, but this machine has 0 GPU",
        r"DeepSpeed is not installed",
        r"vLLM is not installed",
    ),
}


@pytest.fixture()
def ready_home(tiny_models, home: Path, cli) -> Path:
    """A data directory where the cpu profile's roles find models (the test build stands in for the full
    one) and the queries exist."""
    target = bootstrap_dir(home)
    target.parent.mkdir(parents=True)
    target.symlink_to(tiny_models.directory)
    for n, seed in ((8, 71), (4, 72)):
        assert cli("data", "synth", "--n", str(n), "--seed", str(seed)).exit_code == 0
    return home


def _errors(output: str) -> list[str]:
    return [line.removeprefix("✗ ").strip() for line in output.splitlines() if line.startswith("✗ ")]


def test_the_cpu_profile_plan_is_ready(ready_home: Path, cli) -> None:
    result = cli("pipeline", "arith-s71-n8", "--test-queries", "arith-s72-n4", "--name", "plan", "--dry-run")
    assert result.exit_code == 0, result.output
    assert _errors(result.output) == [] and "ready: 11 steps resolved" in result.output
    for step in STEPS:
        assert re.search(rf"^│ {step}\s", result.output, re.MULTILINE), step
    for shown in ("queries/arith-s71-n8@1", "rollouts/arith-s71-n8-rollout", "← pairs.sft_examples",
                  "models/plan-grpo", "eval_results/plan", "Ray Train: 1 CPU worker", "Ray actors"):  # fmt: skip
        assert shown in result.output, shown
    assert not list((ready_home / "lake" / "data" / "main" / "rollouts").rglob("*.parquet"))  # nothing ran


def test_the_dry_run_names_what_is_missing(ready_home: Path, cli) -> None:
    result = cli("pipeline", "no-such-queries", "--test-queries", "arith-s72-n4", "--dry-run",
                 "--set", "repair.model=./nowhere")  # fmt: skip
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert any("queries: no version 'no-such-queries'" in error for error in errors), errors
    assert any("repairs: model './nowhere': not a role" in error and "nowhere does not exist" in error
               for error in errors), errors  # fmt: skip


@pytest.mark.parametrize("profile", sorted(LACKING))
def test_gpu_and_cluster_plans_fail_only_on_what_this_machine_lacks(profile: str, ready_home: Path, cli) -> None:
    assert (PROFILES_DIR / f"{profile}.yaml").exists()
    result = cli("--profile", profile, "pipeline", "arith-s71-n8", "--test-queries", "arith-s72-n4", "--dry-run")
    assert result.exit_code == 1 and "cannot run as configured" in result.output
    errors = _errors(result.output)
    unexpected = [error for error in errors if not any(re.search(p, error) for p in LACKING[profile])]
    assert not unexpected, unexpected
    missing = [p for p in LACKING[profile] if not any(re.search(p, error) for error in errors)]
    assert not missing, (missing, errors)


def test_every_profile_has_a_dry_run_test() -> None:
    assert {path.stem for path in PROFILES_DIR.glob("*.yaml")} == {"cpu", *LACKING}
