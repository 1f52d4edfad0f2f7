"""Shared fixtures: an isolated data directory and lake per test, and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.lake import Lake

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


def run_worker(*args: str, home: Path) -> subprocess.Popen[str]:
    """Start tests/lake_worker.py in its own process against `home`."""
    env = {**os.environ, "AUTOTRAJ_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "lake_worker.py"), *args],
        env=env,
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
    """The test-size bootstrap build (tokenizer, teacher, repairer), trained once per test session, or
    reused from $AUTOTRAJ_TEST_MODELS when that names a directory (local runs; CI builds afresh)."""
    from tasks.bootstrap.build import bootstrap

    return bootstrap(os.environ.get("AUTOTRAJ_TEST_MODELS") or tmp_path_factory.mktemp("models"), "test", seed=0)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the whole session (starting it costs seconds), shut down at the end."""
    import ray

    from tasks.core.ray import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()
