"""glibc heap settings that keep a model-sized heap from staying resident.

The node loads and frees engines of hundreds of MiB across configure/cleanup
cycles, on whichever executor thread takes the transition.
"""

from __future__ import annotations

import ctypes


def trim_heap() -> None:
    """Give freed heap pages back to the system.

    glibc keeps freed memory in per-thread arenas, and configure runs on
    whichever executor thread takes the transition: without this, each
    configure/cleanup on a new thread leaves a model-sized heap resident.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve every allocation of ``nbytes`` or more with its own mmap, returned on free.

    glibc raises its mmap threshold each time a large mmapped block is freed
    (up to 32 MiB), after which model-sized buffers (ONNX Runtime's prepacked
    INT4 weights, KV caches) come from the heap and stay resident across
    configure/cleanup cycles. A fixed
    threshold keeps them out of the heap.
    """
    try:
        ctypes.CDLL(None).mallopt(-3, nbytes)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def cap_arenas(count: int = 1) -> None:
    """Let glibc make at most ``count`` malloc arenas (M_ARENA_MAX) for the threads made later.

    glibc gives threads arenas of their own, and configure and cleanup run on whichever
    executor thread takes the transition: the freed memory of an engine then stays behind
    in whichever arena held it, where malloc_trim cannot return all of it. Measured over
    40 configure/cleanup cycles of the default node in its own process: with the default
    arenas, anonymous memory jumped by 20-65 MiB for one to ten cycles at a time and came
    back; with one arena it stayed flat (228.8 -> 232.4 MiB), decoding as fast (160.3 and
    152.6 against 165.5 and 151.4 tokens/s, alternating runs). The node's threads allocate
    little: ONNX Runtime keeps its own arena and scratch buffers.

    glibc fixes the limit when the first thread asks for an arena, so this must run
    before any thread is made: the ``edgellm_node`` executable calls it first
    (CMakeLists.txt), and run_node again (``python -m edgellm_ros.ros.node``), where it
    takes effect only if no thread has asked yet. A node made in a process of yours is
    left to that process's settings: MALLOC_ARENA_MAX=1 in its environment does the same.
    """
    try:
        ctypes.CDLL(None).mallopt(-8, count)   # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass
