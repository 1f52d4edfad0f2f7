"""What every AutoTraj server does before and around its model: bearer auth, a body-size bound, one
request on the model at a time, cancellation when the client goes, and a `/health` that notices a
wedged worker.

Starlette has no body-size limit and FastAPI no per-request cancellation of sync work, so this small
ASGI wrapper and worker are written here; both servers (completions.py, reward_model.py) use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

Result = TypeVar("Result")
DISCONNECT_POLL_S = 0.2
BYTES_PER_TOKEN = 64  # body bound: a full context as text or as JSON token ids fits with room to spare
MIN_BODY_BYTES = 1 << 20
OPEN_PATHS = frozenset({"/health"})  # load balancers probe it without a key, as vLLM allows


class _BodyTooLarge(Exception):
    pass


async def _reply(scope: dict, receive: Callable, send: Callable, status: int, detail: str) -> None:
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


class RequestGuard:
    """ASGI middleware: 401 without the bearer key (when one is set), 413 past `max_body_bytes`."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        key = headers.get(b"authorization", b"")
        if self.expected and scope["path"] not in OPEN_PATHS and not hmac.compare_digest(key, self.expected):
            return await _reply(scope, receive, send, 401, "missing or wrong API key (Authorization: Bearer …)")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit():
            return await _reply(scope, receive, send, 400, "malformed Content-Length")
        if int(declared) > self.max_body_bytes:
            return await _reply(scope, receive, send, 413, f"request body over {self.max_body_bytes} bytes")
        received = 0

        async def bounded_receive() -> dict:  # a chunked body declares no length: count what arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, bounded_receive, send)
        except _BodyTooLarge:
            await _reply(scope, receive, send, 413, f"request body over {self.max_body_bytes} bytes")


def context_length(model: Any) -> int:
    """A model's context in tokens: its config's max_position_embeddings (32,768 when it names none)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None) or 32768


def model_app(title: str, description: str) -> Any:  # -> FastAPI, imported lazily
    """A FastAPI app that answers a malformed body 422 without echoing its input: a NaN or a huge
    prompt must not make the error reply itself fail (FastAPI's default handler answers 500 for a NaN)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.responses import JSONResponse

    app = FastAPI(title=title, description=description)

    async def invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
    return app


def guarded(app: Any, api_key: str | None, context_tokens: int) -> RequestGuard:
    """The app behind the key and a body bound sized for a full context."""
    return RequestGuard(app, api_key, max(MIN_BODY_BYTES, context_tokens * BYTES_PER_TOKEN))


class ModelWorker:
    """The one model a server runs requests on, one at a time, and how long the current one has run."""

    def __init__(self, wedged_after_s: float):
        self.wedged_after_s = wedged_after_s
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self.cancelled = 0  # requests whose client left before their reply

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Run one request on the model (the others wait)."""
        with self._lock:
            self._busy_since = time.monotonic()
            try:
                yield
            finally:
                self._busy_since = None

    def busy_for(self) -> float:
        """Seconds the current request has held the model (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for /health: 503 once one request has held the model too long."""
        busy = self.busy_for()
        if busy > self.wedged_after_s:
            return 503, {"status": "wedged", "busy_s": round(busy, 1), "wedged_after_s": self.wedged_after_s}
        return 200, {"status": "ok", "busy_s": round(busy, 1), "cancelled": self.cancelled}


async def run_cancellable(request: Any, work: Callable[[threading.Event], Result]) -> Result | None:
    """Run `work(cancel)` on a thread; set `cancel` and return None if the client disconnects first."""
    cancel = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, work, cancel)
    while True:
        done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
        if done:
            return future.result()
        if await request.is_disconnected():
            cancel.set()  # the work stops at its next step; nobody is waiting for what it would return
            with contextlib.suppress(Exception):
                await future
            return None
