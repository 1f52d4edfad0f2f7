"""Messages between the sandbox pool and its fork servers: length-prefixed JSON over a pipe.

Stdlib only: the fork server imports this before anything else, inside the sandbox.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

_HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 64 << 20
ERROR_CHARS = 8192  # an error line is cut here in the child, whatever the exception's text


class ProtocolError(RuntimeError):
    """The other end closed the pipe or sent something that is not a message."""


@dataclass(frozen=True)
class Limits:
    """Per-snippet resource limits."""

    timeout_s: float = 10.0
    memory_mb: int = 2048
    output_kb: int = 256
    file_mb: int = 16
    processes: int = 32
    open_files: int = 64


@dataclass(frozen=True)
class ExecRequest:
    """One snippet to run; `setup` cells run first, silently (per-trajectory persistence)."""

    code: str
    setup: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    show_last_expression: bool = True


@dataclass(frozen=True)
class ExecResult:
    """What running one snippet produced."""

    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # the error's last line, e.g. "ZeroDivisionError: division by zero"
    error_type: str | None = None
    timed_out: bool = False
    killed: bool = False  # ended by a signal (the server's kill, a segfault, …)
    signal: str | None = None
    output_truncated: bool = False  # output passed the cap; the snippet was stopped there
    duration_s: float = 0.0
    worker: int = -1

    @property
    def ok(self) -> bool:
        """True when the snippet ran to completion without an error."""
        return self.error is None and not self.timed_out and not self.killed


_RESULT_TYPES: dict[str, tuple[type, ...]] = {
    "stdout": (str,), "stderr": (str,), "error": (str, type(None)), "error_type": (str, type(None)),
    "timed_out": (bool,), "killed": (bool,), "signal": (str, type(None)), "output_truncated": (bool,),
    "duration_s": (float, int), "worker": (int,),
}  # fmt: skip


def status_from_bytes(raw: bytes, cap: int) -> tuple[str | None, str | None] | str:
    """A child's status report: (error, error_type), "missing" when it wrote none, or "malformed".

    The channel is reachable from the snippet (it runs in the child), so nothing is trusted: the
    report must be exactly what the child writes, a JSON object with a string-or-null `error` and an
    identifier-or-null `error_type`; the error is cut at `cap` characters.
    """
    if not raw:
        return "missing"
    try:
        status = json.loads(raw)
    except ValueError:
        return "malformed"
    if not isinstance(status, dict) or set(status) != {"error", "error_type"}:
        return "malformed"
    error, error_type = status["error"], status["error_type"]
    if not (error is None or isinstance(error, str)):
        return "malformed"
    valid_type = isinstance(error_type, str) and error_type.isidentifier() and len(error_type) <= 100
    if not (error_type is None or valid_type):
        return "malformed"
    return (error[:cap] if error is not None else None), error_type


def result_from_dict(data: Any) -> ExecResult:
    """An ExecResult from a server's reply, every field type-checked; ProtocolError when it is not one."""
    if not isinstance(data, dict) or not set(data) <= set(_RESULT_TYPES):
        raise ProtocolError(f"not a result: {str(data)[:200]}")
    for name, value in data.items():
        if not isinstance(value, _RESULT_TYPES[name]):
            raise ProtocolError(f"result field {name} is a {type(value).__name__}")
    return ExecResult(**data)


def request_to_dict(request: ExecRequest) -> dict[str, Any]:
    """Serialize a request for the pipe."""
    return asdict(request)


def request_from_dict(data: dict[str, Any]) -> ExecRequest:
    """Rebuild a request received from the pipe."""
    return ExecRequest(
        code=data["code"],
        setup=tuple(data.get("setup", ())),
        limits=Limits(**data.get("limits", {})),
        show_last_expression=data.get("show_last_expression", True),
    )


def write_message(fd: int, message: dict[str, Any]) -> None:
    """Write one framed JSON message to a file descriptor."""
    payload = json.dumps(message).encode()
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ProtocolError("pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> dict[str, Any]:
    """Read one framed JSON message; ProtocolError when the pipe is closed or garbled."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")
    try:
        return json.loads(_read_exact(fd, size))
    except ValueError as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from exc
