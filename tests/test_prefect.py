"""Prefect integration: deployment entrypoints resolve, and a flow run's id lands in the lineage."""

from __future__ import annotations

import importlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.pipeline import ROLES
from schemas.config import PROJECT_ROOT
from schemas.lake import Lake, LakeError
from tasks.bootstrap import facts
from tests.conftest import FIXTURES, cli_server, run_stage_here
from tests.flaky_server import FlakyServer, flaky_server

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


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (LakeError("no version 'rollouts/x@9'"), False),
        (ValueError("no SFT examples"), False),
        (FileNotFoundError("model not found"), False),
        (ConnectionError("reward model unreachable"), True),
        (RuntimeError("a Ray worker died"), True),
    ],
)
def test_stage_tasks_retry_only_transient_errors(error: Exception, retried: bool) -> None:
    from prefect.states import Failed

    from flows.stage import transient_failure

    assert transient_failure(None, None, Failed(data=error)) is retried


def _task_run_states(name: str, since: datetime) -> list[str]:
    """The states of the `name` stage's task runs since `since` (the module shares one Prefect server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
    return sorted(
        run.state.name for run in runs if run.task_key.startswith(f"{name}_task") and run.expected_start_time >= since
    )


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
    started = datetime.now(UTC)
    shutil.move(repairer, away)
    try:
        failed = chain(str(repairer), return_state=True)
    finally:
        shutil.move(away, repairer)
    assert failed.is_failed() and "does not exist" in str(failed.result(raise_on_failure=False))
    lake = Lake(home)
    assert [info.version_id for info in lake.versions("rollouts", "arith-s41-n6-rollout")] == [
        "rollouts/arith-s41-n6-rollout@1"
    ]
    assert lake.versions("repairs") == []

    # The same run again resumes at repair: rollout and score come from Prefect's cache.
    outputs = chain(str(repairer))
    assert _task_run_states("rollout", started) == ["Cached", "Completed"]
    assert _task_run_states("score", started) == ["Cached", "Completed"]
    assert _task_run_states("repair", started) == ["Completed"]
    assert len(lake.versions("rollouts", "arith-s41-n6-rollout")) == 1 and len(lake.versions("scores")) == 1
    assert lake.read("rollouts/arith-s41-n6-rollout").num_rows == 12  # 6 queries x 2, no duplicates
    scores = lake.read("scores/arith-s41-n6-rollout").to_pylist()
    needing_repair = sum(row["label"] != "high_quality" for row in scores)
    assert set(outputs) == {"sft_examples", "preference_pairs"}
    assert "repairs/arith-s41-n6-rollout@1" in lake.resolve(outputs["preference_pairs"]).input_versions
    assert lake.read("repairs/arith-s41-n6-rollout").num_rows == needing_repair


def _evaluation_rollouts(lake: Lake, eval_results: str) -> list[str]:
    """The rollouts versions an evaluation scored: one per evaluated model."""
    return [ref for ref in lake.resolve(eval_results).input_versions if ref.startswith("rollouts/")]


def _pipeline_overrides(tiny_models) -> list[str]:
    """The test-size models in every role, and budgets that keep each stage to seconds."""
    return [
        f"rollout.model={tiny_models.teacher}",
        f"repair.model={tiny_models.repairer}",
        f"sft.base_model={tiny_models.teacher}",
        "rollout.n=2",
        # At the cpu profile's 0.7 the test teacher's 32 samples were all wrong in one CI run (its seeds
        # follow the models' path); at 0.3 about a third are clean and the rest still need repair.
        "rollout.temperature=0.3",
        "rollout.max_new_tokens_per_turn=256",
        "rollout.max_total_tokens=512",
        "sft.batch_size=4",
        "sft.num_epochs=1",
        "reward_model.batch_size=4",
        "reward_model.num_epochs=1",
        "reward_model.eval_fraction=0.5",  # a few queries: keep some of their pairs held out
        "grpo.max_steps=2",
        "grpo.checkpoint_every=1",
        "grpo.num_generations=2",
        "runtime.train_dispatch=local",  # Ray Train dispatch has its own test (test_sft)
    ]


def _pipeline_outputs(output: str) -> dict[str, Any]:
    """What `autotraj pipeline` printed as its outputs: `key: id` lines (`pairs.sft_examples: id` nested)."""
    outputs: dict[str, Any] = {}
    for key, value in re.findall(r"^([a-z_]+(?:\.[a-z_]+)?): (\S+)$", output, re.MULTILINE):
        step, _, part = key.partition(".")
        if part:
            outputs.setdefault(step, {})[part] = value
        else:
            outputs[step] = value
    return outputs


def test_pipeline_runs_every_stage_and_a_rerun_skips_them_all(prefect_api, tiny_models, home: Path, cli) -> None:
    # The main job's mixture: arithmetic (Python) and fictional towns (search, and Python for two towns).
    cli("data", "synth", "--task", "tir", "--n", "16", "--seed", "3")
    cli("data", "synth", "--task", "tir", "--n", "6", "--seed", "777")
    command = ["pipeline", "tir-s3-n16", "--test-queries", "tir-s777-n6", "--name", "e2e"]
    for override in [*_pipeline_overrides(tiny_models), f"tools.search.corpus={facts.corpus_path(home)}"]:
        command += ["--set", override]
    started = datetime.now(UTC)
    result = cli(*command)
    assert result.exit_code == 0, result.output
    outputs = _pipeline_outputs(result.output)

    lake = Lake(home)
    pairs = outputs["pairs"]
    versions = {key: outputs[key] for key in ("rollouts", "scores", "repairs", "eval_results")} | pairs
    assert {key: lake.resolve(ref).table_name for key, ref in versions.items()} == {
        "rollouts": "rollouts", "scores": "scores", "repairs": "repairs", "sft_examples": "sft_examples",
        "preference_pairs": "preference_pairs", "eval_results": "eval_results",
    }  # fmt: skip
    assert outputs["pairs_hq"]["sft_examples"] == "sft_examples/e2e-hq@1"
    assert lake.read(outputs["rollouts"]).num_rows == 32  # 16 queries x 2 samples
    # Both tools ran for real: in the teacher's rollouts, and in the repairs and evaluated models' answers.
    for versions in ([outputs["rollouts"]], [outputs["repairs"], *_evaluation_rollouts(lake, outputs["eval_results"])]):
        rows = [row for version in versions for row in lake.read(version).to_pylist()]
        assert {s["tool"] for row in rows for s in row["segments"] if s["kind"] == "tool"} == {"python", "search"}
    assert lake.read(outputs["scores"]).num_rows == 32
    # Each stage read the version the stage before it wrote.
    assert lake.resolve(outputs["scores"]).input_versions == (outputs["rollouts"],)
    assert outputs["scores"] in lake.resolve(outputs["repairs"]).input_versions
    registered = {lake.read(info).column("model_id")[0].as_py(): info for info in lake.versions("models")}
    assert {outputs["sft"], outputs["sft_hq"], outputs["reward_model"], outputs["grpo"]} <= set(registered)
    assert pairs["sft_examples"] in registered[outputs["sft"]].input_versions
    # GRPO started from that SFT model, with that reward model.
    grpo_inputs = registered[outputs["grpo"]].input_versions
    assert {registered[outputs["sft"]].version_id, registered[outputs["reward_model"]].version_id} <= set(grpo_inputs)
    # GRPO's own rollouts (logged per step, not stored) called both tools too.
    calls = lake.sql(
        "SELECT name, sum(value) AS calls FROM train_metrics WHERE model_id IN (?, ?) AND name LIKE 'rollout/%' "
        "GROUP BY name", [outputs["grpo"], outputs["grpo_outcome"]],
    ).to_pylist()  # fmt: skip
    assert {row["name"] for row in calls if row["calls"] > 0} == {"rollout/python_calls", "rollout/search_calls"}
    # The ablation: the same GRPO with no reward model.
    outcome_inputs = set(registered[outputs["grpo_outcome"]].input_versions)
    assert registered[outputs["sft"]].version_id in outcome_inputs
    assert registered[outputs["reward_model"]].version_id not in outcome_inputs

    results = lake.read(outputs["eval_results"]).to_pylist()
    evaluated = {row["model_id"] for row in results}
    teacher_label = f"{Path(tiny_models.directory).name}-teacher"  # a path is labelled by its last two parts
    assert evaluated == {teacher_label, outputs["sft_hq"], outputs["sft"], outputs["grpo_outcome"], outputs["grpo"]}
    assert {row["label"] for row in results} == set(ROLES)  # shown by role, not by hash
    info = lake.resolve(outputs["eval_results"])
    (comparisons,) = [v for v in lake.versions(run_id=info.run_id) if v.table_name == "eval_comparisons"]
    subsets = {"all", "task=math", "task=qa", "difficulty=2", "difficulty=3"}  # the held-out questions' tasks, strata
    assert {row["subset"] for row in results} == subsets
    assert lake.read(comparisons).num_rows == 10 * 4 * 5  # 5 models: 10 pairs, 4 metrics, 5 subsets
    assert "SFT HQ + repaired − SFT HQ only" in result.output  # the ablations' paired differences
    assert {row["metric"] for row in results} >= {"accuracy", "mean_quality", "tool_calls", "mean_tokens"}
    assert {row["n_examples"] for row in results if row["subset"] == "all"} == {6}
    assert (home / "reports" / "e2e.png").stat().st_size > 0
    # Each stage's artifact is a readable markdown table; the chart is linked from its own artifact.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = {artifact.key: artifact for artifact in client.read_artifacts()}
    evaluation = artifacts["evaluate-e2e"]
    assert evaluation.type == "markdown" and "| benchmark | model |" in evaluation.data and "chart:" in evaluation.data
    chart = (home / "reports" / "e2e.png").as_uri()
    assert f"({chart})" in artifacts["evaluate-e2e-chart"].data  # Prefect stores a link artifact as a markdown link
    rollout_name = lake.resolve(outputs["rollouts"]).dataset.replace(".", "-")
    assert "| finish reason | trajectories |" in artifacts[f"rollout-{rollout_name}"].data, sorted(artifacts)

    # The same run again: every stage task comes from the cache, and the lake gains no version.
    versions_before = len(lake.versions())
    again = cli(*command)
    assert again.exit_code == 0 and _pipeline_outputs(again.output) == outputs
    for stage in ("rollout", "score", "repair", "pairs", "sft", "reward_model", "grpo", "evaluate"):
        states = _task_run_states(stage, started)
        runs = 2 if stage in ("pairs", "sft", "grpo") else 1  # two pairs sets, two SFT models, two GRPO runs
        assert states.count("Cached") == runs and states.count("Completed") == runs, (stage, states)
    assert len(lake.versions()) == versions_before


def test_a_stage_deployments_parameters_select_its_input_version(prefect_api, tiny_models, home: Path, cli) -> None:
    from flows.rollout import rollout_flow
    from flows.score import score_flow
    from schemas.lake import Lineage

    cli("data", "synth", "--n", "4", "--seed", "5")
    overrides = _pipeline_overrides(tiny_models)
    lake = Lake(home)
    first = lake.resolve(rollout_flow("arith-s5-n4", overrides=overrides))
    edited = lake.read(first).slice(0, 3)  # say, a hand-picked subset, recorded with the same input
    second = lake.write("rollouts", first.dataset, edited, Lineage("edit", input_versions=first.input_versions))
    assert (first.version, first.row_count, second.version, second.row_count) == (1, 8, 2, 3)
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "score")
    for ref, name, expected in ((f"{first.dataset}@1", "pinned", first), (first.dataset, "latest", second)):
        # What `prefect deployment run score --param rollouts=…` hands the flow.
        parameters = deployment["parameters"] | {"rollouts": ref, "name": name, "overrides": overrides}
        scores = lake.resolve(score_flow(**score_flow.validate_parameters(parameters)))
        assert scores.input_versions == (expected.version_id,)
        assert lake.read(scores).num_rows == expected.row_count


def test_an_edited_prompt_retrains_sft_and_an_unrelated_change_does_not(
    prefect_api, tiny_models, home: Path, tmp_path: Path
) -> None:
    import random

    from flows.sft import sft_flow
    from schemas.lake import Lineage
    from tasks.bootstrap import synth
    from tasks.core.prompts import load_prompt

    rows = []
    for index, problem in enumerate(synth.generate(8, seed=43, prefix="stale")):
        segments = [{"kind": "model" if kind == "model" else "tool", "tool": None if kind == "model" else kind,
                     "text": text, "token_ids": [], "n_tokens": 0}
                    for kind, text in synth.render(problem, "clean", random.Random(index))]  # fmt: skip
        rows.append({"example_id": f"s{index}", "query_id": problem.id, "origin": "repair", "source_id": f"r{index}",
                     "prompt": problem.question, "segments": segments, "quality": 1.0})  # fmt: skip
    lake = Lake(home)
    lake.write("sft_examples", "stale", rows, Lineage("pairs"))
    system = tmp_path / "system.txt"
    system.write_text(load_prompt(None, "rollout.system_prompt_file"))
    overrides = [f"rollout.system_prompt_file={system}", "runtime.train_dispatch=local", "sft.batch_size=4"]
    arguments = {"examples": "stale", "base": tiny_models.teacher, "max_steps": 2}
    started = datetime.now(UTC)

    first = sft_flow(**arguments, overrides=overrides)
    system.write_text(system.read_text() + "\nAlways check the result of your code before you answer.")
    edited = sft_flow(**arguments, overrides=overrides)  # SFT reads the system prompt: a new model
    assert edited != first
    assert _task_run_states("sft", started) == ["Completed", "Completed"]
    unrelated = sft_flow(**arguments, overrides=[*overrides, "rollout.temperature=0.3", "grpo.max_steps=3"])
    assert unrelated == edited and _task_run_states("sft", started) == ["Cached", "Completed", "Completed"]
    assert [lake.read(info).column("model_id")[0].as_py() for info in lake.versions("models", "stale")] == [
        first,
        edited,
    ]
    # Without Prefect (the CLI), the lake alone gives the same answers.
    assert run_stage_here("sft", overrides, **arguments).outputs["model"] == edited
    system.write_text(system.read_text() + " Be brief.")
    assert run_stage_here("sft", overrides, **arguments).outputs["model"] not in (first, edited)


def test_a_pipeline_whose_pairs_are_empty_stops_there_without_retries(prefect_api, tiny_models, home: Path, cli):
    from flows.pipeline import pipeline_flow

    cli("data", "synth", "--n", "4", "--seed", "44")
    nothing_passes = [  # no trajectory is high quality and no repair is accepted
        "score.all_high_quality_threshold=2", "score.best_high_quality_threshold=2",
        "repair.accept_threshold_wrong=1.0", "repair.accept_threshold_correct_low_quality=1.0", "rollout.n=1",
        "runtime.stage_retry_delay_s=0",
    ]  # fmt: skip
    started = datetime.now(UTC)
    overrides = [*_pipeline_overrides(tiny_models), *nothing_passes]
    state = pipeline_flow("arith-s44-n4", "arith-s44-n4", name="empty", overrides=overrides, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "sft_examples/empty: 0 SFT examples from repairs/empty@1" in message and "0 high-quality" in message
    assert _task_run_states("pairs", started) == ["Failed"]  # once: a permanent error is not retried
    assert _task_run_states("sft", started) == []  # the pipeline stopped at pairs
    assert Lake(home).versions("sft_examples") == []


def test_errored_rows_keep_a_stage_uncached_until_a_healthy_rerun_completes_them(
    prefect_api, tiny_models, home: Path, cli
) -> None:
    from flows.repair import repair_flow
    from flows.rollout import rollout_flow
    from flows.score import score_flow

    cli("data", "synth", "--n", "6", "--seed", "47")
    lake = Lake(home)
    flaky = FlakyServer(every=3, stall_s=4.0)  # every third request fails on each attempt, in turn each way
    overrides = [
        "rollout.n=2", "rollout.temperature=0.7", "rollout.max_new_tokens_per_turn=256", "rollout.max_total_tokens=512",
        f"rollout.tokenizer={tiny_models.teacher}", f"repair.tokenizer={tiny_models.teacher}", "tools.python.workers=1",
        "requests.timeout_s=3", "requests.attempts=2", "requests.backoff_s=0.05", "runtime.stage_retries=0",
        "runtime.stage_retry_delay_s=0",
    ]  # fmt: skip

    def run(stage_flow: Any, source: str, dataset: str) -> tuple[Any, list[str]]:
        started = datetime.now(UTC)
        state = stage_flow(source, model=model, no_ray=True, overrides=overrides, return_state=True)
        return state, _task_run_states(stage_flow.name, started)

    with cli_server("serve-model", "--model", tiny_models.teacher) as upstream:
        flaky.upstream = upstream
        with flaky_server(flaky) as url:
            model = f"{url}/v1#default"
            for stage_flow, source, dataset, what in (
                (rollout_flow, "arith-s47-n6", "arith-s47-n6-rollout", "trajectories"),
                (repair_flow, "arith-s47-n6-rollout", "arith-s47-n6-rollout", "repair attempts"),
            ):
                table = "rollouts" if stage_flow is rollout_flow else "repairs"
                if table == "repairs":
                    assert score_flow(f"rollouts/{dataset}", overrides=overrides) == f"scores/{dataset}@1"
                flaky.healthy = False
                failed, states = run(stage_flow, source, dataset)
                # Errored rows: the stage task fails (a retryable failure; retries are off here), so nothing is cached.
                assert failed.is_failed() and states == ["Failed"], states
                message = str(failed.result(raise_on_failure=False))
                errored = int(re.search(rf"(\d+) of \d+ {what} errored", message).group(1))
                assert errored > 0 and "(after 2 attempts)" in message and "re-run the same command" in message
                *_, incomplete = before = lake.versions(table, dataset)
                assert incomplete.errored_rows == errored and not incomplete.complete
                flaky.healthy = True
                healed, states = run(stage_flow, source, dataset)
                assert healed.is_completed() and states == ["Completed"], states
                *_, complete = versions = lake.versions(table, dataset)
                assert len(versions) == len(before) + 1 and complete.complete  # one new version
                rows = lake.read(complete).to_pylist()
                ids = [row["trajectory_id" if table == "rollouts" else "repair_id"] for row in rows]
                assert len(ids) == len(set(ids)) == incomplete.row_count  # the errored ones replaced, none added
                assert sum(row["finish_reason"] == "error" for row in rows) == 0
                again, states = run(stage_flow, source, dataset)
                assert again.is_completed() and states == ["Cached"] and lake.versions(table, dataset) == versions
    assert set(flaky.faults) == {"500", "drop", "truncated_body", "truncated_json", "stall"}


MOVED_SCRIPT = """
import sys
from flows.rollout import rollout_flow
print("OUTPUT", rollout_flow(sys.argv[1], model=sys.argv[2], no_ray=True, overrides=sys.argv[3:]), flush=True)
"""


def test_a_recloned_checkout_on_the_same_lake_reuses_finished_stages(
    prefect_api, tiny_models, home: Path, cli, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from flows.rollout import rollout_flow

    cli("data", "synth", "--n", "2", "--seed", "48")
    overrides = ["rollout.n=1", "rollout.max_new_tokens_per_turn=128", "rollout.max_total_tokens=256",
                 "tools.python.workers=1"]  # fmt: skip
    started = datetime.now(UTC)
    first = rollout_flow("arith-s48-n2", model=tiny_models.teacher, no_ray=True, overrides=overrides)
    # Another checkout of the same commit, elsewhere: its default search corpus (../shared beside the
    # checkout) is another absolute path, which used to change every stage's cache key.
    clone = tmp_path / "elsewhere" / "autotraj"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True)
    env = {**os.environ, "AUTOTRAJ_HOME": str(home), "PYTHONPATH": str(clone)}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the same Prefect server as this test's runs
    moved = subprocess.run([sys.executable, "-c", MOVED_SCRIPT, "arith-s48-n2", tiny_models.teacher, *overrides],
                           cwd=clone, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert f"OUTPUT {first}" in moved.stdout
    assert _task_run_states("rollout", started) == ["Cached", "Completed"]  # the clone's run: Cached
    assert len(Lake(home).versions("rollouts", "arith-s48-n2-rollout")) == 1


def test_deploy_all_deployment_ls_and_a_ui_retry_through_a_worker(prefect_api, home: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "250"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([prefect, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="autotraj-process", type="process"), overwrite=True)
    deployed = run("--no-prompt", "deploy", "--all")  # every deployment, not only the first (422s before)
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    assert deployed.stdout.count("successfully created") == len(spec)
    listed = run("deployment", "ls").stdout
    with get_client(sync_client=True) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
    assert {deployment["name"] for deployment in spec} == {name.split("/")[1] for name in names}
    assert all(name in listed for name in names)

    # A deployment run that fails, its cause fixed, and Retry pressed in the UI: the worker runs it again.
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("import-queries/import-queries")
        queries = tmp_path / "later.jsonl"
        run_id = client.create_flow_run_from_deployment(
            deployment.id, parameters={"path": str(queries), "name": "later"}
        ).id

        def work_once() -> Any:
            run("worker", "start", "--pool", "autotraj-process", "--run-once")
            return client.read_flow_run(run_id)

        failed = work_once()
        assert failed.state.is_failed(), failed.state
        shutil.copy(FIXTURES / "messy_queries.jsonl", queries)
        # The request the UI's Retry button sends.
        retry = {
            "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
            "force": False,
        }
        answer = httpx.post(f"{PREFECT_API_URL.value()}/flow_runs/{run_id}/set_state", json=retry, timeout=30)
        assert answer.status_code in (200, 201) and answer.json()["status"] == "ACCEPT", answer.text
        retried = work_once()
        assert retried.state.is_completed(), retried.state
        assert retried.run_count == 2
    assert [info.version_id for info in Lake(home).versions("queries")] == ["queries/later@1"]
