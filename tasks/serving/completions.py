"""An OpenAI-compatible completions server backed by the transformers backend.

For CPU users without vLLM, and for testing the HTTP backend against a real server on 127.0.0.1.
Speaks the subset the engine uses: POST /v1/completions with a text or token-id prompt, `stop`,
`max_tokens`, `min_tokens`, `temperature`, `top_p`, `seed`, `logprobs`; replies carry vLLM's
extensions `stop_reason` and `token_ids`. POST /v1/chat/completions takes messages (the model's chat
template for the question, the TIR grammar after it) and, with `tools`, answers a <code>/<search>
block as a native tool call, as a hosted API would. Requests are served one at a time: one CPU model, no
contention. Invalid parameters are 4xx answers (422 malformed, 400 out of the model's bounds, 404
another model's name), never 500s.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Literal

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator, model_validator

from tasks.core.prompts import encode_prompt
from tasks.core.tir import TOOL_STOPS, parse_tool_call, tool_segment_text
from tasks.generation.llm import Generation, SamplingParams, TransformersBackend
from tasks.serving.guard import ModelWorker, RequestGuard, context_length, guarded, model_app, run_cancellable

SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed takes


class CompletionRequest(BaseModel):
    """Body of POST /v1/completions; bounds that depend on the model are checked against it."""

    model: str = "default"
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=1)
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: no EOS or stop before this many tokens")
    temperature: float = Field(1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, max_length=32)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    logprobs: int | None = Field(None, ge=0, le=20)
    include_stop_str_in_output: bool = False
    return_token_ids: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[int]) -> str | list[int]:
        if not prompt:
            raise ValueError("the prompt is empty")
        return prompt

    @model_validator(mode="after")
    def _min_within_max(self) -> CompletionRequest:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")
        return self


class ChatMessage(BaseModel):
    """One message of a chat request (OpenAI's shape; tool calls as the API sends them)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    """Body of POST /v1/chat/completions."""

    model: str = "default"
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, max_length=32)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _starts_with_a_question(self) -> ChatRequest:
        roles = [message.role for message in self.messages]
        first_user = roles.index("user") if "user" in roles else -1
        if first_user < 0 or any(role != "system" for role in roles[:first_user]):
            raise ValueError("messages must open with an optional system message and a user message")
        return self


def tir_continuation(messages: list[ChatMessage]) -> str:
    """The messages after the question as one TIR continuation: what the model wrote (tool calls as
    <code>/<search> blocks) and each result in <result> tags, the way the model was trained.

    This is the server's chat template and tool parser for TIR models, as vLLM's `--tool-call-parser`
    is for theirs: a tool message becomes a <result>, and a user message after the question is taken
    as given (the chat backend's tags mode sends results as user messages already tagged).
    """
    parts = []
    for message in messages:
        if message.role == "tool":
            parts.append(tool_segment_text(message.content or ""))
            continue
        parts.append(message.content or "")
        for call in message.tool_calls or []:
            function = call.get("function") or {}
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except ValueError:
                raise HTTPException(status_code=400, detail="a tool call's arguments are not JSON") from None
            if function.get("name") == "search":
                parts.append(f"<search> {arguments.get('query', '')} </search>")
            else:
                parts.append(f"<code>\n{arguments.get('code', '')}\n</code>")
    return "".join(parts)


def serve_app(
    backend: TransformersBackend,
    served_name: str,
    api_key: str | None = None,
    wedged_after_s: float = 600.0,
) -> RequestGuard:
    """A FastAPI app exposing `backend` as /v1/completions, /v1/models and /health.

    Requests are bounded by the model's context (prompt plus max_tokens, and the body size), run
    one at a time, and stop generating when their client disconnects. With `api_key`, every path
    but /health needs `Authorization: Bearer <key>`.
    """
    context = context_length(backend.model)
    vocabulary = len(backend.tokenizer)
    app = model_app("AutoTraj model server", "OpenAI-compatible completions (transformers)")
    worker = ModelWorker(wedged_after_s)

    @app.get("/health")
    def health() -> JSONResponse:
        status, body = worker.health()
        return JSONResponse({**body, "model": served_name}, status_code=status)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "autotraj"}]}

    def prompt_ids(request: CompletionRequest) -> list[int]:
        if request.model != served_name:
            raise HTTPException(status_code=404, detail=f"The model `{request.model}` does not exist.")
        if isinstance(request.prompt, str):
            return backend.tokenizer.encode(request.prompt, add_special_tokens=False)
        if not all(0 <= token < vocabulary for token in request.prompt):
            raise HTTPException(status_code=400, detail=f"prompt token ids must lie in [0, {vocabulary})")
        return request.prompt

    async def generate(raw: Request, ids: list[int], stop: list[str], params: SamplingParams) -> Generation:
        """One generation, one at a time, cancelled when its client leaves."""
        if len(ids) + params.max_new_tokens > context:
            # As vLLM answers: a request that cannot fit is the client's error, not worth a retry.
            raise HTTPException(
                status_code=400,
                detail=f"This model's maximum context length is {context} tokens; the request has "
                f"{len(ids)} prompt tokens and asks for {params.max_new_tokens} more",
            )

        def run(cancel: threading.Event) -> Generation | None:
            with worker.hold():
                if cancel.is_set():  # its client left while it waited
                    return None
                backend.cancel = cancel
                try:
                    return backend.generate([ids], stop, params)[0]
                finally:
                    backend.cancel = None

        generation = await run_cancellable(raw, run)
        if generation is None:  # nobody reads this reply; 499 is what proxies log for it
            worker.cancelled += 1
            raise HTTPException(status_code=499, detail="the client closed the request")
        return generation

    def usage(ids: list[int], generation: Generation) -> dict[str, int]:
        return {"prompt_tokens": len(ids), "completion_tokens": len(generation.token_ids),
                "total_tokens": len(ids) + len(generation.token_ids)}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request) -> dict[str, Any]:
        ids = prompt_ids(request)
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        params = SamplingParams(
            max_new_tokens=request.max_tokens,
            min_new_tokens=request.min_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            logprobs=request.logprobs is not None,
        )
        generation = await generate(raw, ids, stop, params)
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
            "usage": usage(ids, generation),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest, raw: Request) -> dict[str, Any]:
        if request.model != served_name:
            raise HTTPException(status_code=404, detail=f"The model `{request.model}` does not exist.")
        roles = [message.role for message in request.messages]
        question = roles.index("user")
        system = request.messages[0].content if question else None
        _, ids = encode_prompt(backend.tokenizer, system or "", request.messages[question].content or "")
        continuation = tir_continuation(request.messages[question + 1 :])
        ids = ids + backend.tokenizer.encode(continuation, add_special_tokens=False)
        tools = {(tool.get("function") or {}).get("name") for tool in request.tools or []}
        tool_stops = [stop for stop, tool in TOOL_STOPS.items() if tool in tools]
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        params = SamplingParams(max_new_tokens=request.max_tokens, temperature=request.temperature,
                                top_p=request.top_p, seed=request.seed)  # fmt: skip
        generation = await generate(raw, ids, stop + tool_stops, params)
        text, message = generation.text, {"role": "assistant", "content": generation.text, "tool_calls": None}
        finish = "length" if generation.finish == "length" else "stop"
        if generation.stop in tool_stops:
            call = parse_tool_call(text, generation.stop)
            name = TOOL_STOPS[generation.stop]
            arguments = json.dumps({"code" if name == "python" else "query": call.argument})
            message["content"] = text[: text.rfind(generation.stop.replace("/", ""))] or None
            message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                      "function": {"name": name, "arguments": arguments}}]  # fmt: skip
            finish = "tool_calls"
        elif generation.stop:  # as OpenAI does: the stop sequence is not part of the content
            message["content"] = text[: text.rfind(generation.stop)]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(ids, generation),
        }

    return guarded(app, api_key, context)
