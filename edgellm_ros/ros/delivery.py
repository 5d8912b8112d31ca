"""Answers that reach a caller whose discovery is not finished yet.

With Fast DDS (the default middleware), a service sends its response only
once the caller's reply reader is matched, waiting at most the writer's
``max_blocking_time`` (100 ms by default); past that, rmw returns a timeout,
rclpy prints ``failed to send response (timeout)`` (once per process) and
the answer is gone: the caller waits forever. It happens to a client created
just before its call, on a loaded machine: ten new clients asking at once
on 2 busy cores lost one answer of fifty (benchmarks/reliability_bench.py).
A timeout there means the match is not complete *yet*, and upstream's advice
is to send again (ros2/rmw_fastrtps#467, #704): :func:`deliver_retrying`
does, for up to :data:`DELIVERY_WINDOW_S`.

rclpy reports the timeout only as a RuntimeWarning raised inside the send
call, on the sending thread; :func:`install` makes that warning always
issued and notes it per thread (other warnings pass on unchanged).
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any, Callable, Optional

#: The start of rclpy's warning when the middleware could not deliver a response.
DROPPED = "failed to send response (timeout)"
#: How long a response is retried for a caller still being discovered (seconds).
DELIVERY_WINDOW_S = 10.0
#: Pause between two tries (on top of the middleware's own wait).
RETRY_PAUSE_S = 0.02

_seen = threading.local()
_installed = threading.Lock()
_original: Optional[Callable[..., Any]] = None


def _note(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if str(message).startswith(DROPPED):
        _seen.dropped = True
        return
    assert _original is not None
    _original(message, category, filename, lineno, file, line)


def install() -> None:
    """Note every dropped-response warning on the thread that sends (idempotent)."""
    global _original
    with _installed:
        if warnings.showwarning is _note:
            return
        _original = warnings.showwarning
        warnings.filterwarnings("always", message=r"failed to send response \(timeout\)",
                                category=RuntimeWarning)
        warnings.showwarning = _note


def deliver_retrying(service: Any, log: Callable[[str], object],
                     window_s: float = DELIVERY_WINDOW_S) -> None:
    """Make ``service`` send each response again while the middleware says the caller is not matched yet.

    Replaces the service object's ``send_response`` (what rclpy's executor
    calls). Each failed try costs the middleware's wait (100 ms); after
    ``window_s`` the answer is given up, with a log line naming the request.
    """
    install()
    send = service.send_response

    def send_response(response: Any, header: Any) -> None:
        deadline = time.monotonic() + window_s
        tries = 0
        while True:
            _seen.dropped = False
            send(response, header)
            tries += 1
            if not getattr(_seen, "dropped", False):
                if tries > 1:
                    log(f"{service.srv_name}: response delivered on try {tries} (the caller was "
                        "still being discovered)")
                return
            if time.monotonic() >= deadline:
                log(f"{service.srv_name}: response not delivered after {tries} tries in "
                    f"{window_s:g} s: the caller's reply reader never matched")
                return
            time.sleep(RETRY_PAUSE_S)

    service.send_response = send_response
