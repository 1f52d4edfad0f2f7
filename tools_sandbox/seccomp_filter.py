"""The seccomp filter every sandboxed child loads, compiled to BPF once in the fork server.

Allow by default and deny the escape hatches: namespaces, mounts, tracing, kernel interfaces,
io_uring, every socket() (socketpair stays: it reaches nothing outside), and any signal aimed at
everyone or at the server, the pool or their process groups.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import tempfile
from typing import Any

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# Syscalls a snippet never needs and that open a way out: namespaces, mounts, tracing other
# processes, kernel modules, eBPF, io_uring (which bypasses seccomp), keyrings, leaving the group.
BLOCKED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount",
    "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "open_by_handle_at",
    "name_to_handle_at", "reboot", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "syslog", "vhangup", "personality",
    "setsid", "setpgid",
)  # fmt: skip
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
# Every syscall whose first argument names the process (or group) a signal goes to.
SIGNAL_SYSCALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class CompiledFilter:
    """A seccomp filter compiled to BPF once, in the server: a child loads it with two prctl calls.

    libseccomp would recompile the rules in every child (about 2 ms each); the program is the same.
    """

    def __init__(self, rules: Any):
        with tempfile.TemporaryFile() as handle:
            rules.export_bpf(handle)
            handle.seek(0)
            program = handle.read()
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._program = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))  # 8 bytes per instruction
        self._libc = ctypes.CDLL(None, use_errno=True)

    def load(self) -> None:
        """Confine the calling thread (and everything it starts) for good."""
        if self._libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self._libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._program), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "loading the seccomp filter failed")


def build_seccomp_filter(protected_pids: list[int]) -> CompiledFilter:
    """The seccomp filter every child loads: allow by default, deny the escape hatches."""
    import pyseccomp as seccomp

    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in BLOCKED_SYSCALLS:
        with contextlib.suppress(Exception):  # a syscall this architecture does not have
            rules.add_rule(deny, name)
    # No socket() at all: no TCP/UDP/raw/netlink even without a network namespace, and no AF_UNIX
    # connection to a host process (abstract names escape file permissions). socketpair() stays.
    rules.add_rule(seccomp.ERRNO(errno.EACCES), "socket")
    # clone3 passes flags in memory seccomp cannot read; ENOSYS makes libc fall back to clone.
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in NAMESPACE_FLAGS:
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # Signals: never to everyone (-1), never to the server, the pool or their groups.
    targets = {0xFFFFFFFF}
    for pid in protected_pids:
        targets |= {pid & 0xFFFFFFFF, -pid & 0xFFFFFFFF}
    for target in targets:
        for name in SIGNAL_SYSCALLS:
            rules.add_rule(deny, name, seccomp.Arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, target))
    return CompiledFilter(rules)
