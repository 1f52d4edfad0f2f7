"""Token features for training and scoring, made the way the engine makes trajectories.

The prompt goes through the policy's chat template, then every segment is tokenized on its own
(joined text would let BPE merge across `</code><result>`), then EOS. Labels are −100 on the prompt
and on tool results, so a loss covers exactly what the model itself should write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tasks.core.prompts import encode_prompt

IGNORE = -100


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


def score_sequences(model: Any, pad_token_id: int, sequences: Sequence[list[int]], batch_size: int = 16) -> list[float]:
    """A sequence classifier's (reward model's) score of each token sequence, in batches (right padding)."""
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
