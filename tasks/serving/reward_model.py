"""The reward model as a scorer and as a server.

`RewardScorer` scores trajectories in batches (usable directly or as a Ray actor). GRPO reaches an
RM through a `RewardModelClient`: `ActorRewardModel` (the scorer in a Ray actor) or `HttpRewardModel`
(a running server); both raise RewardModelError on any failure. `serve_app`
exposes it as `POST /score {"trajectory": …} → {"score": …}` plus `GET /health`, the API the paper's
verl-based reward code calls, so the RM also serves external RL trainers. A request may instead
send `{"prompt": question, "response": trajectory}`, which is wrapped in the policy's chat template
exactly as the RM was trained. A scoring failure is an HTTP error with its reason, never a silent
0.0 (the paper's code scored failures as 0.0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, model_validator

from tasks.core.models import API_KEY_ENV
from tasks.core.prompts import Prompts, encode_prompt
from tasks.generation.served import auth_headers
from tasks.serving.guard import ModelWorker, RequestGuard, context_length, guarded, model_app
from tasks.training.features import score_sequences


class RewardScorer:
    """A trained reward model that scores token sequences or texts, batch by batch."""

    def __init__(self, model_path: str, system_prompt: str | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).to(device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # batches are right-padded
        self.system = system_prompt if system_prompt is not None else Prompts.from_config().system
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

    def health(self) -> float:
        """Score one token; raise unless the model answers with a finite number."""
        value = self.score_ids([[self.tokenizer.eos_token_id]])[0]
        if not math.isfinite(value):
            raise ValueError(f"the reward model returned {value} for a one-token input")
        return value


class RewardModelError(RuntimeError):
    """The reward model could not score: unreachable, unhealthy, or failing."""


@dataclass(frozen=True)
class RewardInput:
    """One trajectory to score: its token ids (prompt and completion) and its text."""

    ids: list[int]
    prompt: str
    response: str


class RewardModelClient(Protocol):
    """Where GRPO gets RM scores: a scorer in a Ray actor, or a `serve-rm` server."""

    name: str

    def check(self) -> None:
        """Raise RewardModelError unless the reward model answers."""
        ...

    def score(self, items: Sequence[RewardInput]) -> list[float]:
        """One score per trajectory; raise RewardModelError on any failure."""
        ...

    def close(self) -> None:
        """Release the reward model."""
        ...


class ActorRewardModel:
    """A RewardScorer in a Ray actor, scoring token ids exactly as the RM was trained."""

    def __init__(self, model_path: str, system_prompt: str, ray_address: str | None = None):
        import ray

        from tasks.core.ray import ensure_ray, generation_actor_options

        ensure_ray(ray_address)
        self.name = model_path
        self.actor = ray.remote(RewardScorer).options(**generation_actor_options(1)).remote(model_path, system_prompt)

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except ray.exceptions.RayError as exc:
            raise RewardModelError(f"reward model {self.name}: {method} failed: {exc}") from exc

    def check(self) -> None:
        """Raise RewardModelError unless the actor loads the model and scores a token."""
        self._call("health")

    def score(self, items: Sequence[RewardInput]) -> list[float]:
        """One score per trajectory, batched inside the actor."""
        return self._call("score_ids", [item.ids for item in items])

    def close(self) -> None:
        """Stop the actor."""
        import ray

        ray.kill(self.actor)


class HttpRewardModel:
    """A reward model behind `autotraj serve-rm` (or any server with the same API)."""

    def __init__(self, url: str, timeout_s: float = 60.0, concurrency: int = 8):
        import httpx

        self.name = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout_s, headers=auth_headers(envs=(API_KEY_ENV,)))
        self.concurrency = concurrency

    def check(self) -> None:
        """Raise RewardModelError unless GET /health answers 200 with status ok."""
        import httpx

        try:
            response = self.client.get(f"{self.name}/health")
            healthy = response.status_code == 200 and response.json().get("status") == "ok"
        except (httpx.HTTPError, ValueError) as exc:
            raise RewardModelError(f"reward model at {self.name} is unreachable: {exc!r}") from exc
        if not healthy:
            raise RewardModelError(f"reward model at {self.name} is unhealthy: {response.status_code} {response.text}")

    def _score_one(self, item: RewardInput) -> float:
        import httpx

        try:
            response = self.client.post(f"{self.name}/score", json={"prompt": item.prompt, "response": item.response})
        except httpx.HTTPError as exc:
            raise RewardModelError(f"reward model at {self.name} is unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise RewardModelError(f"reward model at {self.name} failed: {response.status_code} {response.text}")
        return float(response.json()["score"])

    def score(self, items: Sequence[RewardInput]) -> list[float]:
        """One POST /score per trajectory, `concurrency` in flight; the first failure raises."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._score_one, items))

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


class ScoreRequest(BaseModel):
    """Body of POST /score: a whole trajectory text, or a prompt and a response."""

    trajectory: str | None = None
    prompt: str | None = None
    response: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ScoreRequest:
        if (self.trajectory is None) == (self.response is None) or (
            self.trajectory is not None and self.prompt is not None
        ):
            raise ValueError('send either "trajectory" (it holds its prompt), or "prompt" and "response"')
        return self


def serve_app(
    scorer: RewardScorer, served_name: str, api_key: str | None = None, wedged_after_s: float = 600.0
) -> RequestGuard:
    """A FastAPI app exposing the scorer as POST /score and GET /health.

    A trajectory longer than the model's context is a 400 (the body is bounded by it too), requests
    score one at a time, and /health answers 503 when the model fails or one request has held it
    longer than `wedged_after_s`. With `api_key`, /score needs `Authorization: Bearer <key>`.
    """
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    context = context_length(getattr(scorer, "model", None))
    app = model_app("AutoTraj reward model", "POST /score {trajectory} -> {score}")
    worker = ModelWorker(wedged_after_s)

    @app.get("/health")
    def health() -> JSONResponse:
        status, body = worker.health()
        if status == 200 and not body["busy_s"]:  # idle: prove the model still scores
            try:
                with worker.hold():
                    scorer.health()
            except Exception as exc:  # the model cannot score: say so, so callers stop before training
                status, body = 503, {"status": "unhealthy", "detail": f"unhealthy: {type(exc).__name__}: {exc}"}
        return JSONResponse({**body, "model": served_name}, status_code=status)

    @app.post("/score")
    def score(request: ScoreRequest) -> dict[str, Any]:
        text = request.trajectory if request.trajectory is not None else request.response
        prompt = request.prompt if request.trajectory is None else None
        try:
            ids = scorer.encode(prompt, text or "")
        except Exception as exc:
            raise HTTPException(status_code=500, detail=f"scoring failed: {type(exc).__name__}: {exc}") from exc
        if not ids or len(ids) > context:
            raise HTTPException(
                status_code=400,
                detail=f"the trajectory has {len(ids)} tokens; this reward model scores 1 to {context}",
            )
        try:
            with worker.hold():
                value = scorer.score_ids([ids])[0]
        except Exception as exc:  # surface the failure; a silent 0.0 would be read as a real score
            raise HTTPException(status_code=500, detail=f"scoring failed: {type(exc).__name__}: {exc}") from exc
        return {"score": value, "model": served_name}

    return guarded(app, api_key, context)
