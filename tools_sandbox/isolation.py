"""Isolation tiers for the Python sandbox: what this host can provide, and how a fork server is launched.

- strict: each fork server inside bubblewrap (pid/net/ipc/uts/cgroup namespaces, a minimal read-only
  root, a size-capped private /tmp, cleared environment), plus everything in standard. As root, bwrap
  runs privileged with all capabilities dropped except what the server needs to hand snippets a
  dedicated uid; otherwise it adds a user namespace and runs as the caller.
- standard: fork server + seccomp + rlimits + a dedicated unprivileged uid per worker when running as
  root. Needs no namespaces, so it works in containers that block them.
- none: limits and timeouts only, for trusted debugging; chosen only when asked for by name.

The tier is probed, never assumed: a requested tier the host cannot provide is refused with the
reason, and "auto" picks the strongest available tier but never "none".
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools_sandbox import cgroup

TIERS = ("strict", "standard", "none")
UID_LOCK_DIR = Path(tempfile.gettempdir()) / "autotraj-sandbox-uids"
SERVER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}
# What a root server inside bwrap keeps: enough to give snippets their uid and clean up after them.
STRICT_ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_KILL")
STRICT_WORK_ROOT = "/tmp/work"
PROBE_TIMEOUT_S = 60


class IsolationUnavailable(RuntimeError):
    """The requested isolation tier cannot be provided on this host."""


@dataclass(frozen=True)
class TierCheck:
    """Whether one tier works here, and why (not)."""

    tier: str
    available: bool
    reason: str


@dataclass(frozen=True)
class Isolation:
    """The tier in use and what it implies."""

    tier: str
    dedicated_uid: bool
    checks: tuple[TierCheck, ...] = field(default=())

    def describe(self) -> str:
        """One line for logs and the CLI."""
        uid = "a dedicated unprivileged uid per worker" if self.dedicated_uid else "the caller's uid"
        return f"isolation tier '{self.tier}', snippets run as {uid}"


def _is_root() -> bool:
    return os.geteuid() == 0


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _runtime_roots() -> list[str]:
    """What a strict server's interpreter needs to see: the Python install, its packages, this package.

    Only the tools_sandbox directory of a source checkout is shown, not the checkout (which may hold
    data, credentials, the lake).
    """
    candidates = {sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parent)}
    candidates.update(
        path
        for path in sys.path
        if os.path.isabs(path) and os.path.isdir(path) and ("site-packages" in path or "dist-packages" in path)
    )
    roots: list[str] = []
    for path in sorted(os.path.realpath(candidate) for candidate in candidates):
        if not any(path == root or path.startswith(root + os.sep) for root in roots):
            roots.append(path)
    return roots


def bwrap_prefix(work_tmp_mb: int) -> list[str]:
    """The bubblewrap command line that wraps a fork server."""
    args = ["bwrap", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net"]
    args += ["--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if _is_root():
        args += ["--cap-drop", "ALL"]
        for cap in STRICT_ROOT_CAPS:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-user"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives"):
        args += ["--ro-bind-try", name, name]
    for root in _runtime_roots():
        args += ["--ro-bind", root, root]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(work_tmp_mb << 20), "--tmpfs", "/tmp"]
    args += ["--clearenv"]
    for key, value in SERVER_ENV.items():
        args += ["--setenv", key, value]
    args += ["--setenv", "PYTHONPATH", _package_root(), "--chdir", "/tmp", "--"]
    return args


def _user_task_count() -> int:
    """Tasks (processes and threads) of this uid: RLIMIT_NPROC counts them all."""
    uid = str(os.getuid())
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
            if fields.get("Uid", "").split()[:1] == [uid]:
                count += int(fields.get("Threads", "1"))
    return count


@dataclass
class LaunchSpec:
    """Everything needed to start one fork server."""

    argv: list[str]
    env: dict[str, str]
    settings: dict[str, Any]
    work_root: str | None  # created by the pool and removed when the server goes (None: inside bwrap)
    cgroup: str | None = None  # the worker's memory cgroup, removed when the server goes

    def command(self) -> list[str]:
        """The full argv including the JSON settings."""
        return [*self.argv, json.dumps(self.settings)]


def launch_spec(
    tier: str,
    index: int,
    uid: int | None,
    preload: list[str],
    tmp_mb: int,
) -> LaunchSpec:
    """How to start fork server number `index` for a tier."""
    server = [sys.executable, "-m", "tools_sandbox.forkserver"]
    settings: dict[str, Any] = {
        "index": index,
        "preload": preload,
        "seccomp": tier != "none",
        "landlock": tier == "standard",  # the strict tier's whole file system view is bubblewrap's
        "sandbox_uid": uid,
        "sandbox_gid": uid,
        "protected_pids": [os.getpid()],
        "env": dict(SERVER_ENV),
    }
    if uid is None:
        settings["nproc_base"] = _user_task_count()
    if tier == "strict":
        settings |= {"work_root": STRICT_WORK_ROOT, "sweep_dirs": ["/tmp", "/dev/shm"]}
        return LaunchSpec(argv=bwrap_prefix(tmp_mb) + server, env={}, settings=settings, work_root=None)
    work_root = tempfile.mkdtemp(prefix=f"autotraj-sandbox-{index}-")
    os.chmod(work_root, 0o711)
    settings["work_root"] = work_root
    group = None
    if tier == "standard" and uid is not None:
        settings["sweep_dirs"] = sorted({tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"})
        settings["cgroup"] = group = cgroup.create(f"autotraj-sandbox-{os.getpid()}-{index}")
    env = dict(SERVER_ENV, PYTHONPATH=_package_root())
    return LaunchSpec(argv=server, env=env, settings=settings, work_root=work_root, cgroup=group)


class UidLease:
    """Host-wide exclusive use of sandbox uids, held by file locks for the life of a pool."""

    def __init__(self, base: int, count: int, span: int = 4096):
        UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        self.uids: list[int] = []
        self._handles: list[Any] = []
        for uid in range(base, base + span):
            if len(self.uids) == count:
                break
            handle = open(UID_LOCK_DIR / f"{uid}.lock", "a")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self.uids.append(uid)
            self._handles.append(handle)
        if len(self.uids) < count:
            self.release()
            raise IsolationUnavailable(f"no free sandbox uids in {base}..{base + span}")

    def release(self) -> None:
        """Give the uids back."""
        for handle in self._handles:
            handle.close()
        self._handles.clear()


_SECCOMP_PROBE = """
import errno, socket
from tools_sandbox.seccomp_filter import build_seccomp_filter
build_seccomp_filter([]).load()
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
except PermissionError:
    print("blocked")
"""


def _probe_standard() -> TierCheck:
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        return TierCheck("standard", False, f"pyseccomp/libseccomp cannot be loaded: {exc}")
    probe = subprocess.run(
        [sys.executable, "-c", _SECCOMP_PROBE],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        env=dict(SERVER_ENV, PYTHONPATH=_package_root()),
    )
    if probe.stdout.strip() != "blocked":
        detail = (probe.stderr.strip().splitlines() or ["the filter did not block an inet socket"])[-1]
        return TierCheck("standard", False, f"seccomp filters do not work here: {detail}")
    who = (
        "a dedicated unprivileged uid per worker (running as root)"
        if _is_root()
        else ("the caller's uid (not root: no dedicated uid, so snippets can read what you can)")
    )
    return TierCheck("standard", True, f"seccomp + rlimits work; snippets run as {who}")


def _probe_strict(standard: TierCheck) -> TierCheck:
    if shutil.which("bwrap") is None:
        return TierCheck("strict", False, "bubblewrap is not installed (apt-get install bubblewrap)")
    if not standard.available:
        return TierCheck("strict", False, f"strict also needs seccomp: {standard.reason}")
    probe = subprocess.run(
        [*bwrap_prefix(16), sys.executable, "-c", "import tools_sandbox.forkserver; print('ok')"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        env={},
    )
    if probe.stdout.strip() != "ok":
        detail = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return TierCheck("strict", False, f"bubblewrap cannot create the sandbox here: {detail}")
    mode = "privileged bwrap with capabilities dropped" if _is_root() else "bwrap in a user namespace"
    return TierCheck("strict", True, f"namespaces, read-only root and private /tmp work ({mode})")


@functools.cache
def probe_tiers() -> tuple[TierCheck, ...]:
    """Probe every tier on this host (once per process)."""
    standard = _probe_standard()
    strict = _probe_strict(standard)
    none = TierCheck("none", True, "always possible; no confinement beyond limits (trusted debugging only)")
    return (strict, standard, none)


def resolve(requested: str) -> Isolation:
    """The tier to use for a requested one ('auto' = strongest available, never 'none')."""
    if requested != "auto" and requested not in TIERS:
        raise IsolationUnavailable(f"unknown isolation tier {requested!r}; choose auto, {', '.join(TIERS)}")
    checks = probe_tiers()
    by_tier = {check.tier: check for check in checks}
    if requested == "auto":
        chosen = next((check for check in checks if check.available and check.tier != "none"), None)
        if chosen is None:
            reasons = "; ".join(f"{check.tier}: {check.reason}" for check in checks if check.tier != "none")
            raise IsolationUnavailable(
                f"no safe isolation tier is available ({reasons}). Fix one of these, or set "
                "tools.python.tier=none to run snippets unconfined (trusted code only)."
            )
    else:
        chosen = by_tier[requested]
        if not chosen.available:
            raise IsolationUnavailable(f"isolation tier '{requested}' is not available here: {chosen.reason}")
    return Isolation(tier=chosen.tier, dedicated_uid=_is_root() and chosen.tier != "none", checks=checks)
