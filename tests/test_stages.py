"""Each stage is declared once: its flow's parameters, its CLI options and its deployments all come from
(or are checked against) its spec, and the pipeline steps name only declared stages and parameters."""

from __future__ import annotations

import inspect

import typer
import yaml

from flows.cli import app
from flows.cli.stages import COMMAND_NAMES
from flows.pipeline import STAGE_FLOWS, STEPS
from flows.stage import REQUEST_EXTRAS, STAGES
from schemas.config import PROJECT_ROOT


def test_every_stage_flow_takes_exactly_its_specs_parameters() -> None:
    assert set(STAGE_FLOWS) == set(STAGES)
    for name, spec in STAGES.items():
        parameters = inspect.signature(STAGE_FLOWS[name].fn).parameters
        assert set(parameters) == {*spec.parameters(), *REQUEST_EXTRAS}, name
        for option in spec.options:  # the flow's defaults are the spec's
            assert parameters[option.name].default == option.default, (name, option.name)
        for item in (*spec.inputs, *spec.models):  # required exactly where nothing else supplies it
            assert (parameters[item.name].default is inspect.Parameter.empty) == item.required, (name, item.name)


def test_every_stage_command_has_exactly_its_specs_options() -> None:
    commands = typer.main.get_command(app).commands
    for name, spec in STAGES.items():
        command = commands[COMMAND_NAMES.get(name, spec.command)]
        options = {param.name: param for param in command.params if param.name != "help"}
        assert set(options) == {*spec.parameters(), "name"}, name
        for item in (*spec.inputs, *spec.models):
            assert options[item.name].required == item.required, (name, item.name)
        assert command.help.startswith(spec.description.rstrip(".")), name


def test_deployments_and_pipeline_steps_use_declared_stages(monkeypatch) -> None:
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    monkeypatch.chdir(PROJECT_ROOT)
    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    entrypoints = {deployment["entrypoint"] for deployment in deployments}
    for name, flow in STAGE_FLOWS.items():
        entrypoint = f"flows/{flow.fn.__module__.split('.')[-1]}.py:{flow.fn.__name__}"
        assert entrypoint in entrypoints, name
        # `prefect deploy` reads a flow's parameters from its source: they are the spec's too.
        schema = parameter_schema_from_entrypoint(entrypoint)
        assert set(schema.properties) == {*STAGES[name].parameters(), *REQUEST_EXTRAS}, name
    for step in STEPS:
        spec = STAGES[step.stage]
        assert set(step.arguments) <= {*spec.parameters(), "name"}, step.key
    for spec in STAGES.values():  # a stage reads the tables of its inputs and writes something
        assert {item.table for item in spec.inputs} <= set(spec.reads) and spec.writes, spec.name
