"""The reward_model stage: where a trajectory-level reward model learns from the preference pairs.

A sequence classifier (one output) on the policy's base, trained with TRL's RewardTrainer
(Bradley–Terry loss), LoRA r=8 by default. Each side of a pair is tokenized like an SFT example
(chat-template prompt, then each segment on its own, then EOS). Pairs are split by query, so no
question is in both splits, and the held-out pairwise accuracy is reported. Pairs longer than
`reward_model.max_length` are counted and reported (TRL would drop them silently).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tasks.core.errors import StageInputError
from tasks.core.hashing import digest
from tasks.core.prompts import Prompts
from tasks.core.stage import Input, Model, StageContext, StageResult, StageSpec
from tasks.training.common import (
    finish_training,
    hardware_args,
    lora_config,
    losses,
    output_dir,
    report_progress,
    training_tokenizer,
)  # fmt: skip
from tasks.training.features import score_sequences, sft_features

log = logging.getLogger(__name__)


def held_out(query_id: str, fraction: float) -> bool:
    """Whether a query's pairs belong to the held-out split (stable across runs)."""
    return int(digest("rm-split", query_id)[:8], 16) % 10_000 < fraction * 10_000


def pairwise_accuracy(model: Any, tokenizer: Any, pairs: Sequence[dict]) -> float:
    """Share of pairs whose chosen side scores above its rejected side."""
    chosen = score_sequences(model, tokenizer.pad_token_id, [pair["chosen_ids"] for pair in pairs])
    rejected = score_sequences(model, tokenizer.pad_token_id, [pair["rejected_ids"] for pair in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(pairs))


def _tokenized_pairs(context: StageContext, tokenizer: Any) -> list[dict]:
    system = Prompts.from_config(context.config).system
    pairs = []
    for row in context.lake.read(context.inputs["pairs"]).to_pylist():
        chosen = sft_features(tokenizer, system, row["prompt"], row["chosen_segments"])["input_ids"]
        rejected = sft_features(tokenizer, system, row["prompt"], row["rejected_segments"])["input_ids"]
        pairs.append({"query_id": row["query_id"], "chosen_ids": chosen, "rejected_ids": rejected})
    return pairs


def run(context: StageContext) -> StageResult:
    """Train the reward model on a preference_pairs version; register it as `models/<name>`."""
    import datasets
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    section = context.config.reward_model
    pairs_info = context.inputs["pairs"]
    base = context.models["base"].path
    tokenizer = training_tokenizer(base)
    pairs = _tokenized_pairs(context, tokenizer)
    if not pairs:
        raise StageInputError(f"{pairs_info.version_id} is empty: no accepted repair to prefer over its original")
    fitting = [p for p in pairs if max(len(p["chosen_ids"]), len(p["rejected_ids"])) <= section.max_length]
    too_long = len(pairs) - len(fitting)
    if too_long:
        log.warning("%d of %d pairs are longer than reward_model.max_length=%d and were left out",
                    too_long, len(pairs), section.max_length)  # fmt: skip
    evaluation = [p for p in fitting if held_out(p["query_id"], section.eval_fraction)]
    training = [p for p in fitting if not held_out(p["query_id"], section.eval_fraction)]
    if not training or not evaluation:
        raise StageInputError(
            f"{pairs_info.version_id}: {len(training)} training and {len(evaluation)} held-out pairs after the split "
            f"by query; need some of each (more pairs, or another reward_model.eval_fraction)"
        )

    model_id, out_dir = output_dir(context, "reward", "rm")
    set_seed(section.seed)  # the score head is initialised here, before the trainer seeds anything
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last non-pad token
    peft_config = lora_config(section.method, section.lora_r, section.lora_alpha, "SEQ_CLS")
    columns = ["chosen_ids", "rejected_ids"]
    args = RewardConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=section.num_epochs,
        per_device_train_batch_size=section.batch_size,
        learning_rate=section.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=["tensorboard"],
        seed=section.seed,
        max_length=None,  # counted above instead of dropped silently
        disable_tqdm=True,
        **hardware_args(context.config),
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list([{k: p[k] for k in columns} for p in training]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    report_progress(trainer, context.progress, ["loss"])
    trainer.train()
    trained = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    trained.eval()
    logged = losses(trainer)
    metrics = {
        "pairs": len(pairs),
        "too_long": too_long,
        "train_pairs": len(training),
        "held_out_pairs": len(evaluation),
        "held_out_accuracy": round(pairwise_accuracy(trained, tokenizer, evaluation), 4),
        "train_accuracy": round(pairwise_accuracy(trained, tokenizer, training), 4),
        "first_loss": logged[0] if logged else None,
        "final_loss": logged[-1] if logged else None,
        "steps": trainer.state.global_step,
    }
    registration = {"model_id": model_id, "kind": "reward_model", "path": str(out_dir / "model"), "base_model": base,
                    "method": section.method}  # fmt: skip
    return finish_training(context, trainer, trained, tokenizer, registration, metrics)


SPEC = StageSpec(
    name="reward_model",
    kind="train",
    description="Train the trajectory reward model (Bradley-Terry) and report its held-out pairwise accuracy.",
    reads=("preference_pairs",),
    writes=("models", "train_metrics", "stage_reports"),
    config=("reward_model",),
    files=("rollout.system_prompt_file",),
    inputs=(Input("pairs", "preference_pairs", "preference_pairs version (name, name@N, ...)."),),
    models=(Model("base", "Base model of the classifier [default: reward_model.base_model, else sft.base_model].",
                  config=("reward_model.base_model", "sft.base_model"), local=True),),
    run=run,
    default_name="{input}-rm",
)  # fmt: skip
