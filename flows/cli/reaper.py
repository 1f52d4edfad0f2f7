"""The CLI's watchdog: when an `autotraj` process ends, however it ends (SIGKILL included), the
processes it started and left behind (Prefect's temporary API server, a local Ray) end too.

`autotraj` starts it first thing (flows/cli:main) in a session of its own, so a signal to the
CLI's process group does not reach it. It keeps a list of the CLI's descendants while the CLI runs;
when the CLI is gone it adds what those started meanwhile (Ray's agents are a raylet's children),
terminates every one still running, then kills what has not exited after 5 s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

POLL_S = 0.1
GRACE_S = 5.0


def start(owner: int) -> subprocess.Popen[bytes]:
    """Watch `owner` (a pid) from a detached process."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli.reaper", str(owner)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def watch(owner: int) -> None:
    """Record `owner`'s descendants until it ends; then stop the ones still running."""
    import psutil

    me = os.getpid()
    descendants: dict[int, psutil.Process] = {}
    try:
        process = psutil.Process(owner)
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            descendants.update((child.pid, child) for child in process.children(recursive=True) if child.pid != me)
            time.sleep(POLL_S)
    except psutil.NoSuchProcess:
        pass
    # is_running() also checks the start time, so a pid reused since is never touched.
    left = {child.pid: child for child in descendants.values() if child.is_running()}
    for child in list(left.values()):
        with contextlib.suppress(psutil.NoSuchProcess):
            left.update((grandchild.pid, grandchild) for grandchild in child.children(recursive=True))
    left.pop(me, None)
    for child in left.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, still = psutil.wait_procs(list(left.values()), timeout=GRACE_S)
    for child in still:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
