"""Folders written whole or not at all, safe between processes sharing a cache.

An export writes into a staging folder (a hidden sibling ``.<prefix>-XXXX``)
and renames it into place only when complete, so a failure, an exception,
SIGINT or SIGKILL never leaves a half-written engine where the node looks.
Each staging folder holds a lock file that its writer keeps locked
(``fcntl.flock``): the kernel releases the lock when the writer dies, so a
later export knows a staging folder whose lock it can take is a killed
process's leftover, and removes it. Two processes exporting the same folder
take :func:`folder_lock` in turn: the second waits, then finds the folder
current and uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from typing import Iterator

#: The lock file inside a staging folder, held by the process writing it.
OWNER = ".owner.lock"
#: A staging folder without its lock file is left alone this long (its writer may
#: be between mkdtemp and taking the lock).
GRACE_S = 60.0


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold the exclusive lock ``<folder>.lock`` (a sibling file); blocks while another process holds it."""
    path = os.path.abspath(folder).rstrip(os.sep) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the lock


def _abandoned(path: str) -> bool:
    """Whether the staging folder ``path`` has no living writer."""
    lock = os.path.join(path, OWNER)
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        try:
            return time.time() - os.stat(path).st_mtime > GRACE_S
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False   # its writer is alive
    finally:
        os.close(fd)
    return True


def remove_abandoned(parent: str, prefix: str) -> int:
    """Remove the staging folders ``.<prefix>-*`` in ``parent`` whose writer died; return how many."""
    removed = 0
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(parent, name)
        if name.startswith(f".{prefix}-") and os.path.isdir(path) and not os.path.islink(path) \
                and _abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


@contextlib.contextmanager
def staging_folder(parent: str, prefix: str) -> Iterator[str]:
    """A new, locked staging folder ``parent/.<prefix>-XXXX``, removed on any exception.

    Abandoned staging folders of the same prefix are removed first. The
    caller renames the folder (or its files) into place before leaving the
    block; whatever is left is removed when the block ends.
    """
    os.makedirs(parent, exist_ok=True)
    remove_abandoned(parent, prefix)
    tmp = tempfile.mkdtemp(prefix=f".{prefix}-", dir=parent)
    fd = -1
    try:
        fd = os.open(os.path.join(tmp, OWNER), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: str, folder: str) -> None:
    """Move the complete staging folder ``tmp`` to ``folder``, replacing an old one.

    The old folder is first renamed aside (a rename, not a removal, so a reader
    never sees it half deleted), then removed. Call with :func:`folder_lock` held.
    """
    try:
        os.remove(os.path.join(tmp, OWNER))
    except FileNotFoundError:
        pass
    if os.path.lexists(folder):
        aside = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(folder)))
        os.replace(folder, os.path.join(aside, "old"))
        os.replace(tmp, folder)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, folder)
