"""Prompt files and how a prompt becomes token ids.

The bundled prompts are files in tasks/core/prompts/; a user overrides any of them with a file named
in config (`PROMPT_FILES` maps each config key to the bundled file it replaces). Files are read each
time, never cached, so an edited prompt is what the next run reads and what its fingerprint hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig

PROMPTS_DIR = Path(__file__).parent / "prompts"
# Config key -> the bundled prompt it overrides.
PROMPT_FILES = {
    "rollout.system_prompt_file": "system",
    "rollout.user_template_file": "user",
    "repair.low_quality_prompt_file": "repair_low_quality",
    "repair.wrong_prompt_file": "repair_wrong",
}
REPAIR_VARIANTS = ("low_quality", "wrong")


def config_value(config: PipelineConfig, key: str) -> Any:
    """The value of a dotted config key, e.g. `rollout.system_prompt_file`."""
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def prompt_path(config: PipelineConfig | None, key: str) -> Path:
    """The file a prompt config key names, or the bundled prompt it defaults to."""
    configured = config_value(config, key) if config is not None else None
    return Path(configured) if configured else PROMPTS_DIR / f"{PROMPT_FILES[key]}.txt"


def load_prompt(config: PipelineConfig | None, key: str) -> str:
    """The text of the prompt a config key names (the bundled one when unset)."""
    path = prompt_path(config, key)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise FileNotFoundError(f"{key}: cannot read prompt file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Prompts:
    """The policy's system prompt and user template."""

    system: str
    user_template: str

    @classmethod
    def from_config(cls, config: PipelineConfig | None = None) -> Prompts:
        """The prompts a config names (the bundled ones by default)."""
        return cls(
            load_prompt(config, "rollout.system_prompt_file"), load_prompt(config, "rollout.user_template_file")
        )

    def user(self, question: str) -> str:
        """The user message for one question."""
        return self.user_template.format(question=question)


def repair_prompt(question: str, trajectory: str, variant: str, config: PipelineConfig | None = None) -> str:
    """The repair prompt of one variant ('low_quality' or 'wrong'): the question and the bad trajectory."""
    if variant not in REPAIR_VARIANTS:
        raise ValueError(f"unknown repair prompt variant {variant!r}; choose {' or '.join(REPAIR_VARIANTS)}")
    template = load_prompt(config, f"repair.{variant}_prompt_file")
    return template.format(question=question, trajectory=trajectory)


def encode_prompt(tokenizer: Any, system: str, user: str) -> tuple[str, list[int]]:
    """Prompt text and ids: the chat template when the tokenizer has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{system}\n\n{user}\n"
    return text, tokenizer.encode(text, add_special_tokens=False)
