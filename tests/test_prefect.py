"""Prefect integration: deployment entrypoints resolve, and a flow run's id lands in the lineage."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import yaml

from schemas.config import PROJECT_ROOT
from schemas.lake import Lake
from tests.conftest import FIXTURES

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def test_every_deployment_entrypoint_is_a_flow() -> None:
    from prefect import Flow

    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "prefect.yaml declares no deployments"
    for deployment in spec["deployments"]:
        path, _, attribute = deployment["entrypoint"].partition(":")
        module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
        entry = getattr(module, attribute)
        assert isinstance(entry, Flow), deployment["name"]
        entry.validate_parameters(deployment.get("parameters", {}))  # names, types, nothing required missing
        assert deployment["work_pool"]["name"] == "autotraj-process"
    names = {deployment["name"] for deployment in spec["deployments"]}
    stages = {"rollout", "score", "repair", "pairs", "sft", "reward-model", "grpo", "evaluate"}
    assert stages | {"pipeline", "pipeline-weekly", "evaluate-nightly"} <= names


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_run_id_is_recorded_in_lineage(prefect_api, home: Path) -> None:
    from flows.import_data import import_queries_flow

    state = import_queries_flow(str(FIXTURES / "messy_queries.jsonl"), "messy", return_state=True)
    assert state.is_completed()
    assert state.result() == "queries/messy@1"
    runs = Lake(home).versions()
    assert {r.version_id for r in runs} == {"queries/messy@1", "rejected_inputs/messy@1"}
    assert all(r.prefect_flow_run_id == str(state.state_details.flow_run_id) for r in runs)


def _task_run_states(name: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
    return sorted(run.state.name for run in runs if run.task_key.startswith(f"{name}_task"))


def test_stage_flows_resume_at_the_failed_stage_without_recomputing(prefect_api, tiny_models, home: Path, cli) -> None:
    import shutil

    from prefect import flow

    from flows.pairs import pairs_flow
    from flows.repair import repair_flow
    from flows.rollout import rollout_flow
    from flows.score import score_flow

    cli("data", "synth", "--n", "6", "--seed", "41")
    overrides = ["rollout.n=2", "rollout.max_new_tokens_per_turn=256", "rollout.max_total_tokens=512"]

    @flow
    def chain(repairer: str) -> dict[str, str]:
        rollouts = rollout_flow("arith-s41-n6", model=tiny_models.teacher, overrides=overrides)
        scores = score_flow(rollouts, overrides=overrides)
        repairs = repair_flow(scores, model=repairer, overrides=overrides)
        return pairs_flow(repairs, overrides=overrides)

    # The repairer's storage is gone: the run fails in repair, after rollout and score finished.
    repairer = Path(tiny_models.repairer)
    away = repairer.with_name("repairer.unmounted")
    shutil.move(repairer, away)
    try:
        failed = chain(str(repairer), return_state=True)
    finally:
        shutil.move(away, repairer)
    assert failed.is_failed() and "not found" in str(failed.result(raise_on_failure=False))
    lake = Lake(home)
    assert [info.version_id for info in lake.versions("rollouts", "arith-s41-n6-rollout")] == [
        "rollouts/arith-s41-n6-rollout@1"
    ]
    assert lake.versions("repairs") == []

    # The same run again resumes at repair: rollout and score come from Prefect's cache.
    outputs = chain(str(repairer))
    assert _task_run_states("rollout") == ["Cached", "Completed"]
    assert _task_run_states("score") == ["Cached", "Completed"]
    assert _task_run_states("repair") == ["Completed"]
    assert len(lake.versions("rollouts", "arith-s41-n6-rollout")) == 1 and len(lake.versions("scores")) == 1
    assert lake.read("rollouts/arith-s41-n6-rollout").num_rows == 12  # 6 queries x 2, no duplicates
    scores = lake.read("scores/arith-s41-n6-rollout").to_pylist()
    needing_repair = sum(row["label"] != "high_quality" for row in scores)
    assert set(outputs) == {"sft_examples", "preference_pairs"}
    assert "repairs/arith-s41-n6-rollout@1" in lake.resolve(outputs["preference_pairs"]).input_versions
    assert lake.read("repairs/arith-s41-n6-rollout").num_rows == needing_repair
