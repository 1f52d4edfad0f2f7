"""Ray beside and across clusters, and what a killed run leaves behind.

A 2-node Ray cluster on this host (`ray start` a head and a worker node, as on two machines, under a
private RAY_TMPDIR): a rollout spreads its generation actors over both nodes and writes the same
trajectories as one process; killing the worker node mid-run aborts it, and the re-run completes on
the head with nothing lost or duplicated. A local run ignores a cluster registered on the host. A
killed `autotraj` leaves neither its Prefect server nor its Ray behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from schemas.lake import Lake
from tasks.bootstrap import mixture, synth
from tests.conftest import free_port, run_stage_here

WORKER_MARK = "autotraj_test_worker"  # a custom resource only the worker node has
SHORT = ["--set", "rollout.max_new_tokens_per_turn=160", "--set", "rollout.temperature=0",
         "--set", "tools.python.workers=1"]  # fmt: skip


@dataclass
class Cluster:
    """A running test cluster: its address, the environment that sees it, and its private temp dir."""

    address: str
    env: dict[str, str]
    base: str


def _processes_under(base: str, mark: str = "") -> list[psutil.Process]:
    """The processes whose command line names `base` (and `mark`)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if base in line and mark in line:
            found.append(process)
    return found


def _kill(processes: list[psutil.Process]) -> None:
    """Kill these processes and everything they started (Ray's agents rename themselves)."""
    everything = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            everything += process.children(recursive=True)
    for process in everything:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    base = tempfile.mkdtemp(prefix="atr-", dir="/tmp")  # short: Ray's socket paths must fit
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env |= {"RAY_TMPDIR": base, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    ray = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus=1", "--disable-usage-stats"]
    health = '{"health_check_period_ms": 500, "health_check_failure_threshold": 3}'  # a lost node shows soon
    subprocess.run([ray, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--system-config={health}",
                    *common], env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
    subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", f'--resources={{"{WORKER_MARK}": 1}}', *common],
                   env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
    try:
        yield Cluster(f"127.0.0.1:{port}", env, base)
    finally:
        _kill(_processes_under(base))
        shutil.rmtree(base, ignore_errors=True)


def _import(lake: Lake, tmp_path: Path, count: int, name: str) -> str:
    from tasks.stages.import_queries import import_queries

    path = mixture.write_jsonl(synth.generate(count, seed=91, prefix=name), tmp_path / f"{name}.jsonl")
    return import_queries(lake, path, name).queries_version.version_id


def _rollout(cluster: Cluster, home: Path, queries: str, model: str, name: str, *extra: str,
             ray_address: bool = True) -> subprocess.Popen[str]:  # fmt: skip
    env = cluster.env | {"AUTOTRAJ_HOME": str(home)} | ({"RAY_ADDRESS": cluster.address} if ray_address else {})
    command = [sys.executable, "-m", "flows.cli", *SHORT, "rollout", "-q", queries, "-m", model, "--n", "2",
               "--shard-size", "1", "--name", name, *extra]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _alive_nodes(cluster: Cluster) -> int:
    script = "import ray; ray.init(address='auto'); print(sum(node['Alive'] for node in ray.nodes()))"
    env = cluster.env | {"RAY_ADDRESS": cluster.address}
    return int(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              check=True, timeout=120).stdout.split()[-1])  # fmt: skip


def _responses(lake: Lake, ref: str) -> dict[str, str]:
    return {row["trajectory_id"]: row["response"] for row in lake.read(ref).to_pylist()}


def test_a_stage_spreads_over_two_nodes_and_survives_losing_one(
    two_nodes: Cluster, tiny_models, lake: Lake, home: Path, tmp_path: Path
) -> None:
    queries = _import(lake, tmp_path, 4, "spread")
    local = run_stage_here("rollout", [item for item in SHORT if item != "--set"], queries=queries,
                           model=tiny_models.teacher, n=2, no_ray=True, name="one-process")  # fmt: skip
    run = _rollout(two_nodes, home, queries, tiny_models.teacher, "two-nodes", "--actors", "2")
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    assert "generated on 2 Ray node(s)" in output  # an actor on each node
    assert _responses(lake, "rollouts/two-nodes") == _responses(lake, local.outputs["rollouts"])  # greedy: equal

    # Lose the worker node mid-run: the run stops; the re-run finishes on the head, nothing lost.
    queries = _import(lake, tmp_path, 24, "lose")
    run = _rollout(two_nodes, home, queries, tiny_models.teacher, "lose-a-node", "--actors", "2")
    assert run.stdout is not None
    seen = []
    for line in run.stdout:  # the first progress line past 0: some shards are committed, most are not
        seen.append(line)
        if re.match(r"rollout trajectories: [1-9]\d*/48", line):
            break
    (raylet,) = [p for p in _processes_under(two_nodes.base, WORKER_MARK) if p.name() == "raylet"]
    _kill([raylet])  # the worker node and everything on it
    output = "".join(seen) + run.communicate(timeout=600)[0]
    committed = {info.dataset for info in lake.versions("rollouts") if info.dataset.startswith("lose-a-node.")}
    kept = sum(lake.read(info).num_rows for info in lake.versions("rollouts") if info.dataset in committed)
    assert run.returncode != 0 and lake.versions("rollouts", "lose-a-node") == [], output
    assert 0 < kept < 48
    deadline = time.monotonic() + 120
    while _alive_nodes(two_nodes) != 1:  # as an operator would, wait until Ray has seen the node go
        assert time.monotonic() < deadline, "Ray did not notice the lost node"
    again = _rollout(two_nodes, home, queries, tiny_models.teacher, "lose-a-node", "--actors", "2")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    rows = lake.read("rollouts/lose-a-node").to_pylist()
    assert len(rows) == 48 and len({row["trajectory_id"] for row in rows}) == 48  # nothing lost or duplicated
    assert f"({48 - kept} generated now)" in output  # what was committed before the loss was kept


def test_a_local_run_ignores_a_cluster_registered_on_the_host(
    two_nodes: Cluster, tiny_models, lake: Lake, home: Path, tmp_path: Path
) -> None:
    assert (Path(two_nodes.base) / "ray" / "ray_current_cluster").exists()  # what `ray.init()` would join
    queries = _import(lake, tmp_path, 2, "beside")
    run = _rollout(two_nodes, home, queries, tiny_models.teacher, "beside", ray_address=False)
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    assert "generated on 1 Ray node(s)" in output and lake.read("rollouts/beside").num_rows == 4


def test_a_killed_run_leaves_neither_its_prefect_server_nor_its_ray(tiny_models, home: Path, tmp_path: Path, cli):
    assert cli("data", "synth", "--n", "4", "--seed", "93").exit_code == 0
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env |= {"AUTOTRAJ_HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect"), "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "flows.cli", *SHORT, "--set", f"rollout.model={tiny_models.teacher}",
               "pipeline", "arith-s93-n4", "--test-queries", "arith-s93-n4"]  # fmt: skip
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli_process = psutil.Process(run.pid)
    deadline = time.monotonic() + 300
    started: list[psutil.Process] = []
    while True:  # until both the Prefect server and Ray run under it
        lines = {}
        for child in cli_process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                lines[child] = " ".join(child.cmdline())
        started = [child for child, line in lines.items() if "flows.cli.reaper" not in line]
        if all(any(name in line for line in lines.values()) for name in ("prefect.server", "raylet")):
            break
        assert run.poll() is None and time.monotonic() < deadline, "the pipeline ended before starting both"
        time.sleep(0.3)
    time.sleep(1)  # the watchdog records what runs for more than its 0.1 s poll
    os.kill(run.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
    run.wait()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [" ".join(p.cmdline())[:120] for p in alive]
