"""The sft stage: where the policy is trained on trajectories.

Each SFT example is tokenized as the engine tokenizes a trajectory (tasks/training/features.py):
labels are −100 on the prompt and on tool results, so the loss covers exactly what the model itself
should write. TRL's SFTTrainer trains on these ids as they are (its collator keeps given labels).
The checkpoint is registered in `models` with its lineage; the training log goes to `train_metrics`
and TensorBoard.
"""

from __future__ import annotations

import logging

from tasks.core.errors import StageInputError
from tasks.core.prompts import Prompts
from tasks.core.stage import Input, Model, Option, StageContext, StageResult, StageSpec
from tasks.training.common import (
    finish_training,
    hardware_args,
    lora_config,
    losses,
    output_dir,
    report_progress,
    training_tokenizer,
)  # fmt: skip
from tasks.training.features import sft_features

log = logging.getLogger(__name__)


def run(context: StageContext) -> StageResult:
    """Train the policy on an sft_examples version; register it as `models/<name>`."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    config, lake = context.config, context.lake
    section = config.sft
    examples_info = context.inputs["examples"]
    base = context.models["base"].path
    tokenizer = training_tokenizer(base)
    system = Prompts.from_config(config).system
    rows = lake.read(examples_info, columns=["prompt", "segments"]).to_pylist()
    features = [sft_features(tokenizer, system, row["prompt"], row["segments"]) for row in rows]
    kept = [feature for feature in features if len(feature["input_ids"]) <= section.max_length]
    too_long = len(features) - len(kept)
    if too_long:
        log.warning("%d of %d SFT examples are longer than sft.max_length=%d and were left out",
                    too_long, len(features), section.max_length)  # fmt: skip
    if not kept:
        reason = f"all {too_long} are longer than sft.max_length={section.max_length}" if features else "it is empty"
        raise StageInputError(f"{examples_info.version_id} has no example to train on: {reason}")

    model_id, out_dir = output_dir(context, "sft", "sft")
    peft_config = lora_config(section.method, section.lora_r, section.lora_alpha, "CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=section.num_epochs,
        max_steps=context.options["max_steps"] or -1,
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
    report_progress(trainer, context.progress, ["loss"])
    result = trainer.train()
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    logged = losses(trainer)
    metrics = {
        "examples": len(kept),
        "too_long": too_long,
        "steps": trainer.state.global_step,
        "first_loss": logged[0] if logged else None,
        "final_loss": logged[-1] if logged else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
    }
    registration = {"model_id": model_id, "kind": "policy", "path": str(out_dir / "model"), "base_model": base,
                    "method": section.method}  # fmt: skip
    return finish_training(context, trainer, model, tokenizer, registration, metrics)


SPEC = StageSpec(
    name="sft",
    kind="train",
    description="Fine-tune the policy on SFT examples (loss on model-written tokens only) and register it.",
    reads=("sft_examples",),
    writes=("models", "train_metrics", "stage_reports"),
    config=("sft",),
    files=("rollout.system_prompt_file",),
    inputs=(Input("examples", "sft_examples", "sft_examples version (name, name@N, ...).", short="-e"),),
    models=(Model("base", "Base model to fine-tune (a model reference) [default: sft.base_model].",
                  config="sft.base_model", local=True),),
    options=(Option("max_steps", int, "Stop after this many optimizer steps [default: sft.num_epochs]."),),
    run=run,
    default_name="{input}",
)  # fmt: skip
