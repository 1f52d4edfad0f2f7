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
        assert isinstance(getattr(module, attribute), Flow), deployment["name"]
        assert deployment["work_pool"]["name"] == "autotraj-process"


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
