"""The Python sandbox: correct answers, and every adversarial snippet contained, on every tier this host has.

All adversarial tests are bounded: small caps, short timeouts, only 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.sandbox_support import (
    SAFE_TIERS,
    SECRET,
    TIMEOUT_S,
    assert_healthy,
    needs_uid_isolation,
    sandbox_config,
    sandbox_processes,
)
from tools_sandbox import isolation
from tools_sandbox.executor import PythonSession, SandboxPool
from tools_sandbox.isolation import IsolationUnavailable, TierCheck, probe_tiers, resolve
from tools_sandbox.results import format_result


def test_numpy_and_sympy_answers(pool: SandboxPool) -> None:
    numpy_result = pool.run("import numpy as np\nprint(np.linalg.solve([[2, 1], [1, 3]], [3, 5]).round(6).tolist())")
    assert numpy_result.ok and numpy_result.stdout == "[0.8, 1.4]\n"
    sympy_result = pool.run("import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 5*x + 6, x))")
    assert sympy_result.ok and sympy_result.stdout == "[2, 3]\n"
    shown = pool.run("from fractions import Fraction\nFraction(1, 3) + Fraction(1, 6)")
    assert shown.stdout == "Fraction(1, 2)\n"  # a trailing expression is shown, as in Jupyter


@pytest.mark.parametrize(
    ("code", "error_type", "message"),
    [
        ("x = 1 / 0", "ZeroDivisionError", "ZeroDivisionError: division by zero"),
        ("def broken(:\n    pass", "SyntaxError", "SyntaxError: invalid syntax (line 1)"),
        ("import sys\nprint('before')\nsys.exit(3)", "SystemExit", "SystemExit: 3"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt", "KeyboardInterrupt"),
        ("def f(n):\n    return f(n + 1)\nf(0)", "RecursionError", "RecursionError: maximum recursion depth exceeded"),
        ("import ctypes\nctypes.string_at(0)", "Killed", "Killed: SIGSEGV (Segmentation fault)"),
        ("import os\nos._exit(4)", "ProcessExit", "ProcessExit: the process exited with status 4"),
    ],
    ids=["exception", "syntax", "sys-exit", "keyboard-interrupt", "recursion", "segfault", "os-exit"],
)
def test_errors_are_results_and_the_worker_survives(
    pool: SandboxPool, code: str, error_type: str, message: str
) -> None:
    restarts = pool.restarts
    result = pool.run(code)
    assert result.error_type == error_type
    assert result.error is not None and result.error.startswith(message)
    assert format_result(result, 2000).endswith(result.error)
    assert pool.restarts == restarts
    assert_healthy(pool)


def test_clean_exit_is_not_an_error(pool: SandboxPool) -> None:
    result = pool.run("import sys\nprint('done')\nsys.exit(0)")
    assert result.ok and result.stdout == "done\n"


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    pass",
        "import time\ntime.sleep(60)",
        "import signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nos.wait()",
    ],
    ids=["busy", "sleep", "ignores-signals", "waits-on-child"],
)
def test_timeouts_are_enforced(pool: SandboxPool, code: str) -> None:
    started = time.monotonic()
    result = pool.run("print('started')\n" + code)
    elapsed = time.monotonic() - started
    assert result.timed_out and result.killed and result.error_type == "TimeoutError"
    assert result.stdout == "started\n"  # output before the kill is kept
    assert elapsed < TIMEOUT_S + 1.0, elapsed
    assert_healthy(pool)


def test_memory_bomb_is_stopped(pool: SandboxPool) -> None:
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))"
    result = pool.run(bomb, memory_mb=512, timeout_s=10)
    assert result.error_type == "MemoryError"
    assert_healthy(pool)


@pytest.mark.parametrize("tier", SAFE_TIERS)
def test_sympy_imports_fresh_under_the_memory_limit(tier: str) -> None:
    with SandboxPool(sandbox_config(preload=[]), workers=1, tier=tier) as cold:
        result = cold.run("import sympy\nprint(sympy.factorint(2**10 * 3))", timeout_s=60)
        assert result.ok, result
        assert result.stdout == "{2: 10, 3: 1}\n"
        assert cold.run("x = bytearray(2 << 30)").error_type == "MemoryError"


def test_fork_bomb_is_capped(pool: SandboxPool) -> None:
    result = pool.run("import os\nwhile True:\n    os.fork()")
    assert result.error_type == "BlockingIOError"  # fork fails once the process cap is reached
    assert_healthy(pool)


def test_thread_bomb_is_capped(pool: SandboxPool) -> None:
    code = (
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"
    )
    result = pool.run(code)
    assert result.error_type == "RuntimeError" and "thread" in (result.error or "")
    assert_healthy(pool)


def test_double_forked_daemon_is_dead_on_return(pool: SandboxPool) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    try:\n"
        "        os.setsid()\n"
        "    except OSError as exc:\n"
        "        print('setsid refused:', exc.errno, flush=True)\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(120)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('parent returns')"
    )
    result = pool.run(code)
    assert result.ok and "parent returns" in result.stdout
    assert "setsid refused: 1" in result.stdout  # nothing may leave the snippet's process group
    assert sandbox_processes(pool) == []
    assert_healthy(pool)


def test_output_flood_is_truncated_quickly(pool: SandboxPool) -> None:
    started = time.monotonic()
    result = pool.run("import sys\nsys.stdout.write('x' * (200 << 20))")
    assert result.output_truncated and not result.timed_out
    assert time.monotonic() - started < TIMEOUT_S
    assert len(result.stdout) == 64 << 10
    shown = format_result(result, 2000)
    assert "[output truncated:" in shown and shown.endswith("execution was stopped")
    endless = pool.run("while True:\n    print('y' * 100)")
    assert endless.output_truncated and not endless.timed_out
    assert_healthy(pool)


def test_input_gets_eof(pool: SandboxPool) -> None:
    result = pool.run("answer = input('? ')")
    assert result.error_type == "EOFError"


def test_secrets_and_other_processes_are_unreadable(pool: SandboxPool) -> None:
    needs_uid_isolation(pool)
    parent = os.getpid()
    code = (
        "import os\n"
        f"print('env', os.environ.get('AUTOTRAJ_TEST_SECRET'))\n"
        f"for pid in ({parent}, os.getppid(), 1):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as exc:\n"
        "        print(pid, type(exc).__name__)\n"
    )
    result = pool.run(code)
    assert result.ok, result
    assert "env None" in result.stdout
    assert SECRET not in result.stdout
    assert "b'" not in result.stdout  # no environ could be read at all


def test_root_only_file_is_unreadable(pool: SandboxPool, tmp_path: Path) -> None:
    needs_uid_isolation(pool)
    secret_file = tmp_path / "root-only.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    tmp_path.chmod(0o755)
    result = pool.run(f"print(open({str(secret_file)!r}).read())")
    assert result.error_type in {"PermissionError", "FileNotFoundError"}  # strict does not even show it
    assert SECRET not in result.stdout


def test_writes_outside_the_work_dir_do_not_persist(pool: SandboxPool, tmp_path: Path) -> None:
    needs_uid_isolation(pool)
    marker = f"autotraj-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{marker}", f"/var/tmp/{marker}", f"/dev/shm/{marker}", str(tmp_path / marker), f"/{marker}"]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as handle:\n"
        "            handle.write('escaped')\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "open('inside.txt', 'w').write('ok')\n"
        "print(os.getcwd())"
    )
    result = pool.run(code)
    assert result.ok, result
    for target in targets:
        assert not Path(target).exists(), target
    if pool.isolation.tier == "standard":  # host paths; in strict they live in the sandbox's own /tmp
        assert not Path(result.stdout.splitlines()[-1]).exists()
        # Only the next snippet's fresh work dir, made ahead, is left in each server's work root (the
        # server makes it after replying: wait for it, boundedly).
        deadline = time.monotonic() + 10
        while (counts := [len(os.listdir(w.spec.work_root)) for w in pool._workers]) != [1] * pool.size:
            assert time.monotonic() < deadline and max(counts) <= 1, counts
            time.sleep(0.05)
    assert pool.run("import os\nprint(os.listdir('.'))").stdout == "[]\n"  # next snippet starts empty


def test_strict_shows_only_the_runtime() -> None:
    if "strict" not in SAFE_TIERS:
        pytest.skip("bubblewrap is not available on this host (doctor says why)")
    project = Path(__file__).resolve().parent.parent
    code = (
        "import os\n"
        f"print([os.path.exists(p) for p in ({str(project / 'README.md')!r}, '/etc/passwd', '/home', '/var')])\n"
        "print(sorted(os.listdir('/tmp')), os.uname().nodename)"
    )
    with SandboxPool(sandbox_config(), workers=1, tier="strict") as strict:
        result = strict.run(code)
    assert result.ok, result
    assert result.stdout == "[False, False, False, False]\n['work'] sandbox\n"


def test_disk_filling_hits_the_file_size_limit(pool: SandboxPool) -> None:
    result = pool.run("with open('big.bin', 'wb') as handle:\n    handle.write(b'x' * (8 << 20))")
    assert result.error_type == "OSError" and "File too large" in (result.error or "")


def test_no_network_even_to_localhost(pool: SandboxPool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        result = pool.run(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
        )
        assert "connected" not in result.stdout and result.error_type is not None
        with pytest.raises(TimeoutError):
            listener.accept()
    unix = pool.run("import socket\na, b = socket.socketpair()\na.send(b'ok')\nprint(b.recv(2))")
    assert unix.ok and unix.stdout == "b'ok'\n"  # local IPC (multiprocessing) still works


def test_snippets_cannot_kill_the_server_or_the_pool(pool: SandboxPool) -> None:
    code = (
        "import os, signal\n"
        f"for target in (os.getppid(), {os.getpid()}, -os.getpgid(os.getppid()), -1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "        print('killed', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    result = pool.run(code)
    assert "killed" not in result.stdout and result.stdout.count("refused") == 4
    assert pool.restarts == 0
    assert_healthy(pool)


def test_a_killed_server_is_restarted(pool: SandboxPool) -> None:
    before = pool.restarts
    worker = pool._workers[0]
    victim = worker.server_pid
    os.kill(victim, signal.SIGKILL)
    worker.process.wait()  # in strict, bwrap follows its server out
    assert_healthy(pool)  # the dead worker's request is resent to its replacement
    assert pool.restarts == before + 1
    assert victim not in pool.server_pids()


def test_a_server_killed_mid_snippet_gives_an_error_and_recovers(pool: SandboxPool) -> None:
    future = pool.submit("import time\nprint('running', flush=True)\ntime.sleep(30)", timeout_s=30)
    time.sleep(1.0)
    for victim in pool.server_pids():  # whichever worker took it
        os.kill(victim, signal.SIGKILL)
    result = future.result(timeout=30)
    assert result.error_type == "SandboxError" and "restarted" in (result.error or "")
    assert_healthy(pool)


def test_parallel_calls_do_not_cross_talk(pool: SandboxPool) -> None:
    tokens = [uuid.uuid4().hex for _ in range(12)]
    snippets = [
        f"import os, time\nopen('token', 'w').write({token!r})\ntime.sleep(0.05)\n"
        f"print(open('token').read(), os.listdir('.'))"
        for token in tokens
    ]
    finished = dict(pool.as_completed(snippets))
    assert sorted(finished) == list(range(len(tokens)))
    for index, token in enumerate(tokens):
        assert finished[index].stdout == f"{token} ['token']\n"
    assert {result.worker for result in finished.values()} == set(range(pool.size))


def test_persistence_is_per_trajectory(pool: SandboxPool) -> None:
    first, second = PythonSession(pool, persistent=True), PythonSession(pool, persistent=True)
    assert first.run("import math\nradius = 3\nprint('set')").stdout == "set\n"
    assert first.run("while True:\n    pass").timed_out  # a timed-out cell is not replayed
    assert first.run("print(round(math.pi * radius**2, 2))").stdout == "28.27\n"
    assert second.run("print(radius)").error_type == "NameError"
    stateless = PythonSession(pool)
    stateless.run("y = 1")
    assert stateless.run("print(y)").error_type == "NameError"


def test_nothing_is_left_behind(tmp_path: Path) -> None:
    tier = SAFE_TIERS[0]
    pool = SandboxPool(sandbox_config(), workers=1, tier=tier)
    pool.run("import os\nopen('/tmp/leftover-' + str(os.getpid()), 'w')\nos.system('sleep 100 &')")
    roots = [worker.spec.work_root for worker in pool._workers if worker.spec.work_root]
    assert sandbox_processes(pool) == []
    pool.close()
    assert all(not Path(root).exists() for root in roots)
    assert not [p for p in Path("/tmp").glob("leftover-*")]


def test_pool_runs_inside_a_ray_actor(local_ray) -> None:
    ray = local_ray

    @ray.remote(num_cpus=0)
    class ToolActor:
        def __init__(self, tier: str):
            self.pool = SandboxPool(sandbox_config(), workers=2, tier=tier)

        def run(self, snippets: list[str]) -> list[tuple[str, int]]:
            return [(result.stdout, result.worker) for result in self.pool.map(snippets)]

    actor = ToolActor.remote(SAFE_TIERS[0])
    try:
        results = ray.get(
            actor.run.remote([f"import sympy\nprint(sympy.prime({n}))" for n in range(1, 9)]), timeout=120
        )
    finally:
        ray.kill(actor)
    assert [stdout for stdout, _ in results] == [f"{p}\n" for p in (2, 3, 5, 7, 11, 13, 17, 19)]
    assert {worker for _, worker in results} == {0, 1}


def test_tier_resolution_never_falls_back_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = (
        TierCheck("strict", False, "bubblewrap is not installed"),
        TierCheck("standard", True, "seccomp works"),
        TierCheck("none", True, "always"),
    )
    monkeypatch.setattr(isolation, "probe_tiers", lambda: checks)
    with pytest.raises(IsolationUnavailable, match="'strict' is not available here: bubblewrap is not installed"):
        resolve("strict")
    assert resolve("auto").tier == "standard"
    assert resolve("none").tier == "none"
    monkeypatch.setattr(
        isolation, "probe_tiers", lambda: (checks[0], TierCheck("standard", False, "no seccomp"), checks[2])
    )
    with pytest.raises(IsolationUnavailable, match="no safe isolation tier"):
        resolve("auto")  # never 'none' unless asked by name
    with pytest.raises(IsolationUnavailable, match="unknown isolation tier"):
        resolve("paranoid")


def test_host_supports_a_safe_tier() -> None:
    # The test command installs bubblewrap; a host without any safe tier must say so, not pass quietly.
    assert SAFE_TIERS, probe_tiers()


def test_cli_exec_and_doctor(cli, home: Path) -> None:
    shown = cli("tools", "exec", "-", input="import sympy as sp\nx = sp.Symbol('x')\nsp.factor(x**2 - 1)\n")
    assert shown.exit_code == 0 and shown.output.strip() == "(x - 1)*(x + 1)"
    failed = cli("tools", "exec", "-", "--json", input="print('partial')\n1/0\n")
    assert failed.exit_code == 1
    payload = json.loads(failed.output)
    assert payload["stdout"] == "partial\n" and payload["error_type"] == "ZeroDivisionError"
    doctor = cli("tools", "doctor")
    assert doctor.exit_code == 0
    for tier in ("strict", "standard", "none"):
        assert tier in doctor.output
    assert f"isolation tier '{SAFE_TIERS[0]}'" in doctor.output
    # What each available tier guards here, the data directory's exposure included.
    for what in ("files", "data dir, lake, checkout", "sockets, signals", "shared writable dirs", "memory across"):
        assert doctor.output.count(what) >= len(SAFE_TIERS), what
