"""The Python tool: a pool of fork servers with a batch API, safe to use from threads and Ray actors.

    with SandboxPool(config.tools.python) as pool:
        results = pool.map(["print(1 + 1)", "import sympy; print(sympy.factor(x**2 - 1))"])

Each worker is one fork server (forkserver.py) running one snippet at a time, fed by one dispatch
thread. Calls queue per owner (a trajectory's session) and are served round robin across owners, so
one trajectory's runaway snippets cannot starve the others; a call that waits longer than
`queue_timeout_s` fails as QueueTimeout. A worker that dies (killed, crashed) is restarted and the
snippet it was running gets a SandboxError result; the pool stays usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from schemas.config import PythonToolConfig
from tools_sandbox import cgroup
from tools_sandbox.cleanup import remove_tree
from tools_sandbox.isolation import Isolation, IsolationUnavailable, LaunchSpec, UidLease, launch_spec, resolve
from tools_sandbox.protocol import (
    ExecRequest,
    ExecResult,
    Limits,
    ProtocolError,
    read_message,
    request_to_dict,
    result_from_dict,
    write_message,
)

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can take a while
REPLY_GRACE_S = 15.0  # beyond the snippet's own timeout, before the worker is declared hung


class SandboxError(RuntimeError):
    """The pool cannot serve: a fork server would not start, or the pool is closed."""


def _find_server(launched_pid: int) -> int:
    """Host pid of the fork server: the launched process, or its descendant inside bwrap."""
    pending = [launched_pid]
    while pending:
        pid = pending.pop(0)
        with contextlib.suppress(OSError):
            if b"tools_sandbox.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2:3]:
                return pid
            pending += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return launched_pid


class _Worker:
    """One fork server process and the pipe pair that talks to it."""

    def __init__(self, spec_factory: Callable[[int], LaunchSpec], index: int):
        self.index = index
        self._spec_factory = spec_factory
        self.process: subprocess.Popen[bytes] | None = None
        self.spec: LaunchSpec | None = None
        self.server_pid = -1
        self.restarts = -1
        self.start()

    def start(self) -> None:
        """Launch the server and wait until it has preloaded its modules."""
        self.stop()
        self.spec = self._spec_factory(self.index)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            self.spec.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self.spec.env,
            cwd="/",
            # No parent-death signal: it fires when the launching *thread* exits. A server ends when
            # its request pipe closes instead, which happens however the pool goes.
            start_new_session=True,  # a Ctrl-C in the terminal is for the pool, not the servers
        )
        self.restarts += 1
        try:
            ready = self._receive(START_TIMEOUT_S)
        except ProtocolError as exc:
            raise SandboxError(f"sandbox worker {self.index} did not start: {exc}; {self.stderr_tail()}") from exc
        if not ready.get("ready"):
            raise SandboxError(f"sandbox worker {self.index} failed to start: {ready.get('error')}")
        self.server_pid = _find_server(self.process.pid)

    def stderr_tail(self, lines: int = 5) -> str:
        """The server's last stderr lines, for error messages."""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "server stderr: " + (" | ".join(text[-lines:]) if text else "(empty)")

    def _receive(self, timeout: float) -> dict:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise ProtocolError(f"no reply within {timeout:.0f} s")
        return read_message(fd)

    def run(self, request: ExecRequest) -> ExecResult:
        """Send one request; on a dead or hung server, restart it and report a SandboxError result."""
        message = request_to_dict(request)
        try:
            self._send(message)
        except OSError as exc:  # the server died while idle: the request never reached it, so resend
            log.warning("sandbox worker %d was dead (%s; %s); restarting it", self.index, exc, self.stderr_tail())
            self.start()
            self._send(message)
        try:
            return result_from_dict(self._receive(request.limits.timeout_s + REPLY_GRACE_S))
        except (ProtocolError, OSError) as exc:
            log.warning("sandbox worker %d failed (%s; %s); restarting it", self.index, exc, self.stderr_tail())
            self.start()
            return ExecResult(
                error=f"SandboxError: the sandbox worker stopped while running this code ({exc}); it was restarted",
                error_type="SandboxError",
                worker=self.index,
            )

    def _send(self, message: dict) -> None:
        assert self.process is not None and self.process.stdin is not None
        if self.process.poll() is not None:
            raise BrokenPipeError(f"server exited with status {self.process.returncode}")
        write_message(self.process.stdin.fileno(), message)

    def stop(self) -> None:
        """Kill the server (and with it, its sandbox) and remove its work root."""
        if self.process is not None:
            # The server first: inside bwrap, its death ends the pid namespace and every snippet in it.
            for pid, kill in ((self.server_pid, os.kill), (self.process.pid, os.killpg)):
                with contextlib.suppress(ProcessLookupError):
                    kill(pid, signal.SIGKILL)
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._stderr.close()
            self.process = None
        if self.spec is not None and self.spec.work_root:
            with contextlib.suppress(OSError):
                remove_tree(self.spec.work_root)
        if self.spec is not None and self.spec.cgroup:
            cgroup.remove(self.spec.cgroup)


@dataclass
class _Call:
    request: ExecRequest
    future: Future[ExecResult] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class _FairQueue:
    """Calls queued per owner and handed out round robin across owners, oldest first within one."""

    def __init__(self) -> None:
        self._owners: OrderedDict[Hashable, deque[_Call]] = OrderedDict()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, owner: Hashable, call: _Call) -> None:
        """Queue a call behind the same owner's earlier ones."""
        with self._ready:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            self._owners.setdefault(owner, deque()).append(call)
            self._ready.notify()

    def get(self) -> _Call | None:
        """The next owner's oldest call (that owner then goes to the back); None once closed."""
        with self._ready:
            while not self._owners and not self._closed:
                self._ready.wait()
            if not self._owners:
                return None
            owner, calls = self._owners.popitem(last=False)
            call = calls.popleft()
            if calls:
                self._owners[owner] = calls
            return call

    def close(self) -> list[_Call]:
        """Stop handing out calls; the ones still queued are returned, to be cancelled."""
        with self._ready:
            self._closed = True
            left = [call for calls in self._owners.values() for call in calls]
            self._owners.clear()
            self._ready.notify_all()
        return left


def _dispatch(calls: _FairQueue, worker: _Worker, queue_timeout_s: float) -> None:
    """Feed one worker calls from the fair queue until the pool closes (holds no reference to the pool)."""
    while (call := calls.get()) is not None:
        if not call.future.set_running_or_notify_cancel():
            continue
        waited = time.monotonic() - call.queued_at
        if waited > queue_timeout_s:
            call.future.set_result(
                ExecResult(
                    error=f"QueueTimeout: waited {waited:.0f} s for a free sandbox worker "
                    f"(tools.python.queue_timeout_s = {queue_timeout_s:g})",
                    error_type="QueueTimeout",
                )
            )
            continue
        try:
            call.future.set_result(worker.run(call.request))
        except BaseException as exc:  # a worker that cannot restart: this call fails, the thread goes on
            call.future.set_exception(exc)


class SandboxPool:
    """Fork servers running untrusted Python snippets in parallel, confined by an isolation tier."""

    def __init__(self, config: PythonToolConfig | None = None, *, workers: int | None = None, tier: str | None = None):
        self.config = config or PythonToolConfig()
        self.isolation: Isolation = resolve(tier or self.config.tier)
        count = workers or self.config.workers or os.cpu_count() or 1
        self.limits = Limits(
            timeout_s=self.config.timeout_s,
            memory_mb=self.config.memory_mb,
            output_kb=self.config.output_kb,
            file_mb=self.config.file_mb,
            processes=self.config.processes,
            open_files=self.config.open_files,
        )
        self._lease = UidLease(self.config.uid_base, count) if self.isolation.dedicated_uid else None
        self._queue = _FairQueue()
        self._workers: list[_Worker] = []
        self._dispatchers: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()
        lease, tier, preload, tmp_mb = self._lease, self.isolation.tier, list(self.config.preload), self.config.tmp_mb

        def spec(index: int) -> LaunchSpec:  # no reference to the pool, so an unclosed pool is still collected
            return launch_spec(tier, index, lease.uids[index] if lease else None, preload, tmp_mb)

        try:
            with ThreadPoolExecutor(count) as starter:
                self._workers = list(starter.map(lambda index: _Worker(spec, index), range(count)))
        except BaseException:
            self.close()
            raise
        self._dispatchers = [
            threading.Thread(
                target=_dispatch,
                args=(self._queue, worker, self.config.queue_timeout_s),
                name=f"sandbox-{worker.index}",
                daemon=True,
            )
            for worker in self._workers
        ]
        for thread in self._dispatchers:
            thread.start()
        log.info("sandbox pool: %d workers, %s", count, self.isolation.describe())

    @property
    def size(self) -> int:
        """Number of fork servers."""
        return len(self._workers)

    @property
    def restarts(self) -> int:
        """How many times a worker had to be restarted."""
        return sum(worker.restarts for worker in self._workers)

    def server_pids(self) -> list[int]:
        """Host process ids of the fork servers (inside bwrap in the strict tier)."""
        return [worker.server_pid for worker in self._workers if worker.process is not None]

    def request(self, code: str, setup: Iterable[str] = (), **limits: float) -> ExecRequest:
        """A request with this pool's limits, optionally overridden (timeout_s=…, memory_mb=…)."""
        return ExecRequest(
            code=code,
            setup=tuple(setup),
            limits=replace(self.limits, **limits) if limits else self.limits,
            show_last_expression=self.config.show_last_expression,
        )

    def submit(
        self, code: str | ExecRequest, setup: Iterable[str] = (), owner: Hashable | None = None, **limits: float
    ) -> Future[ExecResult]:
        """Queue one snippet behind its owner's earlier ones; the future resolves when a worker has run it.

        Owners (a trajectory's session) take turns for free workers; without one, a call is its own owner.
        """
        request = code if isinstance(code, ExecRequest) else self.request(code, setup, **limits)
        call = _Call(request)
        self._queue.put(object() if owner is None else owner, call)
        return call.future

    def run(
        self, code: str | ExecRequest, setup: Iterable[str] = (), owner: Hashable | None = None, **limits: float
    ) -> ExecResult:
        """Run one snippet and wait for its result."""
        return self.submit(code, setup, owner, **limits).result()

    def map(self, snippets: Iterable[str | ExecRequest]) -> list[ExecResult]:
        """Run many snippets concurrently; results in input order."""
        return [future.result() for future in [self.submit(snippet) for snippet in snippets]]

    def as_completed(self, snippets: Iterable[str | ExecRequest]) -> Iterator[tuple[int, ExecResult]]:
        """Run many snippets concurrently and yield (input index, result) as each finishes."""
        futures = {self.submit(snippet): index for index, snippet in enumerate(snippets)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        """Stop every server; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            for call in self._queue.close():
                call.future.cancel()
            for thread in self._dispatchers:
                thread.join()
            for worker in self._workers:
                with contextlib.suppress(Exception):  # one worker's trouble must not keep the others running
                    worker.stop()
        finally:
            if self._lease is not None:
                self._lease.release()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class PythonSession:
    """One trajectory's Python state: with persistence on, earlier cells replay before each new one.

    Replaying keeps every snippet in a fresh, confined child (nothing survives between calls, so
    nothing leaks between trajectories) at the cost of re-running earlier cells.
    """

    def __init__(self, pool: SandboxPool, persistent: bool | None = None):
        self.pool = pool
        self.persistent = pool.config.persistent if persistent is None else persistent
        self.cells: list[str] = []

    def request(self, code: str) -> ExecRequest:
        """The request for the next cell, carrying earlier cells when persistent."""
        return self.pool.request(code, setup=self.cells if self.persistent else ())

    def record(self, code: str, result: ExecResult) -> None:
        """Remember a finished cell (cells that timed out or were killed are not replayed)."""
        if self.persistent and not result.killed and result.error_type != "SyntaxError":
            self.cells.append(code)

    def run(self, code: str) -> ExecResult:
        """Run the next cell of this trajectory."""
        result = self.pool.run(self.request(code), owner=self)
        self.record(code, result)
        return result


__all__ = ["ExecRequest", "ExecResult", "IsolationUnavailable", "PythonSession", "SandboxError", "SandboxPool"]
