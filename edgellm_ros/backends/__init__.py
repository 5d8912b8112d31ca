"""Inference backends, behind the contract of ``edgellm_ros.contract``.

Each imports its vendor library lazily, so a missing library is a clear
BackendUnavailable error and not an ImportError at start. ``open_backend`` is
the one place a backend is chosen: the engine, the vision pipeline and the
self-test all receive what it returns.
"""

from __future__ import annotations

from ..contract import Backend, Log
from ..errors import BackendUnavailable

#: What ``open_backend`` accepts: "auto" picks TensorRT when it can run here.
BACKEND_NAMES = ("auto", "onnxruntime", "tensorrt")


def resolve_backend(requested: str, log: Log = print) -> str:
    """Resolve "auto" to a concrete backend name and say why (BackendUnavailable if it cannot run)."""
    if requested == "onnxruntime":
        return requested
    if requested in ("auto", "tensorrt"):
        from .tensorrt.engines import tensorrt_availability
        ok, reason = tensorrt_availability()
        if ok:
            log(f"backend {requested} -> tensorrt: {reason}")
            return "tensorrt"
        if requested == "tensorrt":
            raise BackendUnavailable(f"backend 'tensorrt' is unavailable: {reason}")
        log(f"backend auto -> onnxruntime: {reason}")
        return "onnxruntime"
    raise BackendUnavailable(f"unknown backend {requested!r} (expected one of {', '.join(BACKEND_NAMES)})")


def open_backend(requested: str, num_threads: int = 0, int4_compute: str = "int8",
                 log: Log = print) -> Backend:
    """The backend ``requested`` names ("auto": TensorRT where it can run, else ONNX Runtime).

    num_threads and int4_compute configure ONNX Runtime's sessions; TensorRT ignores them.
    """
    name = resolve_backend(requested, log)
    if name == "tensorrt":
        from .tensorrt import TrtBackend
        return TrtBackend(log)
    from .onnxruntime import OrtBackend
    return OrtBackend(num_threads, int4_compute, log)
