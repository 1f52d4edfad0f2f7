"""What each isolation tier protects on this host, for `autotraj tools doctor`.

The tiers are probed in isolation.py (can they run at all); this reports, per tier, how files,
the data directory, sockets and signals, shared writable directories and memory are guarded here,
so a user sees what a snippet could reach before a policy under GRPO finds it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from tools_sandbox import cgroup, landlock
from tools_sandbox.forkserver import traversable_by_others


def readable_by_others(path: str | os.PathLike[str]) -> bool:
    """Whether a uid other than the owner (a sandbox uid) could list or read the path."""
    path = os.path.abspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IROTH) and traversable_by_others(os.path.dirname(path))


def _data_exposure(paths: Iterable[Path], guarded_by: str | None) -> str:
    open_to_others = [str(path) for path in paths if readable_by_others(path)]
    if not open_to_others:
        return "unreadable to other uids (mode o-rwx)"
    fix = f"chmod o-rwx {' '.join(open_to_others)}"
    if guarded_by:
        return f"readable by other uids ({fix} to fix); {guarded_by} keeps snippets out anyway"
    return f"READABLE by snippet uids: {fix}"


def protections(tier: str, data_paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(what, how it is guarded here) for one tier; data_paths: the data dir, the lake, the checkout."""
    data_paths = list(data_paths)
    if tier == "strict":
        return [
            ("files", "bubblewrap mounts only the runtime, read-only, and a private size-capped /tmp"),
            ("data dir, lake, checkout", "not mounted in the sandbox"),
            ("sockets, signals", "network, pid and ipc namespaces; seccomp forbids socket()"),
            ("shared writable dirs", "none reachable: /tmp and /dev/shm are private and swept"),
            ("memory across processes", "per process (RLIMIT_AS) × tools.python.processes; /tmp capped"),
        ]
    if tier == "none":
        return [("everything", "unconfined: limits and timeouts only (trusted code)")]
    abi = landlock.abi_version()
    guard = f"Landlock (ABI {abi})" if abi else None
    root = os.geteuid() == 0
    files = (
        f"{guard}: snippets read only the runtime and write only their work directory"
        if guard
        else "file permissions only (no Landlock in this kernel)"
        + ("; snippets run as a dedicated uid" if root else "; snippets run as YOUR uid")
    )
    scoped = "Landlock scopes abstract sockets and signals to the snippet" if abi >= 6 else "no Landlock scoping"
    return [
        ("files", files),
        ("data dir, lake, checkout", _data_exposure(data_paths, guard)),
        ("sockets, signals", f"seccomp forbids socket() and signals to the server and pool; {scoped}"),
        (
            "shared writable dirs",
            f"writes refused by {guard} outside the work dir"
            if guard
            else "swept after each snippet: /tmp, /var/tmp, /dev/shm (others such as /run/lock are not)",
        ),
        ("memory across processes", cgroup.available()),
    ]
