"""Served models over HTTP: what every such backend shares, and the /v1/completions backend.

`ServedClient` is one endpoint with its key, the retry policy (tools_sandbox/http_retry.py), an
optional requests-per-minute cap and an optional reply cache: a request answered once is answered
again from the cache (`requests.cache`), so a replay costs nothing and repeats exactly. A 401/403 is
a `ModelAuthError` that stops the stage; any other request that fails after its retries errors only
its own trajectory. `OpenAIBackend` speaks /v1/completions with token-id prompts (vLLM, SGLang,
`autotraj serve-model`); the chat backend (tasks/generation/chat.py) speaks /v1/chat/completions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tasks.core.errors import ModelAuthError
from tasks.core.models import SERVED_KEY_ENVS, ModelRef
from tasks.generation.llm import Generation, SamplingParams, finish_generation, load_tokenizer, seeded
from tools_sandbox.http_retry import MalformedResponse, RateLimit, RequestFailed, RetryPolicy, post_json
from tools_sandbox.json_cache import JsonCache

log = logging.getLogger(__name__)


def auth_headers(api_key: str | None = None, envs: Sequence[str] = SERVED_KEY_ENVS) -> dict[str, str]:
    """The bearer header for a served model: the key given, else the first of `envs` that is set."""
    key = api_key or next((os.environ[env] for env in envs if os.environ.get(env)), None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def probe_served(model: ModelRef, timeout_s: float = 3.0) -> str | None:
    """Why a served model cannot be used right now (its server does not answer, or does not serve that
    name), or None when GET /v1/models lists it. Loads nothing."""
    url = f"{model.url}/models"
    try:
        response = httpx.get(url, timeout=timeout_s, headers=auth_headers())
        response.raise_for_status()
        served = [entry.get("id") for entry in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        detail = f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
        return f"served model {model.location}: {url} does not answer ({detail})"
    if model.served_name not in served:
        return f"served model {model.location}: the server at {model.url} serves {served}, not {model.served_name!r}"
    return None


@dataclass(frozen=True)
class ServedOptions:
    """How a generating stage reaches its served model (from its config section and `requests`)."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    api_key_env: str | None = None  # None: OPENAI_API_KEY, then AUTOTRAJ_API_KEY
    cache_path: str | None = None  # the reply cache's SQLite file (None: no cache)
    requests_per_minute: float | None = None
    chat_mode: str = "tags"  # openai-chat only: tags | tools
    chat_result_role: str = "user"  # openai-chat tags mode: the role that carries a <result> back


class ServedClient:
    """One endpoint: key, retries, rate cap and reply cache."""

    def __init__(self, url: str, options: ServedOptions):
        envs = SERVED_KEY_ENVS
        if options.api_key_env is not None:
            if not os.environ.get(options.api_key_env):
                raise ModelAuthError(f"{url}: the key's variable ${options.api_key_env} (api_key_env) is not set")
            envs = (options.api_key_env,)
        self.url = url
        self.policy = options.policy
        self.client = httpx.Client(timeout=httpx.Timeout(options.policy.timeout_s), headers=auth_headers(envs=envs))
        self.limit = RateLimit(options.requests_per_minute) if options.requests_per_minute else None
        self.cache = JsonCache(options.cache_path, "served_replies") if options.cache_path else None
        self.failed = 0

    def generation(self, body: dict[str, Any], parse: Callable[[Any], Generation]) -> Generation:
        """`parse` of the reply to `body` (MalformedResponse for a bad one, retried), from the cache when it
        holds it; an errored Generation when the request failed for good; ModelAuthError on 401/403."""
        key = self.cache.key(self.url, body) if self.cache is not None else ""
        stored = self.cache.get(key) if self.cache is not None else None
        if stored is not None:
            return parse(stored)
        try:
            data, generation = post_json(self.client, self.url, body, self.policy, lambda data: (data, parse(data)),
                                         self.limit)  # fmt: skip
        except RequestFailed as exc:
            self.failed += 1
            if isinstance(exc.cause, httpx.HTTPStatusError) and exc.cause.response.status_code in (401, 403):
                raise ModelAuthError(
                    f"{exc}; check the key (api_key_env, OPENAI_API_KEY or AUTOTRAJ_API_KEY)"
                ) from None
            log.warning("request failed: %s", exc)
            return Generation([], "", "error", error=str(exc))
        if self.cache is not None:
            self.cache.put(key, data)
        return generation


def usage_of(data: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens from a reply's `usage`, or None when it reports none."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


class ServedBackend:
    """A backend behind an OpenAI-compatible API path: the model's name, a tokenizer, the client."""

    path = ""  # under /v1

    def __init__(
        self,
        url: str,
        model: str,
        tokenizer_path: str,
        concurrency: int = 16,
        options: ServedOptions | None = None,
    ):
        self.options = options or ServedOptions()
        self.name = model
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1") + self.path
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.concurrency = concurrency
        self.served = ServedClient(self.url, self.options)

    @property
    def failed_requests(self) -> int:
        """Requests that failed after their retries."""
        return self.served.failed


class OpenAIBackend(ServedBackend):
    """An OpenAI-compatible /v1/completions server, one request per context, `concurrency` in flight."""

    path = "/completions"

    def generate(
        self,
        contexts: Sequence[list[int]],
        stop: Sequence[str],
        params: SamplingParams,
        keys: Sequence[Hashable] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One request per context, each with its own seed; a request that fails after its retries
        errors only its context.

        `keys` are not needed: servers such as vLLM and SGLang cache shared prefixes themselves.
        """
        requests = [seeded(params, seeds, index) for index in range(len(contexts))]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda ids, p: self._complete(ids, stop, p), contexts, requests))

    def _complete(self, ids: list[int], stop: Sequence[str], params: SamplingParams) -> Generation:
        body: dict[str, Any] = {
            "model": self.name,
            "prompt": ids,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(stop),
            "include_stop_str_in_output": True,  # vLLM; others drop the stop string and name it in stop_reason
            "return_token_ids": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs:
            body["logprobs"] = 1
        return self.served.generation(body, lambda data: self._parse(data, stop))

    def _parse(self, data: Any, stop: Sequence[str]) -> Generation:
        """A reply's first choice as a Generation; MalformedResponse (retried) when the body is not one."""
        try:
            choice = data["choices"][0]
            if not isinstance(choice, dict) or not isinstance(choice.get("text", ""), str):
                raise TypeError(f"choice is {type(choice).__name__}")
            generation = self._parse_choice(choice, stop)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MalformedResponse(f"not a completions reply ({type(exc).__name__}: {exc})"[:300]) from exc
        generation.usage = usage_of(data)
        return generation

    def _parse_choice(self, choice: dict[str, Any], stop: Sequence[str]) -> Generation:
        text = choice.get("text", "")
        stop_reason = choice.get("stop_reason")
        if isinstance(stop_reason, str) and stop_reason in stop and not text.endswith(stop_reason):
            text += stop_reason  # servers that drop the matched stop string
        token_ids = choice.get("token_ids") or self.tokenizer.encode(text, add_special_tokens=False)
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if choice.get("finish_reason") == "length":
            return Generation(token_ids, text, "length", logprobs=logprobs)
        generation = finish_generation(self.tokenizer, token_ids, stop, ended_by_eos=True)
        generation.text, generation.logprobs = text, logprobs
        return generation
