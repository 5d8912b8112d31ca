"""Folders written whole or not at all, safe between processes sharing a cache.

An export writes into a staging folder (a hidden sibling ``.<prefix>-XXXX``)
and renames it into place only when complete, so a failure, an exception,
SIGINT or SIGKILL never leaves a half-written engine where the node looks.
Each staging folder holds a lock file that its writer keeps locked
(``fcntl.flock``): the kernel releases the lock when the writer dies, so a
later export knows a staging folder whose lock it can take is a killed
process's leftover, and removes it. Two processes exporting the same folder
take :func:`folder_lock` in turn: the second waits, then finds the folder
current and uses it; the lock file is removed by its last holder.

A process that must leave mid-export without unwinding (``os._exit`` at a
signal's deadline, ros/process.py) calls :func:`discard_owned` first: its
staging folders and lock files go, and no export of it can move files into
place afterwards (moves happen inside :func:`commit`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
from typing import Iterator, Set

#: The lock file inside a staging folder, held by the process writing it.
OWNER = ".owner.lock"
#: A staging folder without its lock file is left alone this long (its writer may
#: be between mkdtemp and taking the lock).
GRACE_S = 60.0

#: Staging folders and lock files this process holds (discard_owned removes them).
_owned: Set[str] = set()
#: Guards _owned and _leaving; held while an export moves files into place (commit).
_owned_lock = threading.RLock()
_leaving = False


class Discarded(RuntimeError):
    """The process is leaving (discard_owned ran): nothing more is moved into place."""


def _own(path: str) -> None:
    with _owned_lock:
        _owned.add(path)


def _disown(path: str) -> None:
    with _owned_lock:
        _owned.discard(path)


@contextlib.contextmanager
def commit() -> Iterator[None]:
    """Hold this block while moving a finished export into place.

    :func:`discard_owned` waits for it to end, and once it has run the block
    raises :class:`Discarded` instead of starting: a process leaving mid-export
    never leaves half-moved files.
    """
    with _owned_lock:
        if _leaving:
            raise Discarded("the process is leaving: export abandoned")
        yield


def discard_owned() -> int:
    """Remove this process's staging folders and lock files now; return how many.

    For a process about to leave with ``os._exit`` while an export may still
    run in another thread: what it wrote is removed, and a later move into
    place raises Discarded (see commit).
    """
    global _leaving
    with _owned_lock:
        _leaving = True
        paths = sorted(_owned, reverse=True)
        _owned.clear()
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return len(paths)


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold the exclusive lock ``<folder>.lock`` (a sibling file); blocks while another process holds it.

    The holder removes the file when it is done, while still holding it; a
    waiter that then gets the lock finds its file gone (or another one in its
    place) and starts over on the file now there, so at most one process at a
    time holds the lock of the current file, and none is left on disk.
    """
    path = os.path.abspath(folder).rstrip(os.sep) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)   # removed by the holder before us: take the file now at the path
    _own(path)
    try:
        yield
    finally:
        _disown(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)   # while still held: see the docstring
        os.close(fd)          # releases the lock


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
    _own(tmp)
    fd = -1
    try:
        fd = os.open(os.path.join(tmp, OWNER), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        _disown(tmp)


def publish(tmp: str, folder: str) -> None:
    """Move the complete staging folder ``tmp`` to ``folder``, replacing an old one.

    The old folder is first renamed aside (a rename, not a removal, so a reader
    never sees it half deleted), then removed. Call with :func:`folder_lock` held.
    Raises Discarded when the process is leaving (see commit).
    """
    with commit():
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
