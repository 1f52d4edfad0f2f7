"""What an adversarial harness found against the sandbox (issue 16), each attack reproduced and contained.

Findings 1-7 run on every safe tier this host has (the `pool` fixture in conftest.py); the
servers' findings (8) are in test_served.py and test_reward_model.py. Bounded: small caps, short
timeouts, 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import as_completed
from pathlib import Path

import psutil
import pytest

from schemas.config import PythonToolConfig
from schemas.lake import Lake
from tasks.core.tir import ToolCall
from tasks.generation.tools import ToolRunner
from tests.sandbox_support import LIMITS, SAFE_TIERS, SECRET, assert_healthy, needs_uid_isolation
from tools_sandbox import cgroup, landlock
from tools_sandbox.cleanup import remove_tree
from tools_sandbox.doctor import protections
from tools_sandbox.executor import PythonSession, SandboxPool
from tools_sandbox.protocol import ERROR_CHARS
from tools_sandbox.results import format_result

# -- 1. a snippet forging its own result ---------------------------------------------------------------

FORGERIES = {
    "wrong-type": "import os\nos.write(3, b'{\"error\": 12345}')\nos._exit(0)",
    "extra-field": 'import os\nos.write(3, b\'{"error": null, "error_type": null, "stdout": "4"}\')\nos._exit(0)',
    "bad-type-name": 'import os\nos.write(3, b\'{"error": "x", "error_type": "a b"}\')\nos._exit(0)',
    "not-json": "import os\nos.write(3, bytes(range(256)))\nos._exit(0)",
    "then-raises": "import os\nos.write(3, b'{\"error\": null, \"error_type\": null}')\nraise ValueError('x')",
}


@pytest.mark.parametrize("code", FORGERIES.values(), ids=list(FORGERIES))
def test_a_forged_result_is_that_calls_sandbox_error(pool: SandboxPool, code: str) -> None:
    result = pool.run(code)
    assert result.error_type == "SandboxError" and "result channel" in (result.error or ""), result
    assert_healthy(pool)


class _Trajectory:
    session: PythonSession | None = None


def test_a_forged_result_never_raises_in_the_engine_or_the_cli(pool: SandboxPool, cli) -> None:
    runner = ToolRunner(pool, None, max_result_chars=2000)
    calls = [(_Trajectory(), ToolCall("python", code)) for code in (FORGERIES["wrong-type"], "print(6 * 7)")]
    forged, honest = runner.run(calls)
    assert forged.startswith("SandboxError:") and "result channel" in forged and honest == "42\n"
    shown = cli("tools", "exec", "-", "--tier", pool.isolation.tier, input=FORGERIES["wrong-type"])
    assert shown.exit_code == 1 and "SandboxError" in shown.output and "Traceback" not in shown.output


# -- 2. error text is capped like output ---------------------------------------------------------------


def test_exception_text_is_capped_before_it_reaches_the_model(pool: SandboxPool) -> None:
    result = pool.run("raise ValueError('A' * 5_000_000)")
    assert result.error_type == "ValueError" and len(result.error or "") <= ERROR_CHARS
    shown = format_result(result, 2000)
    assert len(shown) <= 2000 + len("\n... [output truncated: 9999999 more characters]") and "ValueError" in shown
    huge = pool.run("raise ValueError('B' * (70 << 20))", memory_mb=1024)  # past the protocol's message limit
    assert huge.error_type == "ValueError" and len(huge.error or "") <= ERROR_CHARS
    broken = pool.run("class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise Odd()")
    assert broken.error_type == "Odd"
    assert pool.restarts == 0
    assert_healthy(pool)


# -- 3. flooding the result channel ---------------------------------------------------------------------


def test_flooding_the_result_channel_does_not_grow_the_server(pool: SandboxPool) -> None:
    before = [psutil.Process(pid).memory_info().rss for pid in pool.server_pids()]
    flood = "import os\nchunk = b'x' * (1 << 20)\nwhile True:\n    os.write(3, chunk)"
    results = pool.map([flood] * pool.size)
    assert all(result.error_type == "SandboxError" and not result.timed_out for result in results), results
    after = [psutil.Process(pid).memory_info().rss for pid in pool.server_pids()]
    assert all(grown - was < 32 << 20 for was, grown in zip(before, after, strict=True)), (before, after)
    assert_healthy(pool)


# -- 4. trees the cleanup must survive ------------------------------------------------------------------


def test_a_deep_tree_and_planted_links_are_cleaned_without_touching_anything_outside(
    pool: SandboxPool, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    outside.chmod(0o755)
    code = (
        "import os\n"
        f"os.symlink({str(outside)!r}, 'link')\n"
        "os.mkdir('locked')\nopen('locked/f', 'w').close()\nos.chmod('locked', 0)\n"
        "for _ in range(3000):\n"
        "    os.mkdir('d')\n"
        "    os.chdir('d')\n"
        "os.chmod('.', 0o500)\n"
        "print('deep')"
    )
    results = pool.map([code] * pool.size)  # every worker must clean one up
    assert all(result.ok and result.stdout == "deep\n" for result in results), results
    assert sorted(os.listdir(outside)) == ["keep.txt"] and stat.S_IMODE(outside.stat().st_mode) == 0o755
    assert pool.restarts == 0
    assert_healthy(pool)


def test_remove_tree_flattens_depth_and_never_follows_or_chmods_outside(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "keep").write_text("x")
    (parent / "tree").mkdir()
    directory = os.open(parent / "tree", os.O_RDONLY)
    for depth in range(5000):  # deeper than PATH_MAX, Python's frames or a stack of open directories allow
        if depth % 1000 == 0:
            os.symlink(outside, "link", dir_fd=directory)
            os.mkdir("locked", dir_fd=directory)
            os.chmod("locked", 0, dir_fd=directory)
        os.mkdir("d", dir_fd=directory)
        child = os.open("d", os.O_RDONLY, dir_fd=directory)
        os.close(directory)
        directory = child
    os.fchmod(directory, 0o500)
    os.close(directory)
    remove_tree(str(parent / "tree"))
    assert os.listdir(parent) == [] and os.listdir(outside) == ["keep"]
    assert stat.S_IMODE(parent.stat().st_mode) == 0o755 and stat.S_IMODE(outside.stat().st_mode) == 0o755


# -- 5. the lake and the data directory -----------------------------------------------------------------


@pytest.fixture()
def world_traversable_lake() -> Iterator[Path]:
    """A lake the project creates under a 0755 directory (as a checkout or /srv would be)."""
    base = Path(tempfile.mkdtemp(prefix="autotraj-open-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    Lake(home).initialize()
    try:
        yield home
    finally:
        remove_tree(str(base))


def test_the_lake_is_unreadable_and_unlockable_from_a_snippet(pool: SandboxPool, world_traversable_lake: Path) -> None:
    home = world_traversable_lake
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and stat.S_IMODE((home / "lake").stat().st_mode) == 0o700
    code = (
        "import fcntl, os\n"
        f"for path in ({str(home / 'lake' / 'catalog.sqlite')!r}, {str(home / 'lake' / '.write.lock')!r}):\n"
        "    try:\n"
        "        with open(path, 'a') as handle:\n"
        "            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "            print('locked', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        f"print(os.path.exists({str(home / 'lake')!r}) and os.listdir({str(home / 'lake')!r}))"
    )
    result = pool.run(code)
    assert result.ok, result
    assert "locked" not in result.stdout and result.stdout.count("refused") == 2
    assert result.stdout.endswith("False\n")  # not even listed


def test_world_readable_files_outside_the_runtime_are_out_of_reach(pool: SandboxPool) -> None:
    if pool.isolation.tier == "standard" and landlock.abi_version() == 0:
        pytest.skip("no Landlock in this kernel: the standard tier guards files by permissions only (doctor says so)")
    base = Path(tempfile.mkdtemp(prefix="autotraj-open-", dir="/tmp"))
    try:
        base.chmod(0o755)
        readable = base / "answers.jsonl"
        readable.write_text(SECRET)
        readable.chmod(0o644)
        result = pool.run(f"print(open({str(readable)!r}).read())")
        assert result.error_type in {"PermissionError", "FileNotFoundError"} and SECRET not in result.stdout
    finally:
        remove_tree(str(base))


# -- 6. the host: shared writable directories, sockets, other processes, signals, memory ------------


def test_world_writable_directories_keep_what_the_host_put_there(pool: SandboxPool) -> None:
    needs_uid_isolation(pool)
    shared = Path(tempfile.mkdtemp(prefix="autotraj-session-", dir="/tmp"))  # like Ray's /tmp/ray/session_*
    try:
        shared.chmod(0o777)
        (shared / "host-file").write_text("host")
        (shared / "host-dir").mkdir()
        marker = f"autotraj-escape-{uuid.uuid4().hex}"
        code = (
            "import os\n"
            "attempts = [\n"
            f"    lambda: os.unlink({str(shared / 'host-file')!r}),\n"
            f"    lambda: os.rename({str(shared / 'host-dir')!r}, {str(shared / 'renamed')!r}),\n"
            f"    lambda: os.symlink('/etc/shadow', {str(shared / 'planted')!r}),\n"
            f"    lambda: open('/run/lock/{marker}', 'w').write('x'),\n"
            f"    lambda: open('/dev/shm/{marker}', 'w').write('x'),\n"
            "]\n"
            "for attempt in attempts:\n"
            "    try:\n"
            "        attempt()\n"
            "    except OSError as exc:\n"
            "        print('refused', type(exc).__name__)\n"
        )
        pool.run(code)
        assert sorted(os.listdir(shared)) == ["host-dir", "host-file"]
        assert not Path(f"/run/lock/{marker}").exists() and not Path(f"/dev/shm/{marker}").exists()
    finally:
        remove_tree(str(shared))


def test_abstract_sockets_and_other_command_lines_are_out_of_reach(pool: SandboxPool) -> None:
    name = f"autotraj-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", SECRET])
    try:
        code = (
            "import os, socket\n"
            "try:\n"
            "    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"    client.connect('\\0{name}')\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('socket refused', type(exc).__name__)\n"
            "try:\n"
            "    pids = os.listdir('/proc')\n"
            "except OSError:\n"
            "    pids = [str(pid) for pid in range(1, 1 << 16)]  # no listing: guess them all\n"
            "for pid in pids:\n"
            "    try:\n"
            "        print(open(f'/proc/{pid}/cmdline', 'rb').read())\n"
            "    except OSError:\n"
            "        pass\n"
        )
        result = pool.run(code)
        assert result.ok, result
        assert "socket refused" in result.stdout and "connected" not in result.stdout
        assert SECRET not in result.stdout
    finally:
        holder.kill()
        holder.wait()
        listener.close()


def test_queued_signals_cannot_reach_the_server(pool: SandboxPool) -> None:
    code = (
        "import ctypes, os, signal\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "info = ctypes.create_string_buffer(128)\n"
        "for name, number, args in (('rt_sigqueueinfo', 129, (os.getppid(), 9, info)),\n"
        "                           ('rt_tgsigqueueinfo', 297, (os.getppid(), os.getppid(), 9, info))):\n"
        "    if libc.syscall(number, *args) == 0:\n"
        "        print('sent', name)\n"
        "    else:\n"
        "        print('refused', name, ctypes.get_errno())\n"
    )
    if os.uname().machine != "x86_64":
        pytest.skip("the syscall numbers in this snippet are x86_64's")
    result = pool.run(code)
    assert "sent" not in result.stdout and result.stdout.count("refused") == 2, result
    assert pool.restarts == 0
    assert_healthy(pool)


def test_memory_is_capped_across_a_snippets_processes(pool: SandboxPool) -> None:
    tier = pool.isolation.tier
    memory = dict(protections(tier, []))["memory across processes"]
    if tier != "standard" or not cgroup.available().startswith("yes"):
        # No cgroup for this tier here: each process is capped alone, and the doctor says exactly that.
        assert "per process" in memory or "on its own" in memory, memory
        return
    assert memory.startswith("yes")
    code = (
        "import os, time\n"
        "children = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (400 << 20)\n"
        "        time.sleep(2)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "print([os.waitpid(pid, 0)[1] for pid in children])"
    )
    result = pool.run(code, memory_mb=1024, timeout_s=20)  # 4 × 400 MiB under a 1024 MiB cap
    statuses = [int(value) for value in result.stdout.strip("[]\n").split(",")] if result.stdout else []
    assert result.ok and len(statuses) == 4, result
    assert any(os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9 for status in statuses), statuses
    assert_healthy(pool)


# -- 7. one trajectory's runaway snippets and everyone else --------------------------------------------


@pytest.mark.parametrize("tier", SAFE_TIERS)
def test_trajectories_take_turns_and_nothing_waits_forever(tier: str) -> None:
    config = PythonToolConfig(**(LIMITS | {"timeout_s": 1.0, "queue_timeout_s": 30.0, "preload": ["math"]}))
    with SandboxPool(config, workers=2, tier=tier) as pool:
        runaway, polite = object(), object()
        finished: list[str] = []
        futures = {pool.submit("while True:\n    pass", owner=runaway): "runaway" for _ in range(8)}
        futures[pool.submit("print(1)", owner=polite)] = "polite"
        for future in as_completed(futures):
            finished.append(futures[future])
        # First come, first served would finish it last; taking turns, after at most the two running
        # and the one next in line.
        assert finished.index("polite") <= 3, finished
    impatient = PythonToolConfig(**(LIMITS | {"timeout_s": 2.0, "queue_timeout_s": 0.5, "preload": ["math"]}))
    with SandboxPool(impatient, workers=1, tier=tier) as pool:
        stuck = pool.submit("while True:\n    pass")
        waiting = pool.submit("print(1)")
        assert stuck.result().timed_out
        late = waiting.result()
        assert late.error_type == "QueueTimeout" and "queue_timeout_s" in (late.error or "")
