"""What the sandbox tests share: the safe tiers of this host, small limits, and health checks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from schemas.config import PythonToolConfig
from tools_sandbox.executor import SandboxPool
from tools_sandbox.isolation import probe_tiers

SAFE_TIERS = [check.tier for check in probe_tiers() if check.available and check.tier != "none"]
SECRET = f"autotraj-secret-{uuid.uuid4().hex}"
TIMEOUT_S = 2.0
LIMITS = {"timeout_s": TIMEOUT_S, "memory_mb": 1024, "output_kb": 64, "file_mb": 4, "processes": 16}


def sandbox_config(**overrides: object) -> PythonToolConfig:
    return PythonToolConfig(**(LIMITS | {"preload": ["math", "numpy", "sympy"]} | overrides))


def sandbox_processes(pool: SandboxPool) -> list[int]:
    """Host pids of live processes of the pool's sandbox uids, beyond each server's one waiting child.

    Every server keeps one confined child forked ahead for the next snippet; anything else running
    as a sandbox uid is a leftover. Zombies are dead: one orphaned to a container's pid 1 that never
    reaps stays listed, so they are skipped.
    """
    if pool._lease is None:
        return []
    servers = set(pool.server_pids())
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                owner = os.stat(f"/proc/{entry}").st_uid
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if owner in pool._lease.uids and fields[0] != "Z":
                found.append((int(entry), int(fields[1])))
    waiting = [pid for pid, parent in found if parent in servers]
    return [pid for pid, parent in found if parent not in servers] + waiting[len(servers) :]


def needs_uid_isolation(pool: SandboxPool) -> None:
    """Standard tier without root runs snippets as the caller: there is no uid boundary to test."""
    if not pool.isolation.dedicated_uid and pool.isolation.tier == "standard":
        pytest.skip("standard tier without root: snippets run as the caller (doctor says so)")


def assert_healthy(pool: SandboxPool) -> None:
    """Every worker still answers, and nothing the snippets started is alive."""
    results = pool.map(["print(6 * 7)"] * (2 * pool.size))
    assert all(result.stdout == "42\n" and result.ok for result in results), results
    assert sandbox_processes(pool) == []
