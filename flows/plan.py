"""The pipeline's dry run: every step resolved and checked, nothing loaded, nothing written.

For each step of flows/pipeline.py: its input versions (existing ones resolved in the lake, the
others named by the step that makes them), its output, its models (references resolved; a served
model's server asked for its model list; its tokenizer loaded, a local model's directory checked),
where it runs (Ray actors or this process; a Ray Train job on CPU or GPUs, with its DeepSpeed
config), and the tools it needs (the search corpus when a query needs search). Anything missing is
an error that names it.
"""

from __future__ import annotations

import importlib.util
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.pipeline import STEPS, Out, Source, Step, default_name, resolve_source, step_overrides
from flows.stage import STAGES
from schemas.config import ConfigError, PipelineConfig, load_config
from schemas.lake import Lake, LakeError
from tasks.core.models import ModelRef
from tasks.core.stage import StageSpec, input_reference, model_reference, resolve_options, resolve_reference

GENERATING = ("rollout", "repair", "grpo", "evaluate")  # stages that run the model's tools
PENDING = "← "  # how the plan names an output an earlier step makes


@dataclass
class PlannedStep:
    """One row of the plan."""

    step: str
    stage: str
    reads: list[str]
    writes: list[str]
    models: list[str]
    runs_on: str


@dataclass
class Plan:
    """The whole pipeline's plan, and everything that would stop it."""

    steps: list[PlannedStep] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        """Record a problem once."""
        if message not in self.errors:
            self.errors.append(message)


def _reachable(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _check_lake(config: PipelineConfig, plan: Plan) -> Lake | None:
    """The lake, when it can be read without creating anything."""
    runtime = config.runtime
    lake = Lake.from_config(runtime)
    if lake.catalog_url.startswith("postgres:"):
        dsn = dict(part.split("=", 1) for part in lake.catalog_url.removeprefix("postgres:").split() if "=" in part)
        host, port = dsn.get("host", "localhost"), int(dsn.get("port", 5432))
        if (why := _reachable(host, port)) is not None:
            plan.error(f"lake catalog {lake.catalog_url}: PostgreSQL at {host}:{port} cannot be reached ({why})")
            return None
    elif not Path(lake.catalog_url.removeprefix("sqlite:")).exists():
        plan.error(f"the lake at {lake.lake_dir} has no catalog yet: import the queries first (autotraj data import)")
        return None
    return lake


def _check_runtime(config: PipelineConfig, plan: Plan) -> None:
    """Ray, GPUs, DeepSpeed and vLLM, as the config asks for them."""
    runtime = config.runtime
    if runtime.ray_address:
        match = re.match(r"^(?:ray://)?([^:/]+):(\d+)", runtime.ray_address)
        why = _reachable(match[1], int(match[2])) if match else "not host:port"
        if why is not None:
            plan.error(f"runtime.ray_address {runtime.ray_address}: the Ray cluster cannot be reached ({why})")
    if runtime.train_gpus:
        import torch

        found = torch.cuda.device_count()
        if found < runtime.train_gpus:
            plan.error(f"runtime.train_gpus={runtime.train_gpus}, but this machine has {found} GPU(s)")
        if runtime.deepspeed_config:
            try:
                runtime.deepspeed_path()
            except ConfigError as exc:
                plan.error(str(exc))
            if importlib.util.find_spec("deepspeed") is None:
                plan.error(f"runtime.deepspeed_config={runtime.deepspeed_config}: DeepSpeed is not installed "
                           "(pip install -e '.[gpu]')")  # fmt: skip
    backends = (config.rollout.backend, config.repair.backend, config.evaluate.backend)
    wants_vllm = config.grpo.use_vllm or "vllm" in backends
    if wants_vllm and importlib.util.find_spec("vllm") is None:
        plan.error("vLLM is not installed, but the config uses it (a vllm backend or grpo.use_vllm): "
                   "pip install -e '.[gpu]'")  # fmt: skip


def _check_model(ref: ModelRef, plan: Plan) -> None:
    """A served model answers and its tokenizer loads; a local model is a model directory."""
    if ref.kind == "served":
        from tasks.generation.llm import load_tokenizer
        from tasks.generation.served import probe_served

        if (why := probe_served(ref)) is not None:
            plan.error(why)
        try:
            load_tokenizer(ref.tokenizer or "", local_only=True)
        except FileNotFoundError as exc:
            plan.error(f"served model {ref.location}: {exc}")
    elif ref.local and not (Path(ref.path or "") / "config.json").exists():
        plan.error(f"model {ref.reference!r}: {ref.path} is not a model directory (no config.json)")


def _describe(ref: ModelRef) -> str:
    where = "" if ref.label == ref.location else f": {ref.location}"
    return f"{ref.label} ({ref.backend}{where})"


def _models(spec: StageSpec, step: Step, config: PipelineConfig, lake: Lake | None, values: dict, plan: Plan) -> list:
    """Each model of a step, resolved and checked (models made by earlier steps are named, not checked)."""
    shown = []
    tokenizer = resolve_options(spec, config, values).get("tokenizer")
    for model in spec.models:
        value = model_reference(model, config, values.get(model.name))
        if value is None:
            shown.append(f"{model.name}: none")
            continue
        for reference in value if isinstance(value, list) else [value]:
            if reference.startswith(PENDING):
                shown.append(f"{model.name}: {reference}")
                continue
            try:
                ref = resolve_reference(spec, model, config, lake, reference, tokenizer)
            except (FileNotFoundError, ValueError) as exc:
                plan.error(f"{step.key}: {exc}")
                shown.append(f"{model.name}: {reference} ✗")
                continue
            _check_model(ref, plan)
            shown.append(f"{model.name}: {_describe(ref)}")
    return shown


def _runs_on(spec: StageSpec, config: PipelineConfig, values: dict[str, Any]) -> str:
    runtime = config.runtime
    if spec.kind == "train":
        if runtime.train_dispatch == "local":
            return "this process"
        if runtime.train_gpus:
            deepspeed = f", DeepSpeed {runtime.deepspeed_config}" if runtime.deepspeed_config else ""
            return f"Ray Train: {runtime.train_gpus} GPU worker(s), bf16{deepspeed}"
        return "Ray Train: 1 CPU worker, fp32"
    if spec.name in GENERATING:
        return "this process" if values.get("no_ray") else f"Ray actors ×{values.get('actors') or 1}"
    return "this process"


def _check_tools(config: PipelineConfig, tasks: set[str], plan: Plan) -> None:
    from tasks.generation.tools import needs_search
    from tools_sandbox.isolation import IsolationUnavailable, resolve

    try:
        resolve(config.tools.python.tier)
    except IsolationUnavailable as exc:
        plan.error(f"tools.python.tier={config.tools.python.tier}: {exc}")
    search = config.tools.search
    if needs_search(tasks):
        if search.backend == "http" and not search.url:
            plan.error("tools.search.backend=http needs tools.search.url")
        elif search.backend == "local" and not Path(search.corpus).exists():
            plan.error(f"tools.search.corpus {search.corpus} not found, and some queries need search")


def plan_pipeline(
    queries: str, test_queries: str, name: str | None, profile: str, overrides: Sequence[str]
) -> Plan:
    """Resolve and check every step of the pipeline without running, loading or writing anything."""
    plan = Plan()
    name = name or default_name(queries)
    config = load_config(profile, list(overrides))
    lake = _check_lake(config, plan)
    _check_runtime(config, plan)
    arguments = {"queries": queries, "test_queries": test_queries}
    datasets: dict[str, str] = {}  # step -> its output dataset name
    tasks: set[str] = set()
    for argument, reference in arguments.items():
        if lake is None:
            continue
        try:
            info = lake.resolve(reference, "queries")
        except LakeError as exc:
            plan.error(f"{argument}: {exc}")
            continue
        arguments[argument] = info.version_id
        tasks |= set(lake.read(info, columns=["task"]).column("task").to_pylist())
    for step in STEPS:
        spec = STAGES[step.stage]
        config_step = load_config(profile, step_overrides(step, overrides))
        values = {key: _planned(source, arguments, name, config_step) for key, source in step.arguments.items()}
        reads = []
        for item in spec.inputs:
            value = input_reference(item, config_step, values.get(item.name))
            reads += value if isinstance(value, list) else [value]
        first = step.arguments[spec.inputs[0].name]
        first = first[0] if isinstance(first, list) else first
        source = datasets[first.step] if isinstance(first, Out) else default_name(str(reads[0]))
        output = values.get("name") or spec.default_name.format(input=source)
        datasets[step.key] = output
        writes = [f"{table}/{output}" for table in spec.writes if table in (*spec.writes[:1], "preference_pairs")]
        models = _models(spec, step, config_step, lake, values, plan)
        if spec.name in GENERATING:
            _check_tools(config_step, tasks, plan)
        plan.steps.append(PlannedStep(step.key, spec.name, [str(r) for r in reads], writes, models,
                                      _runs_on(spec, config_step, values)))  # fmt: skip
    return plan


def _planned(source: Source, arguments: dict[str, str], name: str, config: PipelineConfig) -> Any:
    """A step argument as the plan shows it: an earlier step's output is named, not resolved."""
    if isinstance(source, list):
        return [_planned(item, arguments, name, config) for item in source]
    if isinstance(source, Out):
        return f"{PENDING}{source.step}" + (f".{source.output}" if source.output else "")
    return resolve_source(source, arguments, {}, name, config)
