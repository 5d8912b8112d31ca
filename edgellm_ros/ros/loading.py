"""A configure that a signal can end: the engine loads in a thread of its own.

An export runs in native code for tens of seconds and cannot be interrupted.
Run inside ``on_configure`` itself, it would keep the lifecycle transition,
and with it the caller of ``change_state`` (``ros2 lifecycle set``, a launch
file), unanswered until the process is killed. :func:`run_unless` lets
``on_configure`` stop waiting as soon as the node closes, answer the caller
(configure failed, with the reason), and leave the load to finish or to be
cut off with the process; an engine that still arrives is closed.
"""

from __future__ import annotations

import threading
from typing import Callable, List, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """The wait was given up (the abort event was set) before the work ended."""


def run_unless(work: Callable[[], T], abort: threading.Event, discard: Callable[[T], object],
               name: str = "edgellm-configure", poll_s: float = 0.05) -> T:
    """``work()``'s result (or its exception), or Interrupted as soon as ``abort`` is set.

    ``work`` runs in a daemon thread. Once this has raised Interrupted, the
    result that work() still returns goes to ``discard`` (an engine: closed).
    """
    cond = threading.Condition()
    results: List[T] = []
    errors: List[BaseException] = []
    given_up = [False]

    def target() -> None:
        try:
            result = work()
        except BaseException as exc:   # handed to the waiting caller, re-raised there
            with cond:
                errors.append(exc)
                cond.notify_all()
            return
        with cond:
            late = given_up[0]
            if not late:
                results.append(result)
                cond.notify_all()
        if late:
            discard(result)

    threading.Thread(target=target, name=name, daemon=True).start()
    with cond:
        while not (results or errors):
            if abort.is_set():
                given_up[0] = True
                raise Interrupted()
            cond.wait(poll_s)
    if errors:
        raise errors[0]
    return results[0]
