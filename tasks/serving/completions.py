"""An OpenAI-compatible completions server backed by the transformers backend.

For CPU users without vLLM, and for testing the HTTP backend against a real server on 127.0.0.1.
Speaks the subset the engine uses: POST /v1/completions with a text or token-id prompt, `stop`,
`max_tokens`, `temperature`, `top_p`, `seed`, `logprobs`; replies carry vLLM's extensions
`stop_reason` and `token_ids`. Requests are served one at a time: one CPU model, no contention.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from tasks.generation.llm import SamplingParams, TransformersBackend


class CompletionRequest(BaseModel):
    """Body of POST /v1/completions."""

    model: str = "default"
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=1, le=32768)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    return_token_ids: bool = False


def serve_app(backend: TransformersBackend, served_name: str):  # -> fastapi.FastAPI, imported lazily
    """A FastAPI app exposing `backend` as /v1/completions, /v1/models and /health."""
    from fastapi import FastAPI, HTTPException

    context_length = getattr(backend.model.config, "max_position_embeddings", None)
    app = FastAPI(title="AutoTraj model server", description="OpenAI-compatible completions (transformers)")
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": served_name}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "autotraj"}]}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict[str, Any]:
        tokenizer = backend.tokenizer
        ids = (
            request.prompt
            if isinstance(request.prompt, list)
            else tokenizer.encode(request.prompt, add_special_tokens=False)
        )
        if context_length is not None and len(ids) + request.max_tokens > context_length:
            # As vLLM answers: a request that cannot fit is the client's error, not worth a retry.
            raise HTTPException(
                status_code=400,
                detail=f"This model's maximum context length is {context_length} tokens; the request has "
                f"{len(ids)} prompt tokens and asks for {request.max_tokens} more",
            )
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        params = SamplingParams(
            max_new_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            logprobs=request.logprobs is not None,
        )
        with lock:
            generation = backend.generate([ids], stop, params)[0]
        text = generation.text
        if generation.stop and not request.include_stop_str_in_output:
            text = text[: text.rfind(generation.stop)]
        choice: dict[str, Any] = {
            "index": 0,
            "text": text,
            "finish_reason": "length" if generation.finish == "length" else "stop",
            "stop_reason": generation.stop,
            "logprobs": {"token_logprobs": generation.logprobs} if generation.logprobs is not None else None,
        }
        if request.return_token_ids:
            choice["token_ids"] = generation.token_ids
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:16]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(generation.token_ids),
                "total_tokens": len(ids) + len(generation.token_ids),
            },
        }

    return app
