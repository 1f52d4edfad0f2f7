"""The sft stage: where the policy is trained on trajectories.

Each SFT example is tokenized as the engine tokenizes a trajectory: the prompt through the policy's
chat template, then every segment on its own (joined text would let BPE merge across
`</code><result>`), then EOS. Labels are −100 on the prompt and on tool results, so the loss covers
exactly what the model itself should write. TRL's SFTTrainer trains on these ids as they are (its
collator keeps given labels). The checkpoint is registered in `models` with its lineage; the
training log goes to `train_metrics` and TensorBoard.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig, config_hash
from schemas.lake import Lake, Lineage, VersionInfo
from schemas.tables import VERSION_COLUMN
from tasks.engine import Prompts, encode_prompt

log = logging.getLogger(__name__)
STAGE = "sft"
IGNORE = -100
StepProgress = Callable[[int, int, str], None]  # (step, steps, what the last log said)


def resolve_model(name: str, data_dir: str | Path) -> str:
    """A model path from a name: 'policy' or 'teacher' (the bootstrap teacher), 'repairer', or a path."""
    from tasks.bootstrap import model_dir

    roles = {"policy": "teacher", "teacher": "teacher", "repairer": "repairer"}
    if name in roles:
        path = model_dir(data_dir) / roles[name]
        if not path.exists():
            raise FileNotFoundError(f"model {name!r} means {path}, which does not exist; run `autotraj bootstrap`")
        return str(path)
    if not Path(name).exists():
        raise FileNotFoundError(f"model path {name} does not exist")
    return name


def registered_model(lake: Lake, ref: str, data_dir: str | Path) -> tuple[str, str | None]:
    """(path, models version id or None) of a model_id in the `models` table, `models/<name>[@N]` (the latest
    or N-th model registered under that name), a role ('policy', …) or a path."""
    if ref.startswith("models/"):
        info = lake.resolve(ref, "models")
        return lake.read(info, columns=["path"]).column("path")[0].as_py(), info.version_id
    found = lake.sql(f"SELECT path, {VERSION_COLUMN} FROM models_all WHERE model_id = ? LIMIT 1", [ref]).to_pylist()
    if found:
        return found[0]["path"], found[0][VERSION_COLUMN]
    try:
        return resolve_model(ref, data_dir), None
    except FileNotFoundError:
        raise FileNotFoundError(f"no model {ref!r}: not a model_id in the models table, a role or a path") from None


def sft_features(
    tokenizer: Any, system: str, prompt: str, segments: Sequence[Mapping[str, Any]]
) -> dict[str, list[int]]:
    """input_ids and labels: −100 on the prompt and on tool segments, the ids on model segments and EOS."""
    _, input_ids = encode_prompt(tokenizer, system, prompt)
    labels = [IGNORE] * len(input_ids)
    for segment in segments:
        ids = tokenizer.encode(segment["text"], add_special_tokens=False)
        input_ids += ids
        labels += ids if segment["kind"] == "model" else [IGNORE] * len(ids)
    input_ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return {"input_ids": input_ids, "labels": labels}


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


@dataclass
class TrainReport:
    """What a training stage trained and registered."""

    model: VersionInfo
    model_id: str
    path: str
    metrics: dict[str, Any]
    trained: bool  # False when the same config and inputs were already trained


def already_trained(lake: Lake, name: str, lineage: Lineage) -> TrainReport | None:
    """The registered model when the same config, inputs and code were trained before."""
    existing = lake.latest_matching("models", name, lineage)
    if existing is None:
        return None
    row = lake.read(existing).to_pylist()[0]
    return TrainReport(existing, row["model_id"], row["path"], json.loads(row["metrics"]), trained=False)


def finish_training(
    lake: Lake,
    name: str,
    lineage: Lineage,
    trainer: Any,
    model: Any,
    tokenizer: Any,
    model_row: dict[str, Any],
    metrics: dict[str, Any],
) -> TrainReport | None:
    """Save the model with its tokenizer at model_row['path'], then commit its `models` row (with the
    metrics) and its training log to `train_metrics` in one transaction.

    Only the primary process does this; other ranks of a multi-GPU job return None.
    """
    if not trainer.is_world_process_zero():
        return None
    model.save_pretrained(model_row["path"])
    tokenizer.save_pretrained(model_row["path"])
    train_rows = [
        {
            "model_id": model_row["model_id"],
            "step": entry["step"],
            "epoch": entry.get("epoch"),
            "name": key,
            "value": float(value),
        }
        for entry in trainer.state.log_history
        for key, value in entry.items()
        if key not in ("step", "epoch") and isinstance(value, int | float)
    ]
    row = model_row | {"metrics": json.dumps(metrics)}
    version = lake.commit_stage(name, {"models": [row], "train_metrics": train_rows}, lineage, metrics)["models"]
    return TrainReport(version, model_row["model_id"], model_row["path"], metrics, trained=True)


def report_progress(trainer: Any, progress: StepProgress | None, keys: Sequence[str]) -> None:
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


def run_sft(
    lake: Lake,
    sft_ref: str,
    name: str,
    config: PipelineConfig,
    base_model: str | None = None,
    max_steps: int | None = None,
    progress: StepProgress | None = None,
) -> TrainReport | None:
    """Train the policy on an sft_examples version; register it as `models/<name>`."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    section = config.sft
    examples_info = lake.resolve(sft_ref, "sft_examples")
    base = resolve_model(base_model or section.base_model, config.runtime.data_dir)
    stage_config = {"sft": section.model_dump(mode="json"), "base": base, "max_steps": max_steps}
    digest = config_hash(stage_config | {"input": examples_info.version_id})
    lineage = Lineage(STAGE, config_hash=config_hash(stage_config), input_versions=(examples_info.version_id,))
    if (done := already_trained(lake, name, lineage)) is not None:
        return done

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    system = Prompts.load(config.rollout.system_prompt_file, config.rollout.user_template_file).system
    rows = lake.read(examples_info, columns=["prompt", "segments"]).to_pylist()
    features = [sft_features(tokenizer, system, row["prompt"], row["segments"]) for row in rows]
    kept = [feature for feature in features if len(feature["input_ids"]) <= section.max_length]
    too_long = len(features) - len(kept)
    if too_long:
        log.warning(
            "%d of %d SFT examples are longer than sft.max_length=%d and were left out",
            too_long,
            len(features),
            section.max_length,
        )
    if not kept:
        raise ValueError(f"{examples_info.version_id} has no example within sft.max_length={section.max_length}")

    model_id = f"sft-{name}-{digest[:8]}"
    out_dir = Path(config.runtime.data_dir) / "models" / "sft" / model_id
    peft_config = None
    if section.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=section.lora_r, lora_alpha=section.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=section.num_epochs,
        max_steps=max_steps or -1,
        per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=["tensorboard"],  # event files under checkpoints/runs/
        seed=section.seed,
        max_length=None,  # already within sft.max_length; nothing is cut silently
        disable_tqdm=True,
        **hardware_args(config),
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=args,
        train_dataset=datasets.Dataset.from_list(kept),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    report_progress(trainer, progress, ["loss"])
    result = trainer.train()
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = {
        "examples": len(kept),
        "too_long": too_long,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
    }
    model_row = {"model_id": model_id, "kind": "policy", "path": str(out_dir / "model"), "base_model": base}
    return finish_training(
        lake, name, lineage, trainer, model, tokenizer, model_row | {"method": section.method}, metrics
    )
