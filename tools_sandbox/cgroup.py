"""A memory cgroup per sandbox worker: one snippet's processes together stay under its memory limit.

RLIMIT_AS caps each process; a snippet that forks four processes could otherwise use four times its
limit. As root, the pool makes a cgroup for each fork server under its own (cgroup v1's memory
hierarchy, or v2 where the memory controller is delegated there); the server sets the snippet's
limit before handing it the snippet, and the child joins the cgroup before it drops to the sandbox
uid. Where no cgroup can be made (not root, no delegated controller) the per-process limit is all
there is, and `autotraj tools doctor` says so. Stdlib only (the fork server imports it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_memory_cgroup() -> tuple[Path, str] | None:
    """(directory of this process's memory cgroup, "v1" | "v2"), when there is one."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return ROOT / "memory" / path.lstrip("/"), "v1"
            if hierarchy == "0" and (ROOT / "cgroup.controllers").exists():
                return ROOT / path.lstrip("/"), "v2"
    return None


def _limit_file(path: Path) -> Path:
    return path / ("memory.limit_in_bytes" if (path / "memory.limit_in_bytes").exists() else "memory.max")


def create(name: str) -> str | None:
    """A new memory cgroup named `name` under this process's; None where the host allows none."""
    own = _own_memory_cgroup()
    if own is None or os.geteuid() != 0:
        return None
    parent, _version = own
    path = parent / name
    try:
        path.mkdir(exist_ok=True)
        if not _limit_file(path).exists():  # v2 without the memory controller delegated here
            path.rmdir()
            return None
    except OSError:
        return None
    return str(path)


def set_limit(path: str, limit_bytes: int) -> None:
    """Cap the memory (and, on v1, memory plus swap) of every process in the cgroup."""
    directory = Path(path)
    memsw = directory / "memory.memsw.limit_in_bytes"
    if memsw.exists():  # v1 wants memory <= memory+swap at every step: lift the latter first
        memsw.write_text("-1")
        _limit_file(directory).write_text(str(limit_bytes))
        memsw.write_text(str(limit_bytes))
        return
    _limit_file(directory).write_text(str(limit_bytes))
    with contextlib.suppress(OSError):  # v2 without swap accounting has no memory.swap.max
        (directory / "memory.swap.max").write_text("0")


def join(path: str) -> None:
    """Move the calling process (and what it will start) into the cgroup."""
    Path(path, "cgroup.procs").write_text(str(os.getpid()))


def remove(path: str) -> None:
    """Delete the cgroup once its processes are gone (best effort)."""
    with contextlib.suppress(OSError):
        Path(path).rmdir()


def available() -> str:
    """Whether snippets of a root pool get a memory cgroup here, and why (not)."""
    own = _own_memory_cgroup()
    if own is None:
        return "no memory cgroup is reachable: each process of a snippet is capped on its own (RLIMIT_AS)"
    if os.geteuid() != 0:
        return "not root: no cgroup can be made; each process of a snippet is capped on its own (RLIMIT_AS)"
    probe = create(f"autotraj-probe-{os.getpid()}")
    if probe is None:
        return f"the memory controller is not delegated to {own[0]}: each process is capped on its own (RLIMIT_AS)"
    remove(probe)
    return f"yes: a memory cgroup ({own[1]}) per worker caps a snippet's processes together"
