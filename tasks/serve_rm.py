"""The reward model as a scorer and as a server.

`RewardScorer` scores trajectories in batches (usable directly or as a Ray actor). `serve_app`
exposes it as `POST /score {"trajectory": …} → {"score": …}` plus `GET /health`, the API the paper's
verl-based reward code calls, so the RM also serves external RL trainers. A request may instead
send `{"prompt": question, "response": trajectory}`, which is wrapped in the policy's chat template
exactly as the RM was trained. A scoring failure is an HTTP error with its reason, never a silent
0.0 (the paper's code scored failures as 0.0).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, model_validator

from tasks.engine import Prompts, encode_prompt
from tasks.reward_model import score_sequences


class RewardScorer:
    """A trained reward model that scores token sequences or texts, batch by batch."""

    def __init__(self, model_path: str, system_prompt: str | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).to(device).eval()
        self.system = system_prompt if system_prompt is not None else Prompts.load().system
        self.batch_size = batch_size

    def encode(self, prompt: str | None, response: str) -> list[int]:
        """Token ids as the RM was trained: chat-template prompt, the trajectory, EOS; or raw text."""
        if prompt is None:
            return self.tokenizer.encode(response, add_special_tokens=False)
        _, ids = encode_prompt(self.tokenizer, self.system, prompt)
        return [*ids, *self.tokenizer.encode(response, add_special_tokens=False), self.tokenizer.eos_token_id]

    def score_ids(self, sequences: Sequence[list[int]]) -> list[float]:
        """One score per token sequence."""
        return score_sequences(self.model, self.tokenizer.pad_token_id, sequences, self.batch_size)

    def score(self, items: Sequence[tuple[str | None, str]]) -> list[float]:
        """One score per (prompt or None, trajectory text)."""
        return self.score_ids([self.encode(prompt, response) for prompt, response in items])


class ScoreRequest(BaseModel):
    """Body of POST /score: a whole trajectory text, or a prompt and a response."""

    trajectory: str | None = None
    prompt: str | None = None
    response: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ScoreRequest:
        if (self.trajectory is None) == (self.response is None):
            raise ValueError('send either "trajectory", or "prompt" and "response"')
        return self


def serve_app(scorer: RewardScorer, served_name: str):  # -> fastapi.FastAPI, imported lazily
    """A FastAPI app exposing the scorer as POST /score and GET /health."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="AutoTraj reward model", description="POST /score {trajectory} -> {score}")
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": served_name}

    @app.post("/score")
    def score(request: ScoreRequest) -> dict[str, Any]:
        text = request.trajectory if request.trajectory is not None else request.response
        try:
            with lock:
                value = scorer.score([(request.prompt if request.trajectory is None else None, text or "")])[0]
        except Exception as exc:  # surface the failure; a silent 0.0 would be read as a real score
            raise HTTPException(status_code=500, detail=f"scoring failed: {type(exc).__name__}: {exc}") from exc
        return {"score": value, "model": served_name}

    return app
