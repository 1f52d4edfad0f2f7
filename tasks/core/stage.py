"""How a stage is declared, once: the single source of its cache key, lineage, default names and options.

A `StageSpec` names the stage, the tables it reads and writes, the config sections and files its
output depends on, its parameters (input versions, models, options) and its run function. From it:
- `prepare` resolves a request (input references, model references, options) into a `StageContext`
  and computes the stage's **fingerprint**: the config it reads, the content of the files it reads,
  the identity of its models and the options that change its output;
- the lineage (`runs.config_hash` = hash of the fingerprint, `input_versions` = the inputs and
  registered models), which the lake uses to return an existing version instead of writing a copy
  and the training stages use to find a model already trained;
- `cache_key`, the Prefect cache key: the fingerprint, the inputs, the output name, the code
  version and the lake;
- the CLI's options and the flows' parameters (flows/cli/stages.py builds the commands from the spec;
  tests check every flow's parameters against it).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from schemas.config import PROJECT_ROOT, PipelineConfig, config_hash
from schemas.lake import DATASET_NAME, Lake, Lineage, VersionInfo, code_version
from tasks.core.errors import ModelReferenceError
from tasks.core.models import SERVED_BACKENDS, ModelRef, resolve_model
from tasks.core.prompts import PROMPT_FILES, config_value, prompt_path

Progress = Callable[[int, int, str], None]  # (done, total, what the last step said)


@dataclass(frozen=True)
class Input:
    """A dataset version the stage reads: `name`, `name@N` or `table/name@N`."""

    name: str
    table: str
    help: str
    many: bool = False  # a list of versions
    config: str | None = None  # the config key that gives a default (a list for `many`)
    short: str | None = None  # the CLI's short flag

    @property
    def required(self) -> bool:
        """Whether a request must name it (no config key supplies it)."""
        return self.config is None


@dataclass(frozen=True)
class Model:
    """A model the stage uses, named by a model reference (tasks/core/models.py)."""

    name: str
    help: str
    config: str | tuple[str, ...] | None = None  # the config key(s) giving the default: the first one set
    backend: str | None = None  # the config key naming the backend of local models
    many: bool = False
    optional: bool = False  # may be absent (GRPO without a reward model)
    endpoint_ok: bool = False  # a server URL without a served name is fine (serve-rm)
    local: bool = False  # must be weights on this machine (a model to train)
    short: str | None = None

    @property
    def required(self) -> bool:
        """Whether a request must name it (no config key supplies it, and it may not be absent)."""
        return self.config is None and not self.optional


@dataclass(frozen=True)
class Option:
    """A stage option: shapes the output (`affects_output`, part of the fingerprint) or only the execution."""

    name: str
    type: type
    help: str
    default: Any = None
    config: str | None = None  # the config key that gives the default
    affects_output: bool = True


@dataclass(frozen=True)
class SummaryTable:
    """What a stage shows of its result: on the command line, and as the Prefect artifact."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass
class StageResult:
    """What a stage wrote: output ids (version or model ids), metrics, a summary, and notes to show."""

    outputs: dict[str, str]
    metrics: dict[str, Any]
    summary: SummaryTable | None = None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # finished, but something needs the user (errored rows to retry)


def errored_problem(errored: int, total: int, what: str, example: str | None) -> str | None:
    """A stage result's problem when `errored` of its `total` rows failed: how many, one error, how to retry."""
    if not errored:
        return None
    return (
        f"{errored} of {total} {what} errored (e.g. {(example or 'no error text')[:300]}); the version is marked "
        "incomplete: re-run the same command, or retry the flow run, to generate exactly those again"
    )


@dataclass
class StageContext:
    """A prepared stage run: config, resolved inputs and models, options, output name and lineage."""

    stage: str
    config: PipelineConfig
    inputs: dict[str, Any]  # name -> VersionInfo (or a list of them)
    models: dict[str, Any]  # name -> ModelRef (a list, or None)
    options: dict[str, Any]
    name: str
    fingerprint: dict[str, Any]
    lineage: Lineage
    progress: Progress | None = None

    @functools.cached_property
    def lake(self) -> Lake:
        """The lake this run reads and writes."""
        return Lake.from_config(self.config.runtime)

    @property
    def digest(self) -> str:
        """The hash of the fingerprint and the inputs: names this run's ids and directories."""
        return config_hash({"fingerprint": self.fingerprint, "inputs": self.lineage.input_versions})


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared once."""

    name: str
    kind: Literal["data", "train"]  # train: dispatched as a training job (Ray Train, or in-process)
    description: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    config: tuple[str, ...]  # config sections or dotted keys its output depends on
    files: tuple[str, ...]  # config keys naming files it reads (their content is fingerprinted)
    inputs: tuple[Input, ...]
    run: Callable[[StageContext], StageResult]
    models: tuple[Model, ...] = ()
    options: tuple[Option, ...] = ()
    default_name: str = "{input}"  # formatted with the first input's dataset name

    @property
    def command(self) -> str:
        """The CLI command and flow name (dashes)."""
        return self.name.replace("_", "-")

    def parameters(self) -> list[str]:
        """Every request parameter, in order: inputs, models, options."""
        return [p.name for p in (*self.inputs, *self.models, *self.options)]


def file_for(config: PipelineConfig, key: str) -> Path | None:
    """The file a config key names: a prompt key falls back to its bundled prompt."""
    if key in PROMPT_FILES:
        return prompt_path(config, key)
    value = config_value(config, key)
    return Path(value) if value else None


def _file_digest(config: PipelineConfig, key: str) -> str | None:
    path = file_for(config, key)
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise FileNotFoundError(f"{key}: cannot read {path}: {exc.strerror}") from None


def _identity(model: Any) -> Any:
    if model is None:
        return None
    if isinstance(model, list):
        return [ref.identity() for ref in model]
    return model.identity()


def fingerprint(
    spec: StageSpec, config: PipelineConfig, models: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """What the stage's output depends on besides its input versions."""
    return {
        "stage": spec.name,
        "config": {key: location_free(_dump(config_value(config, key))) for key in spec.config},
        "files": {key: _file_digest(config, key) for key in spec.files},
        "models": {name: _identity(model) for name, model in models.items()},
        "options": {o.name: options[o.name] for o in spec.options if o.affects_output},
    }


def location_free(value: Any) -> Any:
    """A config value with the checkout's location taken out: a path inside the checkout or beside it
    (its parent, where `../shared` lives) is recorded relative to the checkout, so a moved or
    re-cloned checkout on the same lake has the same fingerprints and reuses finished stages."""
    if isinstance(value, dict):
        return {key: location_free(item) for key, item in value.items()}
    if isinstance(value, list):
        return [location_free(item) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        if path.is_relative_to(PROJECT_ROOT.parent) and PROJECT_ROOT.parent != Path(PROJECT_ROOT.anchor):
            return {"checkout_relative": os.path.relpath(path, PROJECT_ROOT)}
    return value


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _versions(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v for item in value for v in _versions(item)]
    if isinstance(value, VersionInfo):
        return [value.version_id]
    return [value.version_id] if isinstance(value, ModelRef) and value.version_id else []


def model_reference(model: Model, config: PipelineConfig, requested: Any) -> Any:
    """A model parameter's reference: as requested, else from the first of its config keys that is set."""
    for key in (model.config,) if isinstance(model.config, str) else model.config or ():
        requested = config_value(config, key) if requested is None else requested
    return requested


def input_reference(item: Input, config: PipelineConfig, requested: Any) -> Any:
    """An input parameter's reference: as requested, else its config key's value."""
    if requested in (None, []) and item.config:
        return config_value(config, item.config)
    return requested


def resolve_reference(
    spec: StageSpec, model: Model, config: PipelineConfig, lake: Lake | None, reference: str, tokenizer: str | None
) -> ModelRef:
    """One reference of a model parameter, resolved with the parameter's backend and checked against its needs."""
    backend = config_value(config, model.backend) if model.backend else "transformers"
    served = reference.strip().startswith(("http://", "https://"))
    if model.many and backend in SERVED_BACKENDS and not served:
        backend = "transformers"  # a comparison mixes served and local models: the protocol is for the served
    if backend == "openai-chat" and tokenizer is None and served:  # a hosted API has no tokenizer: the policy's
        tokenizer = resolve_model(config.sft.base_model, data_dir=config.runtime.data_dir, lake=lake).path
    ref = resolve_model(reference, data_dir=config.runtime.data_dir, lake=lake, backend=backend, tokenizer=tokenizer,
                        allow_endpoint=model.endpoint_ok)  # fmt: skip
    if model.local and not ref.local:
        raise ModelReferenceError(f"{spec.name} {model.name} {reference!r}: a model to train must be local "
                                  "(a role, a registered model or a path), not a server")  # fmt: skip
    return ref


def resolve_models(
    spec: StageSpec, config: PipelineConfig, lake: Lake | None, requested: Mapping[str, Any], tokenizer: str | None
) -> dict[str, Any]:
    """Each model parameter's reference (given, or from config) resolved; errors name the reference."""
    resolved: dict[str, Any] = {}
    for model in spec.models:
        value = model_reference(model, config, requested.get(model.name))
        if value is None or value == []:
            if not model.optional:
                raise ValueError(f"{spec.name} needs --{model.name.replace('_', '-')} (a model reference)")
            resolved[model.name] = None
            continue
        references = _as_list(value) if model.many else [value]
        refs = [resolve_reference(spec, model, config, lake, ref, tokenizer) for ref in references]
        resolved[model.name] = refs if model.many else refs[0]
    return resolved


def _as_list(value: Any) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def resolve_options(spec: StageSpec, config: PipelineConfig, requested: Mapping[str, Any]) -> dict[str, Any]:
    """Each option: given, else its config key's value, else its default."""
    options = {}
    for option in spec.options:
        value = requested.get(option.name)
        if value is None:
            value = config_value(config, option.config) if option.config else option.default
        options[option.name] = value
    return options


def prepare(
    spec: StageSpec,
    config: PipelineConfig,
    lake: Lake,
    inputs: Mapping[str, Any],
    models: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> StageContext:
    """Resolve a request into a ready-to-run context with its fingerprint and lineage."""
    resolved_inputs: dict[str, Any] = {}
    for item in spec.inputs:
        value = input_reference(item, config, inputs.get(item.name))
        if value in (None, []):
            raise ValueError(f"{spec.name} needs --{item.name.replace('_', '-')} (a {item.table} version)")
        if item.many:
            resolved_inputs[item.name] = [lake.resolve(ref, item.table) for ref in _as_list(value)]
        else:
            resolved_inputs[item.name] = lake.resolve(value, item.table)
    resolved_options = resolve_options(spec, config, options or {})
    resolved_models = resolve_models(spec, config, lake, models or {}, resolved_options.get("tokenizer"))
    first = next(iter(resolved_inputs.values()))
    dataset = (first[0] if isinstance(first, list) else first).dataset
    output = name or spec.default_name.format(input=dataset)
    if not DATASET_NAME.match(output):
        raise ValueError(f"output name {output!r} must match {DATASET_NAME.pattern}")
    stage_fingerprint = fingerprint(spec, config, resolved_models, resolved_options)
    input_versions = [v for value in resolved_inputs.values() for v in _versions(value)]
    input_versions += [v for value in resolved_models.values() for v in _versions(value)]
    lineage = Lineage(spec.name, config_hash=config_hash(stage_fingerprint), input_versions=tuple(input_versions))
    return StageContext(spec.name, config, resolved_inputs, resolved_models, resolved_options, output,
                        stage_fingerprint, lineage, progress)  # fmt: skip


def cache_key(context: StageContext) -> str:
    """The Prefect cache key: fingerprint, inputs, output name, code version, and which lake."""
    runtime = context.config.runtime
    payload = {
        "fingerprint": context.fingerprint,
        "inputs": list(context.lineage.input_versions),
        "name": context.name,
        "code": code_version(),
        "lake": [str(Path(runtime.data_dir).resolve()), runtime.lake_catalog_url, runtime.lake_data_path],
    }
    return f"{context.stage}-{config_hash(payload)}"
