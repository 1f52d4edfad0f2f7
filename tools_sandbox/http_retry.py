"""The one retry policy for the HTTP services the pipeline calls (retrievers, model servers).

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; anything else, and
the last failure, is raised to the caller, which turns it into its own clear error.
"""

from __future__ import annotations

from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential


def retryable(exc: BaseException) -> bool:
    """Whether an HTTP failure is worth another attempt."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def post_json(
    client: httpx.Client, url: str, payload: Any, attempts: int, backoff_s: float, max_wait_s: float
) -> httpx.Response:
    """POST `payload` as JSON, retrying transient failures; raise the last httpx error."""
    for attempt in Retrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff_s, max=max_wait_s),
        reraise=True,
    ):
        with attempt:
            response = client.post(url, json=payload)
            response.raise_for_status()
    return response
