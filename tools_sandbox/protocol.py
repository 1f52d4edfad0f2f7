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
