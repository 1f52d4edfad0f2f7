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
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig, config_hash
from schemas.lake import Lake, Lineage
from tasks.engine import Prompts
from tasks.rollout import digest
from tasks.sft import (
    StepProgress,
    TrainReport,
    already_trained,
    finish_training,
    hardware_args,
    report_progress,
    resolve_model,
    sft_features,
)

log = logging.getLogger(__name__)
STAGE = "reward_model"


def held_out(query_id: str, fraction: float) -> bool:
    """Whether a query's pairs belong to the held-out split (stable across runs)."""
    return int(digest("rm-split", query_id)[:8], 16) % 10_000 < fraction * 10_000


def score_sequences(model: Any, pad_token_id: int, sequences: Sequence[list[int]], batch_size: int = 16) -> list[float]:
    """The reward model's score of each token sequence, in batches (right padding)."""
    import torch

    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_token_id)
        mask = torch.zeros_like(ids)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        scores += logits[:, 0].float().tolist()
    return scores


def pairwise_accuracy(model: Any, tokenizer: Any, pairs: Sequence[dict]) -> float:
    """Share of pairs whose chosen side scores above its rejected side."""
    chosen = score_sequences(model, tokenizer.pad_token_id, [pair["chosen_ids"] for pair in pairs])
    rejected = score_sequences(model, tokenizer.pad_token_id, [pair["rejected_ids"] for pair in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(pairs))


def run_reward_model(
    lake: Lake,
    pairs_ref: str,
    name: str,
    config: PipelineConfig,
    base_model: str | None = None,
    progress: StepProgress | None = None,
) -> TrainReport | None:
    """Train the reward model on a preference_pairs version; register it as `models/<name>`."""
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    section = config.reward_model
    pairs_info = lake.resolve(pairs_ref, "preference_pairs")
    base = resolve_model(base_model or section.base_model or config.sft.base_model, config.runtime.data_dir)
    stage_config = {"reward_model": section.model_dump(mode="json"), "base": base}
    lineage = Lineage(STAGE, config_hash=config_hash(stage_config), input_versions=(pairs_info.version_id,))
    if (done := already_trained(lake, name, lineage)) is not None:
        return done

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    system = Prompts.load(config.rollout.system_prompt_file, config.rollout.user_template_file).system
    pairs = []
    for row in lake.read(pairs_info).to_pylist():
        chosen = sft_features(tokenizer, system, row["prompt"], row["chosen_segments"])["input_ids"]
        rejected = sft_features(tokenizer, system, row["prompt"], row["rejected_segments"])["input_ids"]
        pairs.append({"query_id": row["query_id"], "chosen_ids": chosen, "rejected_ids": rejected})
    fitting = [p for p in pairs if max(len(p["chosen_ids"]), len(p["rejected_ids"])) <= section.max_length]
    too_long = len(pairs) - len(fitting)
    if too_long:
        log.warning(
            "%d of %d pairs are longer than reward_model.max_length=%d and were left out",
            too_long,
            len(pairs),
            section.max_length,
        )
    evaluation = [p for p in fitting if held_out(p["query_id"], section.eval_fraction)]
    training = [p for p in fitting if not held_out(p["query_id"], section.eval_fraction)]
    if not training or not evaluation:
        raise ValueError(
            f"{pairs_info.version_id}: {len(training)} training and {len(evaluation)} held-out pairs after the split "
            f"by query; need some of each (more pairs, or another reward_model.eval_fraction)"
        )

    model_id = f"rm-{name}-{config_hash(stage_config | {'input': pairs_info.version_id})[:8]}"
    out_dir = Path(config.runtime.data_dir) / "models" / "reward" / model_id
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last non-pad token
    peft_config = None
    if section.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=section.lora_r, lora_alpha=section.lora_alpha, target_modules="all-linear", task_type="SEQ_CLS"
        )
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
        **hardware_args(config),
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list([{k: p[k] for k in columns} for p in training]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    report_progress(trainer, progress, ["loss"])
    trainer.train()
    trained = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    trained.eval()
    accuracy = pairwise_accuracy(trained, tokenizer, evaluation)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = {
        "pairs": len(pairs),
        "too_long": too_long,
        "train_pairs": len(training),
        "held_out_pairs": len(evaluation),
        "held_out_accuracy": round(accuracy, 4),
        "train_accuracy": round(pairwise_accuracy(trained, tokenizer, training), 4),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": trainer.state.global_step,
    }
    model_row = {
        "model_id": model_id,
        "kind": "reward_model",
        "path": str(out_dir / "model"),
        "base_model": base,
        "method": section.method,
    }
    return finish_training(lake, name, lineage, trainer, trained, tokenizer, model_row, metrics)
