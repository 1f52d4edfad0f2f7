"""Landlock (Linux ≥ 5.13): the files, sockets and signals a snippet may reach, enforced by the kernel.

The child calls `restrict(workdir, readable)` just before its snippet runs (as root when it will
drop to a sandbox uid: the paths are opened first). After it, the snippet and everything it starts
can read and execute only the runtime (the Python install, its packages, the system's /usr, /lib,
/etc), its own /proc entry and a few devices, and can write only its work directory and /dev/null:
the lake, the data directory, the checkout, /tmp, /dev/shm, /run/lock and every other
world-writable place are out of reach whatever their permissions. Where the kernel supports it,
TCP is refused, and abstract Unix sockets and signals cannot leave the snippet's own processes.
Stdlib only (the fork server imports it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the generic syscall numbers (x86_64, arm64)
_RULESET_VERSION = 1 << 0
_PATH_BENEATH = 1
_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
TRUNCATE, IOCTL_DEV = 1 << 14, 1 << 15
READ = EXECUTE | READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a file may hold
# Every filesystem right each ABI version knows (v2 adds REFER, v3 TRUNCATE, v5 IOCTL_DEV).
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_TCP = (1 << 0) | (1 << 1)  # v4: bind and connect TCP
_SCOPES = (1 << 0) | (1 << 1)  # v6: abstract Unix sockets, signals
READABLE_SYSTEM = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/sys/devices/system/cpu")
DEVICES = {"/dev/null": READ_FILE | WRITE_FILE | TRUNCATE, "/dev/zero": READ_FILE, "/dev/urandom": READ_FILE,
           "/dev/random": READ_FILE, "/dev/full": READ_FILE | WRITE_FILE | TRUNCATE}  # fmt: skip


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))  # fmt: skip


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_RULESET_VERSION))
    return max(0, int(version))


def _fs_rights(abi: int) -> int:
    return _FS_RIGHTS[max(key for key in _FS_RIGHTS if key <= abi)]


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"landlock {what} failed: {os.strerror(error)}")
    return result


def restrict(workdir: str, readable: list[str]) -> int:
    """Confine this process and its future children; return the ABI version used (0: not available).

    `readable`: directories the snippet may read and execute besides the system's (the runtime).
    """
    abi = abi_version()
    if abi == 0:
        return 0
    everything = _fs_rights(abi)
    attr = _RulesetAttr(everything, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 4 else 8  # older kernels know only the first field
    ruleset = _check(_libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0), "create_ruleset")
    try:
        own_proc = os.path.realpath("/proc/self")  # /proc/<pid>: what it needs of /proc, not other processes
        rules = [(workdir, everything), (own_proc, READ), *((path, READ) for path in (*READABLE_SYSTEM, *readable))]
        rules += [(device, rights & everything) for device, rights in DEVICES.items()]
        for path, allowed in rules:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    if not os.path.isdir(path):
                        allowed &= FILE_RIGHTS
                    rule = _PathBeneath(allowed, fd)
                    _check(_libc.syscall(_ADD_RULE, ruleset, _PATH_BENEATH, ctypes.byref(rule), 0), f"add_rule {path}")
                finally:
                    os.close(fd)
        _check(_libc.prctl(_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_libc.syscall(_RESTRICT_SELF, ruleset, 0), "restrict_self")
    finally:
        os.close(ruleset)
    return abi
