"""Shared fixtures: an isolated data directory and lake per test, and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from schemas.lake import Lake
from tests.sandbox_support import SAFE_TIERS, SECRET, sandbox_config
from tools_sandbox.executor import SandboxPool

TESTS_DIR = Path(__file__).parent
FIXTURES = TESTS_DIR / "fixtures"
SHARED_DATA = TESTS_DIR.parent.parent / "shared" / "data"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yield its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def cli_server(*args: str, env: dict[str, str] | None = None, startup_s: float = 120) -> Iterator[str]:
    """`python -m flows.cli <args> --port P` (a server command) on a free 127.0.0.1 port: its URL once
    /health answers 200; stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "flows.cli", *args, "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{' '.join(args[:1])} did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module", params=SAFE_TIERS)
def pool(request: pytest.FixtureRequest):
    """A two-worker pool per safe tier, started with a secret in the parent's environment."""
    os.environ["AUTOTRAJ_TEST_SECRET"] = SECRET
    try:
        with SandboxPool(sandbox_config(), workers=2, tier=request.param) as sandbox:
            yield sandbox
    finally:
        os.environ.pop("AUTOTRAJ_TEST_SECRET", None)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh AUTOTRAJ_HOME for this test."""
    path = tmp_path / "home"
    monkeypatch.setenv("AUTOTRAJ_HOME", str(path))
    return path


@pytest.fixture()
def lake(home: Path) -> Lake:
    """A lake in the test's data directory."""
    return Lake(home)


@pytest.fixture()
def cli(home: Path):
    """Invoke `autotraj …` in-process against the test's data directory."""
    from flows.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input, catch_exceptions=False)

    return invoke


def run_worker(*args: str, home: Path, stdin: bool = False) -> subprocess.Popen[str]:
    """Start tests/lake_worker.py in its own process against `home` (`stdin`: a pipe the test can write to)."""
    env = {**os.environ, "AUTOTRAJ_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "lake_worker.py"), *args],
        env=env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_stage_here(stage: str, overrides: list[str] | None = None, profile: str = "cpu", **arguments: Any) -> Any:
    """Run a stage through the stage entry the CLI and the flows call (no Prefect flow run: no cache)."""
    from flows.stage import STAGES, run_stage

    return run_stage(STAGES[stage], arguments, profile, overrides)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """The test-size bootstrap build (tokenizer, teacher, repairer) committed in tests/fixtures/models
    (`make test-models` builds it with `autotraj bootstrap --size test`), in a data directory of its own.
    Built here instead when the bootstrap recipe has changed since (the bootstrap test then fails)."""
    from tasks.bootstrap.build import bootstrap

    home = tmp_path_factory.mktemp("models-home")
    shutil.copytree(FIXTURES / "models", home / "models")
    return bootstrap(home, "test", seed=0)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the whole session (starting it costs seconds), shut down at the end."""
    import ray

    from tasks.core.ray import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


def _postgres_binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    import glob
    import shutil

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed (`make test` installs Debian's postgresql package)")
    return found


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A private PostgreSQL server on a free 127.0.0.1 port for this session; call it with a database
    name to create that database and get its lake catalog URL."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix="autotraj-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if as_postgres:
        shutil.chown(root, "postgres")
    root.chmod(0o755)
    port = free_port()
    subprocess.run([*as_postgres, _postgres_binary("initdb"), "-D", str(root / "data"), "-A", "trust", "-U",
                    "postgres", "--no-sync"], check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_postgres, _postgres_binary("pg_ctl"), "-D", str(root / "data"), "-o", options, "-l",
                    str(root / "server.log"), "-w", "start"], check=True, capture_output=True)  # fmt: skip

    def database(name: str) -> str:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-q", "-c",
                        f'CREATE DATABASE "{name}"'], check=True, capture_output=True)  # fmt: skip
        return f"postgres:dbname={name} host=127.0.0.1 port={port} user=postgres"

    try:
        yield database
    finally:
        subprocess.run([*as_postgres, _postgres_binary("pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
