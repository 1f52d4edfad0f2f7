"""Deleting what a snippet left, whatever it made of it. Stdlib only (the fork server imports it).

`remove_tree` walks with a stack, not recursion, so a snippet's 100,000-deep directory chain cannot
exhaust the interpreter's stack; past MAX_DEPTH it moves a deeper directory up to the tree's top, so
it never holds more than MAX_DEPTH open directories either. It opens every directory relative to its
parent with O_NOFOLLOW, so a symlink planted in the tree is unlinked, never followed; and the only
permissions it changes are those of directories inside the tree (a snippet may have made them
unwritable), never the tree's parent or anything outside it.
"""

from __future__ import annotations

import contextlib
import os

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 64


def _open_directory(name: str, parent_fd: int) -> int:
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except PermissionError:  # a directory of the tree the snippet made unreadable: it is ours to open
        os.chmod(name, 0o700, dir_fd=parent_fd)
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)


def _unlink(name: str, directory_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=directory_fd)
    except PermissionError:  # the directory holding it was made unwritable: make it writable again
        os.fchmod(directory_fd, 0o700)
        os.unlink(name, dir_fd=directory_fd)


def _move_up(name: str, directory_fd: int, top_fd: int, new_name: str) -> None:
    try:
        os.rename(name, new_name, src_dir_fd=directory_fd, dst_dir_fd=top_fd)
    except PermissionError:
        os.fchmod(directory_fd, 0o700)
        os.fchmod(top_fd, 0o700)
        os.rename(name, new_name, src_dir_fd=directory_fd, dst_dir_fd=top_fd)


def remove_tree(path: str) -> None:
    """Delete `path` (a file, a symlink or a directory tree) without recursion or following links.

    Raises OSError when something cannot be deleted; a missing path is not an error.
    """
    parent, name = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[tuple[int, int, str, list[str]]] = []  # (directory fd, its parent's fd, its name, names left)
    moved = 0
    try:
        try:
            os.unlink(name, dir_fd=parent_fd)  # the parent is not the tree's: its mode is never changed
            return
        except FileNotFoundError:
            return
        except IsADirectoryError:
            pass
        root_fd = _open_directory(name, parent_fd)
        stack.append((root_fd, parent_fd, name, os.listdir(root_fd)))
        while stack:
            directory_fd, above_fd, directory_name, names = stack[-1]
            if not names:
                stack.pop()
                os.close(directory_fd)
                os.rmdir(directory_name, dir_fd=above_fd)
                continue
            entry = names.pop()
            try:
                _unlink(entry, directory_fd)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                if len(stack) >= MAX_DEPTH:  # flatten: continue with it from the top, later
                    moved += 1
                    top_fd, top_names = stack[0][0], stack[0][3]
                    _move_up(entry, directory_fd, top_fd, f".autotraj-moved-{moved}")
                    top_names.append(f".autotraj-moved-{moved}")
                    continue
                child_fd = _open_directory(entry, directory_fd)
                stack.append((child_fd, directory_fd, entry, os.listdir(child_fd)))
    finally:
        for directory_fd, _, _, _ in stack:
            with contextlib.suppress(OSError):
                os.close(directory_fd)
        os.close(parent_fd)
