"""What every training stage shares: hardware arguments, LoRA, progress, and registering the model.

A trained model is registered in `models` with its lineage (the stage's fingerprint and inputs), so
`already_trained` finds it again instead of training twice; its training log goes to `train_metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig
from schemas.lake import Lake, Lineage, VersionInfo
from tasks.core.stage import Progress, StageContext, StageResult, SummaryTable


def hardware_args(config: PipelineConfig) -> dict[str, Any]:
    """Trainer arguments the hardware decides: bf16 on GPUs that have it, else fp32 (TRL's bf16 default
    fails on CPU), and the DeepSpeed config on GPUs only (DeepSpeed compiles C++ ops on first CPU use).

    The DeepSpeed path is UNTESTED here (no GPU on these machines).
    """
    import torch

    cuda = torch.cuda.is_available()
    args: dict[str, Any] = {"bf16": cuda and torch.cuda.is_bf16_supported(), "fp16": False, "use_cpu": not cuda}
    if cuda and config.runtime.deepspeed_config:
        args["deepspeed"] = str(config.runtime.deepspeed_path())
    return args


def lora_config(method: str, r: int, alpha: int, task_type: str) -> Any:
    """A PEFT LoRA config over every linear layer when `method` is lora, else None (full fine-tuning)."""
    if method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", task_type=task_type)


def training_tokenizer(path: str) -> Any:
    """The base model's tokenizer with a pad token (right padding, as trainers expect)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def output_dir(context: StageContext, kind: str, prefix: str) -> tuple[str, Path]:
    """The model id and directory of this run: named by the stage's fingerprint and inputs, so a
    retried run finds its own checkpoints."""
    model_id = f"{prefix}-{context.name}-{context.digest[:8]}"
    return model_id, Path(context.config.runtime.data_dir) / "models" / kind / model_id


@dataclass
class TrainReport:
    """What a training stage trained and registered."""

    model: VersionInfo
    model_id: str
    path: str
    metrics: dict[str, Any]
    trained: bool  # False when the same config and inputs were already trained

    def result(self) -> StageResult:
        """The stage result: the model id, its metrics, and a summary."""
        verb = "trained" if self.trained else "already trained"
        rows = [(key, value) for key, value in self.metrics.items() if not isinstance(value, dict | list)]
        summary = SummaryTable(f"{verb} {self.model_id} at {self.path} ({self.model.version_id})", ("metric", "value"),
                               rows)  # fmt: skip
        return StageResult({"model": self.model_id, "models": self.model.version_id}, self.metrics, summary)


def already_trained(lake: Lake, name: str, lineage: Lineage) -> TrainReport | None:
    """The registered model when the same fingerprint, inputs and code were trained before."""
    existing = lake.latest_matching("models", name, lineage)
    if existing is None:
        return None
    row = lake.read(existing).to_pylist()[0]
    return TrainReport(existing, row["model_id"], row["path"], json.loads(row["metrics"]), trained=False)


def finish_training(
    context: StageContext,
    trainer: Any,
    model: Any,
    tokenizer: Any,
    registration: dict[str, Any],
    metrics: dict[str, Any],
) -> StageResult:
    """Save the model with its tokenizer at registration['path'], then commit its `models` row (the
    registration: model_id, kind, path, base_model, method; and the metrics) and its training log to
    `train_metrics` in one transaction.

    Only the primary process registers; other ranks of a multi-GPU job return a result without outputs.
    """
    if not trainer.is_world_process_zero():
        return StageResult({}, metrics)
    model.save_pretrained(registration["path"])
    tokenizer.save_pretrained(registration["path"])
    train_rows = [
        {
            "model_id": registration["model_id"],
            "step": entry["step"],
            "epoch": entry.get("epoch"),
            "name": key,
            "value": float(value),
        }
        for entry in trainer.state.log_history
        for key, value in entry.items()
        if key not in ("step", "epoch") and isinstance(value, int | float)
    ]
    outputs = {"models": [registration | {"metrics": json.dumps(metrics)}], "train_metrics": train_rows}
    version = context.lake.commit_stage(context.name, outputs, context.lineage, metrics)["models"]
    report = TrainReport(version, registration["model_id"], registration["path"], metrics, trained=True)
    return report.result()


def report_progress(trainer: Any, progress: Progress | None, keys: Sequence[str]) -> None:
    """Replace the Trainer's printed log dicts with `progress(step, steps, "loss 0.12 …")` (when given)."""
    from transformers import PrinterCallback, TrainerCallback

    trainer.remove_callback(PrinterCallback)
    if progress is None:
        return

    class _Report(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
            shown = [f"{key.split('/')[-1]} {logs[key]:.3g}" for key in keys if key in (logs or {})]
            if shown:  # not the end-of-training summary
                progress(state.global_step, state.max_steps, " ".join(shown))

    trainer.add_callback(_Report())


def losses(trainer: Any, key: str = "loss") -> list[float]:
    """The logged values of `key` over training."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]
