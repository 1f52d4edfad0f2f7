"""The fork server: imports the heavy modules once, then forks one confined child per snippet.

Run by the pool as `python -m tools_sandbox.forkserver SETTINGS_JSON`, possibly inside bubblewrap.
Requests arrive on fd 0 and results leave on fd 1 (see protocol.py). Stdlib and pyseccomp only.

A child gets: a new session (so the whole snippet is one process group), stdin from /dev/null,
stdout/stderr to pipes, a fresh work directory, a cleared environment, rlimits, the sandbox uid when
the server runs as root, and a seccomp filter. The filter also forbids setsid/setpgid, so nothing a
snippet starts can leave its group; the server is a child subreaper, so orphans come back to it.
After each snippet the server kills the group, reaps every descendant, deletes the work directory
and sweeps what the sandbox uid left in shared temp directories.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import fcntl
import gc
import importlib
import io
import json
import os
import resource
import selectors
import signal
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any

from tools_sandbox import cgroup, landlock
from tools_sandbox.cleanup import remove_tree
from tools_sandbox.protocol import (
    ERROR_CHARS,
    ExecRequest,
    ExecResult,
    Limits,
    ProtocolError,
    read_message,
    request_from_dict,
    request_to_dict,
    status_from_bytes,
    write_message,
)
from tools_sandbox.seccomp_filter import CompiledFilter, build_seccomp_filter

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STATUS_FD = 3  # where a child reports its error (or success) to the server
# The status is a few hundred bytes; past this, the snippet is writing to the channel itself.
STATUS_CAP_BYTES = 4 * ERROR_CHARS
REQUEST_FD = 4  # where a waiting child reads its snippet
READ_CHUNK = 1 << 16
DRAIN_GRACE_S = 0.5  # after the snippet returns, how long to wait for its pipes to close
REAP_TIMEOUT_S = 5.0


class Settings:
    """How this server confines its children; set by the pool (see isolation.py)."""

    def __init__(self, raw: dict[str, Any]):
        self.index: int = raw.get("index", 0)
        self.preload: list[str] = raw.get("preload", [])
        self.work_root: str = raw.get("work_root") or tempfile.mkdtemp(prefix="autotraj-sandbox-")
        self.sandbox_uid: int | None = raw.get("sandbox_uid")
        self.sandbox_gid: int | None = raw.get("sandbox_gid")
        self.seccomp: bool = raw.get("seccomp", True)
        self.landlock: bool = raw.get("landlock", False)
        self.cgroup: str | None = raw.get("cgroup")
        self.sweep_dirs: list[str] = raw.get("sweep_dirs", [])
        self.protected_pids: list[int] = raw.get("protected_pids", [])
        self.nproc_base: int = raw.get("nproc_base", 0)
        self.env: dict[str, str] = raw.get("env", {})


# -- the child -------------------------------------------------------------------------------------


def traversable_by_others(path: str) -> bool:
    """Whether every directory on the way to path lets other users through (the sandbox uid is one)."""
    current = os.path.abspath(path)
    while True:
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def _unreachable_import_roots() -> list[str]:
    """Python prefixes the sandbox uid could not traverse (e.g. a pyenv under a 0700 /root)."""
    roots = {sys.base_prefix, sys.prefix}
    return sorted(root for root in roots if os.path.isdir(root) and not traversable_by_others(root))


def _reroute_imports(aliases: dict[str, str]) -> None:
    """Point import paths under unreachable prefixes at /proc/self/fd links opened before the uid drop.

    A magic link skips the permission check on the path's ancestors, and nothing above the prefix
    becomes readable: a `..` from it is checked against the real directories again.
    """

    def reroute(path: str) -> str:
        for prefix, alias in aliases.items():
            if path == prefix or path.startswith(prefix + os.sep):
                return alias + path[len(prefix) :]
        return path

    sys.path[:] = [reroute(path) for path in sys.path]
    sys.path_importer_cache.clear()
    for module in list(sys.modules.values()):
        search_path = getattr(module, "__path__", None)
        if isinstance(search_path, list):
            search_path[:] = [reroute(path) for path in search_path]


def _set_limits(limits: Limits, settings: Settings) -> None:
    cpu = int(limits.timeout_s) + 2  # a backstop; the server's wall clock normally acts first
    nproc = limits.processes + (0 if settings.sandbox_uid is not None else settings.nproc_base)
    for kind, value in (
        (resource.RLIMIT_AS, limits.memory_mb << 20),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, limits.file_mb << 20),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(kind, (value, value))


def _close_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _error_line(exc: BaseException, cap: int = ERROR_CHARS) -> str:
    """The error's last line, at most `cap` characters (an exception's text can be any size)."""
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno})" if exc.lineno else ""
        line = f"{type(exc).__name__}: {exc.msg}{where}"
    else:
        try:
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        except BaseException:  # a __str__ that raises or never ends well: the type still says what happened
            line = f"{type(exc).__name__}: (its message could not be printed)"
    if len(line) <= cap:
        return line
    cut = f"... [{len(line)} characters in all]"
    return line[: max(0, cap - len(cut))] + cut


def _run_cell(code: str, namespace: dict[str, Any], show_last_expression: bool) -> None:
    tree = ast.parse(code, "<code>", "exec")
    last = tree.body[-1] if tree.body and show_last_expression else None
    if isinstance(last, ast.Expr):
        tree.body.pop()
        exec(compile(tree, "<code>", "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
        if value is not None:
            print(repr(value))
    else:
        exec(compile(tree, "<code>", "exec"), namespace)


def runtime_dirs() -> list[str]:
    """What a snippet may read besides the system: the Python install and its packages, this package.

    Not every sys.path entry: `python -m` puts the working directory there, and PYTHONPATH the
    checkout, which holds the data directory by default.
    """
    candidates = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.abspath(__file__))}
    candidates.update(
        path for path in sys.path
        if os.path.isabs(path) and os.path.isdir(path) and ("site-packages" in path or "dist-packages" in path)
    )  # fmt: skip
    return sorted(os.path.realpath(path) for path in candidates)


def _child(
    settings: Settings,
    workdir: str,
    pipes: tuple[int, int, int, int],
    seccomp_filter: CompiledFilter | None,
    keep_fds: set[int],
) -> None:
    """Confine this freshly forked process, wait for its snippet, run it; never returns.

    Everything but the per-request limits happens before the request arrives: the server forks
    the next child while idle, so a request only pays for reading the code and running it.
    """
    request_r, out_w, err_w, status_w = pipes
    try:
        os.setsid()
        # Park the pipes above the fd numbers they are about to take, then put them in place.
        request_r, status_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (request_r, status_w))
        devnull = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((devnull, 0), (out_w, 1), (err_w, 2), (status_w, STATUS_FD), (request_r, REQUEST_FD)):
            os.dup2(source, target)
        _close_fds(keep={STATUS_FD, REQUEST_FD, *keep_fds})
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(settings.env, HOME=workdir, TMPDIR=workdir)
        tempfile.tempdir = workdir
        for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if settings.cgroup is not None:  # as root still: the server sets its limit per snippet
            cgroup.join(settings.cgroup)
        if settings.landlock:  # as root still, so every allowed path can be opened
            landlock.restrict(workdir, runtime_dirs())
        if settings.sandbox_uid is not None and os.geteuid() == 0:
            os.setgroups([])
            os.setgid(settings.sandbox_gid if settings.sandbox_gid is not None else settings.sandbox_uid)
            os.setuid(settings.sandbox_uid)
        # Die with the server (set after the uid change, which clears it).
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if seccomp_filter is not None:
            seccomp_filter.load()
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, errors="replace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="replace")
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        request = request_from_dict(read_message(REQUEST_FD))
        os.close(REQUEST_FD)
        _set_limits(request.limits, settings)  # lowering limits needs no privilege
    except BaseException as exc:
        failure = {"error": f"SandboxError: {_error_line(exc)}", "error_type": "SandboxError"}
        with contextlib.suppress(OSError):
            os.write(STATUS_FD, json.dumps(failure).encode())
        os._exit(70)

    status: dict[str, Any] = {"error": None, "error_type": None}
    cap = min(ERROR_CHARS, request.limits.output_kb << 10)
    leader = os.getpid()
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        for cell in request.setup:  # earlier cells of the same trajectory, replayed silently
            with (
                contextlib.suppress(Exception),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                _run_cell(cell, namespace, show_last_expression=False)
        _run_cell(request.code, namespace, request.show_last_expression)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            status = {"error": f"SystemExit: {str(exc.code)[:cap]}", "error_type": "SystemExit"}
    except BaseException as exc:
        status = {"error": _error_line(exc, cap), "error_type": type(exc).__name__[:100]}
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    if os.getpid() == leader:  # a process the snippet forked must not report for it
        with contextlib.suppress(BaseException):
            os.write(STATUS_FD, json.dumps(status).encode())
    os._exit(0)


# -- the server ------------------------------------------------------------------------------------


def _children() -> list[int]:
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as handle:
            pids.extend(int(pid) for pid in handle.read().split())
    return pids


def _kill_descendants() -> None:
    """SIGKILL and reap every process below the server (orphans come back to it as subreaper)."""
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while time.monotonic() < deadline:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
        for pid in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)
    print(f"forkserver: descendants still alive after {REAP_TIMEOUT_S}s", file=sys.stderr)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of a sandbox uid: a helper takes the uid and signals -1."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):  # a second pass catches what was mid-fork during the first
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    _kill_descendants()


@dataclass
class _Spare:
    """A forked, confined child waiting for its snippet."""

    pid: int
    workdir: str
    request_w: int
    streams: dict[int, str]


class ForkServer:
    """Owns the preloaded interpreter and runs one snippet at a time in a forked child."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.seccomp_filter = None
        self.aliases: dict[str, str] = {}
        self.sandbox_uid = settings.sandbox_uid if os.geteuid() == 0 else None
        self._spare: _Spare | None = None
        self.unclean: str | None = None  # why the last snippet's files could not be removed

    def start(self) -> dict[str, Any]:
        """Preload, warm up and build the filter; return the ready message."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        for name in self.settings.preload:
            importlib.import_module(name)
        if "sympy" in sys.modules:  # the first solve builds caches a fork would otherwise rebuild each time
            sympy = sys.modules["sympy"]
            sympy.solve(sympy.Symbol("x") ** 2 - 4)
        if self.settings.seccomp:
            self.seccomp_filter = build_seccomp_filter([os.getpid(), os.getppid(), *self.settings.protected_pids])
        if self.sandbox_uid is not None:
            _kill_uid(self.sandbox_uid)  # leftovers of a previous server that was killed mid-snippet
            for root in _unreachable_import_roots():
                fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
                self.aliases[root] = f"/proc/self/fd/{fd}"
            # Once here rather than in every child: the fds are inherited, so the paths mean the same there.
            _reroute_imports(self.aliases)
        os.makedirs(self.settings.work_root, mode=0o711, exist_ok=True)
        # Preloaded objects go to the permanent generation: a child's collections then neither walk
        # nor touch them, which would copy their pages (the documented use of gc.freeze with fork).
        gc.collect()
        gc.freeze()
        vm_kb = _status_field("VmSize")
        return {
            "ready": True,
            "pid": os.getpid(),
            "uid": os.geteuid(),
            "vm_kb": vm_kb,
            "work_root": self.settings.work_root,
        }

    def prepare(self) -> None:
        """Fork the child that will run the next snippet, while the pool has nothing for us."""
        if self._spare is not None:
            return
        workdir = tempfile.mkdtemp(dir=self.settings.work_root)
        if self.sandbox_uid is not None:
            os.chown(workdir, self.sandbox_uid, self.settings.sandbox_gid or self.sandbox_uid)
        request_r, request_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (request_w, out_r, err_r, status_r):
                os.close(fd)
            alias_fds = {int(alias.rsplit("/", 1)[1]) for alias in self.aliases.values()}
            _child(self.settings, workdir, (request_r, out_w, err_w, status_w), self.seccomp_filter, alias_fds)
        for fd in (request_r, out_w, err_w, status_w):
            os.close(fd)
        self._spare = _Spare(pid, workdir, request_w, {out_r: "stdout", err_r: "stderr", status_r: "status"})

    def run(self, request: ExecRequest) -> ExecResult:
        """Hand one snippet to the waiting child and collect what it produced."""
        started = time.monotonic()
        self.prepare()
        spare, self._spare = self._spare, None
        assert spare is not None
        if self.settings.cgroup is not None:
            cgroup.set_limit(self.settings.cgroup, request.limits.memory_mb << 20)
        with contextlib.suppress(OSError):  # a child that died while waiting: _collect reports how
            write_message(spare.request_w, request_to_dict(request))
        os.close(spare.request_w)
        try:
            collected = self._collect(spare.pid, request.limits, spare.streams)
        finally:
            self._cleanup(spare.workdir)
        return self._result(collected, request.limits, time.monotonic() - started)

    def _collect(self, pid: int, limits: Limits, streams: dict[int, str]) -> dict[str, Any]:
        cap = limits.output_kb << 10
        buffers = {name: bytearray() for name in streams.values()}
        pidfd = os.pidfd_open(pid)
        selector = selectors.DefaultSelector()
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(pidfd, selectors.EVENT_READ)
        deadline = time.monotonic() + limits.timeout_s
        timed_out = truncated = exited = tampered = False
        open_streams = set(streams)
        while open_streams or not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not exited  # after exit, only a straggler holding the pipes is cut off
                break
            for key, _ in selector.select(remaining):
                if key.fd == pidfd:
                    exited = True
                    selector.unregister(pidfd)
                    deadline = min(deadline, time.monotonic() + DRAIN_GRACE_S)
                    continue
                data = os.read(key.fd, READ_CHUNK)
                if not data:
                    selector.unregister(key.fd)
                    open_streams.discard(key.fd)
                    continue
                buffers[streams[key.fd]] += data
                truncated = len(buffers["stdout"]) + len(buffers["stderr"]) > cap
                tampered = len(buffers["status"]) > STATUS_CAP_BYTES
            if truncated or tampered:
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the leader is not reaped yet, so the group id is still ours
        _, wait_status = os.waitpid(pid, 0)
        _kill_descendants()
        selector.close()
        for fd in (*streams, pidfd):
            os.close(fd)
        return {"buffers": buffers, "wait_status": wait_status, "timed_out": timed_out, "truncated": truncated,
                "tampered": tampered}  # fmt: skip

    def _cleanup(self, workdir: str) -> None:
        """Delete the work directory and what the snippet's uid left in the swept directories.

        What cannot be deleted is remembered in `unclean`: the server then answers and exits, and
        the pool starts a fresh one (the leftovers are in this server's work root, removed with it).
        """
        try:
            remove_tree(workdir)
        except (OSError, RecursionError) as exc:
            self.unclean = f"{workdir}: {exc}"
        snippet_uid = self.sandbox_uid if self.sandbox_uid is not None else os.geteuid()
        for directory in self.settings.sweep_dirs:
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    if entry.path == self.settings.work_root:
                        continue
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_uid == snippet_uid:
                            remove_tree(entry.path)

    def _result(self, collected: dict[str, Any], limits: Limits, duration: float) -> ExecResult:
        buffers = collected["buffers"]
        cap = limits.output_kb << 10
        stdout = bytes(buffers["stdout"][:cap]).decode(errors="replace")
        stderr = bytes(buffers["stderr"][: max(0, cap - len(buffers["stdout"]))]).decode(errors="replace")
        status = status_from_bytes(bytes(buffers["status"]), cap)
        wait_status = collected["wait_status"]
        signal_name = None
        error = error_type = None
        if isinstance(status, tuple):
            error, error_type = status
        if collected["tampered"] or status == "malformed":
            error = "SandboxError: the snippet wrote to the sandbox's result channel; its result was discarded"
            error_type = "SandboxError"
            status = None
        elif collected["timed_out"]:
            error, error_type = f"TimeoutError: execution exceeded the {limits.timeout_s:g} s limit", "TimeoutError"
        elif collected["truncated"]:
            error = f"OutputLimitExceeded: output passed {limits.output_kb} KB; execution was stopped"
            error_type = "OutputLimitExceeded"
        elif status == "missing" and os.WIFSIGNALED(wait_status):
            signal_name = signal.Signals(os.WTERMSIG(wait_status)).name
            reason = "CPU time limit" if signal_name == "SIGXCPU" else signal.strsignal(os.WTERMSIG(wait_status))
            error, error_type = f"Killed: {signal_name} ({reason})", "Killed"
        elif status == "missing":
            code = os.waitstatus_to_exitcode(wait_status)
            error, error_type = f"ProcessExit: the process exited with status {code}", "ProcessExit"
        killed = collected["timed_out"] or collected["truncated"] or collected["tampered"] or signal_name is not None
        return ExecResult(
            stdout=stdout,
            stderr=stderr,
            error=error,
            error_type=error_type,
            timed_out=collected["timed_out"],
            killed=killed,
            signal=signal_name or ("SIGKILL" if killed else None),
            output_truncated=collected["truncated"],
            duration_s=round(duration, 6),
            worker=self.settings.index,
        )


def _status_field(name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    """Serve requests on fd 0 / replies on fd 1 until the pool closes the pipe."""
    settings = Settings(json.loads(argv[1]) if len(argv) > 1 else {})
    # Keep the protocol off fds 0-2: children inherit those, and a stray print must not corrupt it.
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the pool's terminal is the pool's business
    server = ForkServer(settings)
    try:
        ready = server.start()
        server.prepare()
        write_message(replies, ready)
    except Exception as exc:
        write_message(replies, {"ready": False, "error": _error_line(exc)})
        return 1
    while True:
        try:
            request = request_from_dict(read_message(requests))
        except ProtocolError:
            return 0
        write_message(replies, asdict(server.run(request)))
        if server.unclean is not None:  # files that would not go: let the pool start a clean server
            print(f"forkserver: could not clean up {server.unclean}; exiting", file=sys.stderr)
            return 3
        server.prepare()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
