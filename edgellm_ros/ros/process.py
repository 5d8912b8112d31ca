"""How ``edgellm_node`` runs: one node, its executor, and the signals that end it.

rclpy's own SIGINT/SIGTERM handlers shut every context down at once, before a
node could answer its pending calls (a caller of /ask then waits forever, and
the worker's last messages fail with "publisher's context is invalid"). A
context's ``on_shutdown`` callbacks run after that, too late as well. So the
process installs its own handlers (``rclpy.init(signal_handler_options=NO)``)
and lets the node answer everything before the context goes.

A signal ends the process within :data:`EXIT_DEADLINE_S` seconds whatever the
node is doing. A configure that exports or loads an engine cannot be
interrupted (the export runs in native code), so once the deadline passes the
process leaves with ``os._exit`` after answering what it could (the configure
caller included: on_configure stops waiting for the load and fails); an export
cut short leaves nothing behind (its staging folder and lock file are removed
first, and nothing more is moved into place). The
lifecycle services run in a callback group of their own, and the executor has
threads to spare, so ``get_state`` and the parameter services answer while a
configure runs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, List, NoReturn, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from ..runtime.staging import discard_owned
from .memory import cap_arenas

#: Seconds from a SIGINT / SIGTERM to the end of the process, at the latest.
EXIT_DEADLINE_S = 1.5
#: Seconds after a first signal during which another one is taken as a repeat of it.
REPEAT_WINDOW_S = 1.0
#: Executor threads: a configure holds one for its whole length; get_state, the
#: parameter services, /ask and the action need the others.
MIN_EXECUTOR_THREADS = 4


def _leave(why: str = "") -> NoReturn:
    """End the process now (status 0), with the logs flushed; see run_node.

    An export still running in another thread is cut off: its staging folder
    and lock file are removed first (runtime/staging.discard_owned).
    """
    removed = discard_owned()
    if why:
        print(f"[edgellm_node] {why}" + (f"; removed {removed} unfinished export file(s)"
                                         if removed else ""), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


def run_node(make_node: Callable[[], Any], args: Optional[List[str]] = None) -> NoReturn:
    """Spin ``make_node()`` until its ``finalized`` future is done or a signal comes.

    The node must offer ``finalized`` (a Future) and ``close(why)``. SIGINT and
    SIGTERM (Ctrl-C, ``ros2 launch`` stopping) are handled here, not by rclpy:
    the executor keeps spinning while ``close`` answers every pending call and
    goal; only then is the context shut down. A second signal more than
    :data:`REPEAT_WINDOW_S` after the first ends the process at once, and whatever
    is still running :data:`EXIT_DEADLINE_S` seconds after the first (a configure
    exporting an engine, say) is left behind by ``os._exit``.
    The process then exits with status 0.
    """
    cap_arenas()    # before rclpy and the middleware start their threads (memory.py)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = make_node()
    executor = MultiThreadedExecutor(
        num_threads=max(MIN_EXECUTOR_THREADS, len(os.sched_getaffinity(0))))
    executor.add_node(node)
    stop = threading.Event()
    caught: List[str] = []

    first: List[float] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if first:
            # `ros2 launch` without a terminal forwards SIGINT to a process group that got it
            # already, systemd sends SIGTERM to the whole group: a repeat within the window is
            # the same stop (the watchdog bounds it); a later one, a user's, ends it at once
            if time.monotonic() - first[0] > REPEAT_WINDOW_S:
                os._exit(128 + signum)
            return
        first.append(time.monotonic())
        caught.append(signal.Signals(signum).name)
        watchdog = threading.Timer(EXIT_DEADLINE_S, _leave, args=(
            f"{caught[0]}: still busy after {EXIT_DEADLINE_S:g} s (a configure exporting or "
            "loading, or a call not yet answered); leaving without waiting",))
        watchdog.daemon = True
        watchdog.start()
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    node.finalized.add_done_callback(lambda _f: stop.set())
    spinner = threading.Thread(target=executor.spin, name="edgellm-executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(0.5) and spinner.is_alive():
            pass
        if caught:
            node.get_logger().info(f"{caught[0]}: answering pending requests, then exiting")
        node.close(f"shutting down ({caught[0]})" if caught else "shut down",
                   timeout=EXIT_DEADLINE_S if caught else None)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    # Everything is answered and closed. Leave without the interpreter's teardown, which
    # destroys native threads (DDS, ONNX Runtime's pools) in no fixed order: seen ending a
    # clean SIGINT exit in "terminate called without an active exception" (SIGABRT).
    _leave()
