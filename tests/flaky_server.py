"""A completions server on 127.0.0.1 that fails the ways real ones do, in front of a real one or alone.

Faults: `500`, `drop` (the connection is closed with no reply), `truncated_body` (fewer bytes than
Content-Length), `truncated_json` (a 200 whose JSON is cut off), `stall` (no reply for `stall_s`),
`401` (a refused key) and `429` (Retry-After: `retry_after_s`, on the first attempt only).
Requests are told apart by their seed (every attempt of one request carries the same one): the i-th
distinct request is faulty when i % `every` == 0, with fault `modes[(i // every) % len(modes)]`, on
every attempt (but 429's), so it fails for good. The rest is forwarded to `upstream`, and the usage
its replies report is summed. Set `healthy` to forward everything.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

MODES = ("500", "drop", "truncated_body", "truncated_json", "stall")


class FlakyServer:
    """The server's state: which requests fail and how, and what it saw."""

    def __init__(
        self,
        upstream: str | None = None,
        modes: tuple[str, ...] = MODES,
        every: int = 1,
        stall_s: float = 3.0,
        retry_after_s: float = 1.0,
    ):
        self.upstream, self.modes, self.every, self.stall_s = upstream, modes, every, stall_s
        self.retry_after_s = retry_after_s
        self.healthy = False
        self.calls = 0
        self.faults: Counter[str] = Counter()
        self.seen: dict[Any, int] = {}  # seed -> arrival index of its first attempt
        self.times: dict[Any, list[float]] = {}  # seed -> when each attempt arrived
        self.fault_of_seed: dict[Any, str] = {}
        self.usage = [0, 0]  # prompt and completion tokens the forwarded replies reported
        self.lock = threading.Lock()

    def fault_of(self, body: dict[str, Any]) -> str | None:
        """The fault this request gets, or None (forwarded); counts the call."""
        with self.lock:
            self.calls += 1
            seed = body.get("seed")
            self.times.setdefault(seed, []).append(time.monotonic())
            if self.healthy:
                return None
            index = self.seen.setdefault(seed, len(self.seen))
            if index % self.every:
                return None
            fault = self.modes[(index // self.every) % len(self.modes)]
            self.fault_of_seed[seed] = fault
            if fault == "429" and len(self.times[seed]) > 1:
                return None  # rate limited once: the retry after Retry-After is served
            self.faults[fault] += 1
            return fault


def _handler(state: FlakyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._forward("GET", b"")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw or b"{}")
            fault = state.fault_of(body)
            if fault is None:
                self._forward("POST", raw)
            elif fault == "500":
                self._reply(500, b"upstream exploded")
            elif fault == "401":
                self._reply(401, b'{"error": {"message": "Incorrect API key provided"}}')
            elif fault == "429":
                self._reply(
                    429, b'{"error": {"message": "Rate limit reached"}}', {"Retry-After": str(state.retry_after_s)}
                )
            elif fault == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
            elif fault == "truncated_body":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"choices": [')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            elif fault == "truncated_json":
                self._reply(200, b'{"choices": [{"text": "<code> print(1')
            elif fault == "stall":
                time.sleep(state.stall_s)

        def _forward(self, method: str, raw: bytes) -> None:
            if state.upstream is None:
                self._reply(404, b"no upstream")
                return
            headers = {"Content-Type": "application/json"}
            reply = httpx.request(method, state.upstream + self.path, content=raw, timeout=120, headers=headers)
            usage = reply.json().get("usage") if method == "POST" and reply.status_code == 200 else None
            if usage:
                with state.lock:
                    state.usage[0] += usage["prompt_tokens"]
                    state.usage[1] += usage["completion_tokens"]
            self._reply(reply.status_code, reply.content)

        def _reply(self, status: int, content: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *_args: object) -> None:
            pass

    return Handler


@contextmanager
def flaky_server(state: FlakyServer) -> Iterator[str]:
    """Serve `state` on 127.0.0.1; yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
