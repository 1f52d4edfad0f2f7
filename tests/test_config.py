"""Configuration: paper defaults, profiles, overrides, and unknown keys named in errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from schemas.config import PROFILES_DIR, PROJECT_ROOT, ConfigError, PipelineConfig, load_config


def test_defaults_are_the_papers_constants() -> None:
    config = PipelineConfig()
    assert (config.rollout.n, config.rollout.max_tool_calls, config.rollout.max_turns) == (4, 3, 10)
    assert config.score.weights.model_dump() == {"confidence": 0.4, "length": 0.3, "repetition": 0.3}
    assert config.score.hedging_words == [
        "maybe",
        "unsure",
        "guess",
        "seems",
        "perhaps",
        "probably",
        "might",
        "likely",
        "recheck",
    ]
    assert (config.score.length_sigma_ratio, config.score.repetition_ngram, config.score.repetition_min_words) == (
        0.5,
        3,
        6,
    )
    assert (config.score.all_high_quality_threshold, config.score.best_high_quality_threshold) == (0.90, 0.86)
    assert (config.repair.accept_threshold_correct_low_quality, config.repair.accept_threshold_wrong) == (0.86, 0.80)
    assert config.repair.max_attempts == 1
    assert (config.reward_model.method, config.reward_model.lora_r) == ("lora", 8)
    assert config.grpo.num_generations == 4
    assert (config.grpo.format_penalty, config.grpo.rm_bonus_weight, config.grpo.reward_clip) == (-1.0, 0.2, 3.0)
    assert config.evaluate.temperature == 0.0


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_profile_in_deployments_loads(profile: str) -> None:
    config = load_config(profile)
    assert isinstance(config, PipelineConfig)
    deepspeed = config.runtime.deepspeed_path()
    if deepspeed is not None:  # the GPU profiles name a ZeRO config that exists and parses
        stage = json.loads(deepspeed.read_text())["zero_optimization"]["stage"]
        assert stage in (2, 3) and config.runtime.train_gpus > 0


def test_zero_configs_are_stage_2_and_3() -> None:
    stages = {
        path.name: json.loads(path.read_text())["zero_optimization"]["stage"] for path in PROFILES_DIR.glob("*.json")
    }
    assert stages == {"zero2.json": 2, "zero3.json": 3}


def test_cpu_is_the_default_profile_and_keeps_paper_constants() -> None:
    config = load_config()
    assert config.rollout.backend == "transformers"
    assert config.score == PipelineConfig().score


def test_overrides_parse_values_as_yaml() -> None:
    config = load_config(
        "cpu",
        [
            "rollout.n=8",
            "score.weights.confidence=0.5",
            "evaluate.benchmarks=[gsm8k_test, svamp]",
            "runtime.ray_address=auto",
        ],
    )
    assert config.rollout.n == 8
    assert config.score.weights.confidence == 0.5
    assert config.evaluate.benchmarks == ["gsm8k_test", "svamp"]
    assert config.runtime.ray_address == "auto"


def test_unknown_override_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'rollout\.max_tool_call' \(did you mean "
        r"'rollout\.max_tool_calls'\?\)",
    ):
        load_config("cpu", ["rollout.max_tool_call=2"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        load_config("cpu", ["nonsense.x=1"])


def test_unknown_key_in_a_profile_file_is_named(tmp_path: Path) -> None:
    profile = tmp_path / "mine.yaml"
    profile.write_text("score:\n  weights:\n    confidnce: 0.5\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown config key 'score\.weights\.confidnce'"):
        load_config(profile)


def test_bad_values_and_malformed_overrides_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"config key 'rollout\.n'"):
        load_config("cpu", ["rollout.n=zero"])
    with pytest.raises(ConfigError, match=r"must look like key\.path=value"):
        load_config("cpu", ["rollout.n"])
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_config("nope")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("runtime.data_dir=", r"config key 'runtime\.data_dir'.*is empty"),  # not the current directory
        ("rollout.model=' '", r"config key 'rollout\.model'.*is empty"),
        ("rollout.n=true", r"config key 'rollout\.n'.*valid integer"),  # not 1
        ("rollout.temperature=1e400", r"config key 'rollout\.temperature'.*finite"),  # read as inf
        ("sft.learning_rate=abc", r"config key 'sft\.learning_rate'.*valid number"),
        ("rollout.temperature=.nan", r"config key 'rollout\.temperature'.*finite"),
        ("rollout.top_p=false", r"config key 'rollout\.top_p'.*valid number"),
        ("tools.search.corpus=3", r"config key 'tools\.search\.corpus'.*valid string"),
        ("requests.attempts=0", r"config key 'requests\.attempts'.*greater than or equal to 1"),
    ],
)
def test_values_are_validated_for_meaning(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("cpu", [override])


def test_numbers_read_as_users_write_them() -> None:
    config = load_config("cpu", ["sft.learning_rate=1e-5", "rollout.temperature=1", "rollout.n=8"])
    assert (config.sft.learning_rate, config.rollout.temperature, config.rollout.n) == (1e-5, 1.0, 8)


def test_data_dir_follows_autotraj_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOTRAJ_HOME", str(tmp_path / "elsewhere"))
    assert load_config().runtime.data_dir == str(tmp_path / "elsewhere")
    monkeypatch.delenv("AUTOTRAJ_HOME")
    assert load_config().runtime.data_dir == str(Path.cwd() / ".autotraj")  # made absolute


def test_section_hash_changes_with_the_section_only() -> None:
    base = PipelineConfig()
    changed = load_config("cpu", ["rollout.n=5"])
    assert base.section_hash("rollout") != changed.section_hash("rollout")
    assert base.section_hash("score") == changed.section_hash("score")


def test_relative_data_paths_become_absolute() -> None:
    # Ray and Prefect workers run elsewhere: a relative data dir would name another lake there.
    runtime = load_config("cpu", ["runtime.data_dir=rel/home", "runtime.lake_data_path=rel/data"]).runtime
    assert runtime.data_dir == str(Path.cwd() / "rel" / "home")
    assert runtime.lake_data_path == str(Path.cwd() / "rel" / "data")


def _config_models(model: type[BaseModel], path: tuple[str, ...] = ()):
    """(path, class) of every config section, nested ones included."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield (*path, name), annotation
            yield from _config_models(annotation, (*path, name))


def test_every_config_key_is_read_by_some_code_path() -> None:
    """A key counts as read where the code reads `<section>.<key>` (directly, through a variable bound to
    the section or annotated with its class) or names it as a dotted key (a stage spec, an override)."""
    reads: set[tuple[str, str]] = set()
    dotted: set[str] = set()
    for folder in ("flows", "tasks", "tools_sandbox", "schemas"):
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            if path == PROJECT_ROOT / "schemas" / "config.py":
                continue
            tree = ast.parse(path.read_text())
            aliases: dict[str, set[str]] = {}  # a variable -> the sections (or section classes) it may hold
            for node in ast.walk(tree):
                if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                        and isinstance(node.value, ast.Attribute)):  # fmt: skip
                    aliases.setdefault(node.targets[0].id, set()).add(node.value.attr)
                elif isinstance(node, ast.arg) and node.annotation is not None:
                    aliases.setdefault(node.arg, set()).add(ast.unparse(node.annotation).split("|")[0].strip())
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    aliases.setdefault(node.target.id, set()).add(ast.unparse(node.annotation).split("|")[0].strip())
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    dotted.add(node.value)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute):
                    owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
                    reads |= {(name, node.attr) for name in {owner, *aliases.get(owner, ())}}
    unread = [
        ".".join((*path, leaf))
        for path, model in _config_models(PipelineConfig)
        for leaf, field in model.model_fields.items()
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
        and ".".join((*path, leaf)) not in dotted
        and (path[-1], leaf) not in reads
        and not any((base.__name__, leaf) in reads for base in model.__mro__)  # read through a base class
    ]
    assert not unread, f"config keys no code reads: {unread}"
