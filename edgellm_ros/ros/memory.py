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
