"""The one retry policy for the HTTP services the pipeline calls (retrievers, model servers, hosted APIs).

Connection errors, timeouts, 429, 5xx and a 2xx whose body does not parse are retried with
exponential backoff (a 429's Retry-After is honoured, up to a cap), never past the policy's
deadline; the last failure is raised as `RequestFailed`, which says how many attempts were really
made. A `RateLimit` spaces the requests of one client to a number per minute.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
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
    max_retry_after_s: float = 60.0  # a 429's Retry-After longer than this is waited as this

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


class RateLimit:
    """At most `per_minute` request starts per minute, spaced evenly, across this client's threads."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this request may start."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def retry_after_s(response: httpx.Response) -> float | None:
    """A response's Retry-After in seconds (it may be a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (email.utils.parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def retryable(exc: BaseException) -> bool:
    """Whether a failure is worth another attempt."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError | MalformedResponse)


def post_json(
    client: httpx.Client,
    url: str,
    payload: Any,
    policy: RetryPolicy,
    parse: Callable[[Any], T],
    limit: RateLimit | None = None,
) -> T:
    """POST `payload` as JSON and `parse` the decoded reply (raising MalformedResponse for a bad one),
    retrying transient failures; raise RequestFailed after the last."""
    exponential = wait_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s)

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, httpx.HTTPStatusError) and failure.response.status_code == 429:
            after = retry_after_s(failure.response)
            if after is not None:
                return min(after, policy.max_retry_after_s)
        return exponential(state)

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
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                attempts += 1
                remaining = policy.remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlinePassed("the stage's deadline passed")
                if limit is not None:
                    limit.wait()
                timeout = policy.timeout_s if remaining is None else min(policy.timeout_s, remaining)
                response = client.post(url, json=payload, timeout=timeout)
                response.raise_for_status()
                try:
                    decoded = response.json()
                except ValueError as exc:
                    raise MalformedResponse(f"not JSON: {exc}") from exc
                return parse(decoded)
    except RequestFailed:
        raise
    except (httpx.HTTPError, MalformedResponse, DeadlinePassed) as exc:
        raise RequestFailed(url, exc, attempts) from exc
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover
