"""The one retry policy for the HTTP services the pipeline calls (retrievers, model servers).

Connection errors, timeouts, 429, 5xx and a 2xx whose body does not parse are retried with
exponential backoff, never past the policy's deadline; the last failure is raised as
`RequestFailed`, which says how many attempts were really made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request may take, how often it is tried, the backoff, and a wall-clock deadline."""

    timeout_s: float = 300.0
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    deadline: float | None = None  # time.time() after which no attempt starts (a stage run's deadline)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.time()


class MalformedResponse(ValueError):
    """A successful status whose body is not what the API promises (truncated JSON, missing fields)."""


class DeadlinePassed(RuntimeError):
    """The stage run's deadline passed before this request could be (re)tried."""


class RequestFailed(RuntimeError):
    """A request that failed for good: its last error and the attempts made."""

    def __init__(self, url: str, cause: BaseException, attempts: int):
        self.cause, self.attempts = cause, attempts
        if isinstance(cause, httpx.HTTPStatusError):
            detail = f"HTTP {cause.response.status_code}: {cause.response.text[:300]}"
        else:
            detail = f"{type(cause).__name__}: {str(cause)[:300]}"
        super().__init__(f"{url}: {detail} (after {attempts} attempt{'s' if attempts != 1 else ''})")


def retryable(exc: BaseException) -> bool:
    """Whether a failure is worth another attempt."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError | MalformedResponse)


def post_json(
    client: httpx.Client, url: str, payload: Any, policy: RetryPolicy, parse: Callable[[httpx.Response], T]
) -> T:
    """POST `payload` as JSON and `parse` the reply (raising MalformedResponse for a bad body),
    retrying transient failures; raise RequestFailed after the last."""

    def before_sleep(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        remaining = policy.remaining()
        if remaining is not None and remaining <= wait:
            raise RequestFailed(url, DeadlinePassed("the stage's deadline passed"), state.attempt_number)

    attempts = 0
    try:
        for attempt in Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                attempts += 1
                remaining = policy.remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlinePassed("the stage's deadline passed")
                timeout = policy.timeout_s if remaining is None else min(policy.timeout_s, remaining)
                response = client.post(url, json=payload, timeout=timeout)
                response.raise_for_status()
                return parse(response)
    except RequestFailed:
        raise
    except (httpx.HTTPError, MalformedResponse, DeadlinePassed) as exc:
        raise RequestFailed(url, exc, attempts) from exc
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover
