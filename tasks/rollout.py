"""The rollout stage: N trajectories per query from a model, sharded across Ray generation actors.

Resumable: every finished shard is committed at once as a version of a partial dataset
(`<name>.partial-<key>`, the key being a hash of the inputs and config). A re-run with the same key
skips trajectories already committed without error, regenerates errored ones, and finally writes
`rollouts/<name>` as one version holding the latest row per trajectory id, so a retry never
duplicates a trajectory. Trajectory ids are deterministic (query, sample, model, config).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas.config import PipelineConfig, RolloutConfig, config_hash
from schemas.lake import Lake, Lineage, VersionInfo
from tasks.engine import EngineLimits, Prompts, RolloutEngine, ToolRunner, Trajectory, encode_prompt
from tasks.llm import LLMBackend, SamplingParams, make_backend

log = logging.getLogger(__name__)
STAGE = "rollout"


@dataclass(frozen=True)
class ModelSpec:
    """Which model writes: a backend kind and a path (transformers, vllm) or URL (openai)."""

    backend: str
    model: str
    tokenizer: str | None = None  # for openai: a local tokenizer path (default: none needed for vllm)
    served_name: str | None = None  # for openai: the model name the server expects

    @property
    def label(self) -> str:
        """What the rollouts table's `model` column says."""
        return self.served_name or self.model

    def build(self) -> LLMBackend:
        """Instantiate the backend (inside a generation actor)."""
        if self.backend == "openai":
            return make_backend(
                "openai", self.model, model=self.served_name or "default", tokenizer_path=self.tokenizer or self.model
            )
        return make_backend(self.backend, self.model)


def model_spec(
    config: PipelineConfig,
    model: str | None,
    role: str,
    backend: str,
    tokenizer: str | None = None,
    served_name: str | None = None,
) -> ModelSpec:
    """Which model writes: a path or URL (default: the bootstrap build's `role` model), checked."""
    from tasks.bootstrap import model_dir

    model = model or str(model_dir(config.runtime.data_dir) / role)
    kind = "openai" if model.startswith(("http://", "https://")) else backend
    if kind != "openai" and not Path(model).exists():
        raise FileNotFoundError(f"model {model} not found; run `autotraj bootstrap` or pass --model PATH|URL")
    if kind == "openai" and tokenizer is None:
        raise ValueError("an openai backend needs --tokenizer PATH (a local copy of the served model's tokenizer)")
    return ModelSpec(kind, model, tokenizer, served_name)


@dataclass(frozen=True)
class WorkItem:
    """One trajectory to write: its id, query, sample index and user message."""

    trajectory_id: str
    query_id: str
    sample_index: int
    user: str


SEARCH_TASKS = frozenset({"qa"})  # the query tasks whose questions need the search tool


def needs_search(tasks: Iterable[str]) -> bool:
    """Whether any of these query tasks needs the search tool."""
    return not SEARCH_TASKS.isdisjoint(tasks)


@dataclass
class GenerationSettings:
    """Everything a generation actor needs besides the model."""

    config: PipelineConfig
    limits: EngineLimits
    sampling: SamplingParams
    prompts: Prompts
    search_required: bool = True  # False when no query's task needs search: a missing corpus is then fine


def trajectory_rows(items: Sequence[WorkItem], trajectories: Sequence[Trajectory], model: str) -> list[dict]:
    """Rollouts-table rows for finished trajectories (one per work item)."""
    rows = []
    for item, trajectory in zip(items, trajectories, strict=True):
        completion = trajectory.completion_ids
        rows.append(
            {
                "trajectory_id": item.trajectory_id,
                "query_id": trajectory.query_id,
                "sample_index": trajectory.sample_index,
                "model": model,
                "prompt": trajectory.prompt,
                "prompt_token_ids": trajectory.prompt_ids,
                "response": trajectory.response,
                "segments": [segment.as_row() for segment in trajectory.segments],
                "finish_reason": trajectory.finish_reason or "error",
                "num_turns": trajectory.num_turns,
                "num_tool_calls": trajectory.num_tool_calls,
                "prompt_tokens": len(trajectory.prompt_ids),
                "completion_tokens": len(completion),
                "error": trajectory.error,
            }
        )
    return rows


class GenerationWorker:
    """Holds a model, a sandbox pool and a searcher; turns shards of work items into rows.

    Used directly, or as a Ray actor (`ray.remote(GenerationWorker)`), one per GPU or one on CPU.
    """

    def __init__(self, spec: ModelSpec, settings: GenerationSettings):
        from tools_sandbox.executor import SandboxPool
        from tools_sandbox.search import searcher_from_config

        self.spec = spec
        self.settings = settings
        self.backend = spec.build()
        tools = settings.config.tools
        self.pool = SandboxPool(tools.python)
        searcher = searcher_from_config(
            tools.search, settings.config.runtime.data_dir, required=settings.search_required
        )
        self.runner = ToolRunner(self.pool, searcher, tools.max_result_chars, tools.search.top_k)
        self.engine = RolloutEngine(self.backend, self.runner, settings.limits)

    def run_shard(self, items: Sequence[WorkItem], seed: int) -> list[dict]:
        """Write every trajectory of one shard; return its rows."""
        prompts = self.settings.prompts
        trajectories = []
        for item in items:
            text, ids = encode_prompt(self.backend.tokenizer, prompts.system, item.user)
            trajectories.append(Trajectory(item.query_id, item.sample_index, text, ids))
        sampling = self.settings.sampling
        params = SamplingParams(sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed, sampling.logprobs)
        self.engine.run(trajectories, params)
        return trajectory_rows(items, trajectories, self.spec.label)

    def close(self) -> None:
        """Stop the sandbox pool and the tool threads."""
        self.runner.close()
        self.pool.close()


def settings_from_config(config: PipelineConfig, rollout: RolloutConfig | None = None) -> GenerationSettings:
    """Engine limits, sampling and prompts from a stage's config section."""
    section = rollout or config.rollout
    return GenerationSettings(
        config=config,
        limits=EngineLimits(
            max_tool_calls=section.max_tool_calls,
            max_turns=section.max_turns,
            max_new_tokens_per_turn=section.max_new_tokens_per_turn,
            max_total_tokens=section.max_total_tokens,
        ),
        sampling=SamplingParams(
            max_new_tokens=section.max_new_tokens_per_turn,
            temperature=section.temperature,
            top_p=section.top_p,
            seed=section.seed,
        ),
        prompts=Prompts.load(section.system_prompt_file, section.user_template_file),
    )


def digest(*parts: Any) -> str:
    """A stable hex digest of JSON-able parts (ids and resume keys are made from it)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def work_items(queries: pa.Table, n: int, spec: ModelSpec, key: str, user_template: str) -> list[WorkItem]:
    """n work items per query, with deterministic trajectory ids."""
    items = []
    for row in queries.select(["query_id", "question"]).to_pylist():
        for sample in range(n):
            trajectory_id = "t" + digest(key, row["query_id"], sample)[:16]
            items.append(
                WorkItem(trajectory_id, row["query_id"], sample, user_template.format(question=row["question"]))
            )
    return items


def shards(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    """Consecutive chunks, never splitting one query's samples across shards."""
    chunks: list[list[WorkItem]] = []
    current: list[WorkItem] = []
    for item in items:
        if len(current) >= size and item.query_id != current[-1].query_id:
            chunks.append(current)
            current = []
        current.append(item)
    if current:
        chunks.append(current)
    return chunks


@dataclass
class RolloutReport:
    """What a rollout run did."""

    version: VersionInfo
    trajectories: int
    generated: int  # written by this run (the rest were already committed)
    shards_committed: int
    errors: int
    finish_reasons: dict[str, int] = field(default_factory=dict)


def committed_rows(lake: Lake, partial: str) -> dict[str, dict]:
    """Latest committed row per trajectory id in a partial dataset (empty when none)."""
    rows: dict[str, dict] = {}
    for info in lake.versions("rollouts", partial):
        for row in lake.read(info).to_pylist():
            rows[row["trajectory_id"]] = row
    return rows


@dataclass
class GenerationRun:
    """The rows of every work item (in item order), and how many this run generated."""

    rows: list[dict]
    generated: int
    shards: int


def generate_resumable(
    lake: Lake,
    items: Sequence[WorkItem],
    partial: str,
    lineage: Lineage,
    spec: ModelSpec,
    settings: GenerationSettings,
    *,
    actors: int = 1,
    shard_size: int = 16,
    use_ray: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationRun:
    """Write the trajectories of the work items not yet committed to `rollouts/<partial>`, shard by shard.

    Each finished shard is committed at once, so a killed run loses at most the shards in flight;
    items committed with an error are generated again.
    """
    done = committed_rows(lake, partial)
    todo = [item for item in items if item.trajectory_id not in done or done[item.trajectory_id]["error"]]
    work = shards(todo, shard_size)
    generated = 0
    if progress is not None:
        progress(len(items) - len(todo), len(items))
    for rows in _generate(spec, settings, work, actors, use_ray):
        lake.write("rollouts", partial, rows, lineage)
        done.update((row["trajectory_id"], row) for row in rows)
        generated += len(rows)
        if progress is not None:
            progress(len(items) - len(todo) + generated, len(items))
    return GenerationRun([done[item.trajectory_id] for item in items], generated, len(work))


def run_rollout(
    lake: Lake,
    queries_ref: str,
    dataset: str,
    spec: ModelSpec,
    config: PipelineConfig,
    *,
    n: int | None = None,
    actors: int = 1,
    shard_size: int = 16,
    limit: int | None = None,
    use_ray: bool = True,
    progress: Callable[[int, int], None] | None = None,
    stage: str = STAGE,
) -> RolloutReport:
    """Generate (or resume) n trajectories per query and write `rollouts/<dataset>`."""
    queries_info = lake.resolve(queries_ref, "queries")
    queries = lake.read(queries_info)
    if limit is not None:
        queries = queries.slice(0, limit)
    samples = n or config.rollout.n
    settings = settings_from_config(config)
    settings.search_required = needs_search(queries.column("task").to_pylist())
    key = digest(queries_info.version_id, limit, spec.label, samples, config.section_hash("rollout"), settings.prompts)
    items = work_items(queries, samples, spec, key, settings.prompts.user_template)
    stage_config = {
        "rollout": config.rollout.model_dump(mode="json"),
        "tools": config.tools.model_dump(mode="json"),
        "model": spec.label,
        "n": samples,
        "limit": limit,
    }
    lineage = Lineage(stage, config_hash=config_hash(stage_config), input_versions=(queries_info.version_id,))
    run = generate_resumable(
        lake,
        items,
        f"{dataset}.partial-{key[:12]}",
        lineage,
        spec,
        settings,
        actors=actors,
        shard_size=shard_size * samples,
        use_ray=use_ray,
        progress=progress,
    )
    final_rows = run.rows
    unchanged = lake.latest_matching("rollouts", dataset, lineage) if not run.generated else None
    version = unchanged or lake.write("rollouts", dataset, final_rows, lineage)
    reasons: dict[str, int] = {}
    for row in final_rows:
        reasons[row["finish_reason"]] = reasons.get(row["finish_reason"], 0) + 1
    return RolloutReport(version, len(final_rows), run.generated, run.shards, reasons.get("error", 0), reasons)


def _shard_seed(settings: GenerationSettings, shard: Sequence[WorkItem]) -> int:
    """A shard's sampling seed depends on its content, not on which actor runs it."""
    base = settings.sampling.seed or 0
    return base + int(digest(shard[0].trajectory_id)[:8], 16)


def _generate(spec: ModelSpec, settings: GenerationSettings, work: list[list[WorkItem]], actors: int, use_ray: bool):
    """Yield each shard's rows as soon as it is finished."""
    if not work:
        return
    if not use_ray:
        worker = GenerationWorker(spec, settings)
        try:
            for shard in work:
                yield worker.run_shard(shard, _shard_seed(settings, shard))
        finally:
            worker.close()
        return
    import ray

    from tasks.distributed import ensure_ray, generation_actor_options

    ensure_ray(settings.config.runtime.ray_address)
    actor_class = ray.remote(GenerationWorker).options(**generation_actor_options(actors))
    pool = [actor_class.remote(spec, settings) for _ in range(max(1, min(actors, len(work))))]
    try:
        pending: dict[Any, Any] = {}
        queue = list(work)
        for actor in pool:
            if queue:
                shard = queue.pop(0)
                pending[actor.run_shard.remote(shard, _shard_seed(settings, shard))] = actor
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready[0])
            rows = ray.get(ready[0])
            if queue:
                shard = queue.pop(0)
                pending[actor.run_shard.remote(shard, _shard_seed(settings, shard))] = actor
            yield rows
    finally:
        for actor in pool:
            with contextlib.suppress(Exception):  # an actor that died must not hide the error that killed it
                ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor)
