"""Pipeline configuration: one pydantic section per stage, loaded from a YAML profile plus overrides.

Defaults are the paper's constants (DESIGN.md §1). Unknown keys anywhere are an error naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = PROJECT_ROOT / "deployments"
DEFAULT_PROFILE = "cpu"

HEDGING_WORDS = ["maybe", "unsure", "guess", "seems", "perhaps", "probably", "might", "likely", "recheck"]


class ConfigError(ValueError):
    """A profile or override that does not fit the configuration models."""


class Section(BaseModel):
    """Base of every config section: unknown keys, values of the wrong type (a boolean for a number,
    a number for a string), non-finite numbers and empty strings are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # An empty path would silently mean the current directory, an empty model a confusing lookup.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: leave the key out (or set it to null) for its default")
        return value


class GeneratorSection(Section):
    """What a generating stage (rollout, repair, evaluate) needs to reach its model."""

    backend: Literal["transformers", "vllm", "openai", "openai-chat"] = Field(
        "transformers",
        description="transformers | vllm for a local model; a served one (URL#name) speaks /v1/completions "
        "(openai, the default for it) or, with openai-chat, /v1/chat/completions (hosted APIs)",
    )
    tokenizer: str | None = Field(
        None,
        description="tokenizer of a served model (default: the served name; for openai-chat, the policy's "
        "tokenizer, sft.base_model's, which fills the token ids of the rows it writes)",
    )
    api_key_env: str | None = Field(
        None,
        description="environment variable holding the served model's key (default: OPENAI_API_KEY, then "
        "AUTOTRAJ_API_KEY)",
    )
    chat_mode: Literal["tags", "tools"] = Field(
        "tags",
        description="openai-chat: tags = the TIR grammar in text (stop at closing tags); tools = native function "
        "calls for python and search, stored in the same grammar",
    )
    chat_result_role: Literal["user", "tool"] = Field(
        "user", description="openai-chat tags mode: the role of the message carrying a <result> back"
    )


class RolloutConfig(GeneratorSection):
    """Teacher rollout: N candidate trajectories per query with real tool execution."""

    model: str = Field("teacher", description="the teacher: a model reference (role, models/<name>, path, URL#name)")
    n: int = Field(4, ge=1, description="candidate trajectories per query")
    max_tool_calls: int = Field(3, ge=0)
    max_turns: int = Field(10, ge=1)
    max_new_tokens_per_turn: int = Field(512, ge=1)
    max_total_tokens: int = Field(4096, ge=1)
    max_prompt_tokens: int = Field(
        8192,
        ge=16,
        description="longest prompt (system + user message; a repair's holds the bad trajectory) a "
        "trajectory starts from; a longer one is not generated but rejected with its reason",
    )
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(
        32, ge=1, description="contexts per generate call (local models) or requests in flight (served models)"
    )
    seed: int = 0
    system_prompt_file: str | None = None
    user_template_file: str | None = None


class ScoreWeights(Section):
    """Weights of the quality score q = w_c·c + w_l·l + w_e·e."""

    confidence: float = 0.4
    length: float = 0.3
    repetition: float = 0.3


class ScoreConfig(Section):
    """Multi-dimensional scoring and the per-query labeling rule."""

    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    hedging_words: list[str] = Field(default_factory=lambda: list(HEDGING_WORDS))
    length_sigma_ratio: float = Field(0.5, gt=0.0, description="σ = ratio · n*")
    repetition_ngram: int = Field(3, ge=1)
    repetition_min_words: int = Field(6, ge=1, description="texts shorter than this score 1")
    all_high_quality_threshold: float = 0.90
    best_high_quality_threshold: float = 0.86
    correct_threshold: float = Field(1.0, ge=0.0, le=1.0, description="outcome at or above which an answer is correct")


class RepairConfig(GeneratorSection):
    """LLM-as-Repairer: prompts, acceptance thresholds and attempts."""

    model: str = Field("repairer", description="the repairer: a model reference")
    accept_threshold_correct_low_quality: float = 0.86
    accept_threshold_wrong: float = 0.80
    max_attempts: int = Field(1, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    low_quality_prompt_file: str | None = None
    wrong_prompt_file: str | None = None


class PairsConfig(Section):
    """SFT set and preference pair building."""

    include_high_quality: bool = True
    include_repairs: bool = True
    deduplicate: bool = True


class SftConfig(Section):
    """Supervised fine-tuning of the policy on model-written tokens only."""

    base_model: str = "policy"
    method: Literal["full", "lora"] = "full"
    learning_rate: float = Field(1e-5, gt=0.0)
    num_epochs: float = Field(3.0, gt=0.0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(4096, ge=16)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    seed: int = 0


class RewardModelConfig(Section):
    """Trajectory reward model trained with the Bradley–Terry loss."""

    base_model: str | None = Field(None, description="None = the policy's base model")
    method: Literal["full", "lora"] = "lora"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0)
    num_epochs: float = Field(1.0, gt=0.0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(4096, ge=16)
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 0


class GrpoConfig(Section):
    """GRPO with multi-turn tool rollouts and the paper's composite reward."""

    policy_model: str = Field("policy", description="model_id from the models table, role or path (the SFT model)")
    reward_model: str | None = Field(
        None, description="model_id or path (scored in a Ray actor), or a serve-rm URL; None = no RM bonus"
    )
    num_generations: int = Field(4, ge=2)
    prompts_per_step: int = Field(
        2, ge=1, description="questions per optimizer step (each sampled num_generations times)"
    )
    learning_rate: float = Field(1e-6, gt=0.0)
    beta: float = Field(0.04, ge=0.0, description="KL coefficient")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_steps: int = Field(200, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    use_vllm: bool = Field(False, description="generate with TRL's colocated vLLM engine (GPU only)")
    format_penalty: float = -1.0
    rm_bonus_weight: float = 0.2
    reward_clip: float = Field(3.0, gt=0.0)
    seed: int = 0


class EvaluateConfig(GeneratorSection):
    """Side-by-side evaluation of models on benchmarks."""

    benchmarks: list[str] = Field(default_factory=list, description="queries datasets `autotraj eval` defaults to")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    max_queries: int | None = Field(None, ge=1)
    strata_key: str | None = Field(
        "difficulty", description="a queries' metadata field whose values split the results into strata"
    )


class SearchConfig(Section):
    """The search tool: a local BM25 index over a JSONL corpus, or a FlashRAG-style HTTP retriever."""

    backend: Literal["local", "http"] = "local"
    corpus: str = Field(
        str(PROJECT_ROOT.parent / "shared" / "data" / "corpus" / "wiki_sample.jsonl"),
        description="JSONL of {id, title, contents} for the local index",
    )
    url: str | None = Field(None, description="retriever base URL for backend=http, e.g. http://host:8005")
    top_k: int = Field(3, ge=1)
    timeout_s: float = Field(10.0, gt=0.0)
    attempts: int = Field(3, ge=1)
    cache: bool = Field(False, description="answer repeated queries from a cache so replays are deterministic")


class PythonToolConfig(Section):
    """The sandboxed Python executor: a pool of fork servers confined by the chosen isolation tier."""

    tier: Literal["auto", "strict", "standard", "none"] = Field(
        "auto", description="auto = strongest the host supports (never none); a named tier is required or refused"
    )
    workers: int = Field(0, ge=0, description="fork servers in the pool; 0 = one per CPU core")
    timeout_s: float = Field(10.0, gt=0.0, description="wall-clock limit per snippet")
    queue_timeout_s: float = Field(
        300.0, gt=0.0, description="longest a call waits for a free worker before it fails (QueueTimeout)"
    )
    memory_mb: int = Field(2048, ge=256, description="address-space limit per snippet")
    output_kb: int = Field(256, ge=1, description="output kept per snippet; past it the snippet is stopped")
    file_mb: int = Field(16, ge=1, description="largest file a snippet may write")
    processes: int = Field(32, ge=1, description="processes and threads per snippet")
    open_files: int = Field(64, ge=16)
    tmp_mb: int = Field(256, ge=16, description="size of the private /tmp of a strict server")
    preload: list[str] = Field(["math", "numpy", "sympy"], description="modules imported once per fork server")
    show_last_expression: bool = Field(True, description="print the value of a trailing expression, as Jupyter does")
    persistent: bool = Field(False, description="variables of earlier <code> calls stay defined within a trajectory")
    uid_base: int = Field(61000, ge=1000, description="first dedicated sandbox uid (used when running as root)")


class ToolsConfig(Section):
    """The tools a model calls mid-trajectory."""

    max_result_chars: int = Field(2000, ge=100, description="characters of tool output shown to the model")
    python: PythonToolConfig = Field(default_factory=PythonToolConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """The directory, created readable by its owner only when it does not exist yet.

    The data directory holds gold answers and trained models: sandbox uids must not read them.
    An existing directory keeps its mode (the user's choice); `autotraj tools doctor` reports it.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def _default_data_dir() -> str:
    return os.environ.get("AUTOTRAJ_HOME", "./.autotraj")


class RequestsConfig(Section):
    """Requests to served models: timeout, retries, a deadline per stage run, a rate cap, a cache, prices."""

    timeout_s: float = Field(300.0, gt=0.0, description="longest one request may take")
    attempts: int = Field(
        4, ge=1, description="tries per request; transport errors, timeouts, 429, 5xx and malformed bodies are retried"
    )
    backoff_s: float = Field(0.5, ge=0.0, description="first wait between tries; it doubles each time")
    max_backoff_s: float = Field(8.0, ge=0.0, description="longest wait between tries")
    stage_deadline_s: float | None = Field(
        None,
        gt=0.0,
        description="a generating stage run starts no request after this many seconds; what is "
        "unfinished is errored, and the next run retries it (None = no deadline)",
    )
    requests_per_minute: float | None = Field(
        None, gt=0.0, description="cap on requests started per minute by each generation worker (hosted APIs)"
    )
    max_retry_after_s: float = Field(
        60.0, ge=0.0, description="longest a 429's Retry-After is waited; a longer one counts as this"
    )
    cache: list[Literal["rollout", "repair", "evaluate"]] = Field(
        ["evaluate"],
        description="stages whose served-model requests are answered from a cache under the data directory when "
        "repeated (endpoint, model, messages or prompt, sampling, seed, tools): replays cost nothing and repeat "
        "exactly; --no-cache bypasses it",
    )
    price_per_million_prompt_tokens: float | None = Field(
        None, ge=0.0, description="turns the usage a served model reports into a cost in the stage report"
    )
    price_per_million_completion_tokens: float | None = Field(None, ge=0.0)


class RuntimeConfig(Section):
    """Where data lives and which services the pipeline talks to."""

    data_dir: str = Field(default_factory=_default_data_dir, validate_default=True, description="AUTOTRAJ_HOME")
    ray_address: str | None = Field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    lake_catalog_url: str | None = Field(
        None, description="None = SQLite catalog in the data dir; 'postgres:dbname=… host=…' for clusters"
    )
    lake_data_path: str | None = Field(None, description="None = <data_dir>/lake/data")
    lake_retention_hours: float = Field(
        168.0, gt=0.0, description="`autotraj lake gc` keeps snapshots and unreferenced files younger than this"
    )
    stage_retries: int = Field(2, ge=0, description="Prefect retries of a stage task after a transient error")
    stage_retry_delay_s: float = Field(10.0, ge=0.0, description="seconds between a stage's retries")
    train_dispatch: Literal["ray", "local"] = Field(
        "ray", description="ray: each training stage is a Ray Train job; local: train in this process"
    )
    train_gpus: int = Field(0, ge=0, description="GPUs a training job requests (one Ray Train worker each); 0 = CPU")
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON for training: a path, or zero2.json / zero3.json from deployments/; GPUs only"
    )

    @field_validator("data_dir", "lake_data_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # Ray workers and Prefect workers run in other directories: a relative path would name
        # another lake there, and model paths registered under it would not resolve elsewhere.
        return None if value is None else str(Path(value).expanduser().absolute())

    def deepspeed_path(self) -> Path | None:
        """The DeepSpeed JSON: the given path, else the file of that name in deployments/."""
        if self.deepspeed_config is None:
            return None
        given = Path(self.deepspeed_config)
        path = given if given.exists() else PROFILES_DIR / given.name
        if not path.exists():
            raise ConfigError(f"runtime.deepspeed_config: {given} not found (nor {path})")
        return path


class PipelineConfig(Section):
    """The whole pipeline: one section per stage plus runtime."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    repair: RepairConfig = Field(default_factory=RepairConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    requests: RequestsConfig = Field(default_factory=RequestsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _repair_thresholds_within_unit_interval(self) -> PipelineConfig:
        for value in (self.repair.accept_threshold_correct_low_quality, self.repair.accept_threshold_wrong):
            if not 0.0 <= value <= 1.0:
                raise ValueError("repair acceptance thresholds must lie in [0, 1]")
        return self

    def section_hash(self, section: str) -> str:
        """Stable short hash of one section, used in lineage and cache keys."""
        return config_hash(getattr(self, section).model_dump(mode="json"))


def config_hash(payload: Any) -> str:
    """Short sha256 of a JSON-serialisable payload with sorted keys."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def profile_path(profile: str | os.PathLike[str]) -> Path:
    """Resolve a profile name (`cpu`) or a path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.exists():
            raise ConfigError(f"profile file not found: {candidate}")
        return candidate
    named = PROFILES_DIR / f"{profile}.yaml"
    if not named.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}; known profiles: {', '.join(known)}")
    return named


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-5` as a number as YAML 1.2 does (1.1 wants `1.0e-5`)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: no arbitrary objects


def parse_override(override: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_known_keys(annotation, prefix + name + "."))
    return keys


def _explain(exc: ValidationError, source: str) -> ConfigError:
    messages = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, _known_keys(PipelineConfig), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            messages.append(f"unknown config key {key!r}{hint}")
        else:
            messages.append(f"config key {key!r}: {error['msg']}")
    return ConfigError(f"{source}: " + "; ".join(messages))


def load_config(
    profile: str | os.PathLike[str] = DEFAULT_PROFILE, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Load a profile from deployments/ (or a YAML path) and apply `key=value` overrides."""
    path = profile_path(profile)
    try:
        tree = _yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of sections")
    try:
        PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, str(path)) from None
    for override in overrides:
        keys, value = parse_override(override)
        _set_path(tree, keys, value)
        try:
            PipelineConfig.model_validate(tree)
        except ValidationError as exc:
            raise _explain(exc, f"--set {override}") from None
    return PipelineConfig.model_validate(tree)
