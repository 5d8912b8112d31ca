"""A thin layer over cuda-python: device memory, streams, events, NVRTC kernels, CUDA graphs.

Only this module (and the backends built on it) imports ``cuda.bindings``, lazily:
``import_cuda()`` raises BackendUnavailable naming why when cuda-python is missing
(or only its pre-12.6 ``cuda.cuda`` spelling is there, which is accepted too).
Every driver / NVRTC call goes through ``check``, which turns an error code into
BackendError naming the call and CUDA's own error name and text.

Works with cuda-python 12.x (JetPack 6: CUDA 12.2) and 13.x (the H100 machine has
cuda-bindings 13.3.1): only calls whose signature is the same in both are used
(the primary context instead of cuCtxCreate, cuGraphInstantiate(graph, flags)).

Kernels: cuda_kernels.py (device_kernels(device) compiles and loads them once per device).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable, Dict, Hashable, Iterable, Optional, Sequence, Tuple

import numpy as np

from ...errors import BackendError, BackendUnavailable

_CU: Any = None
_NVRTC: Any = None


def import_cuda() -> Tuple[Any, Any]:
    """(driver, nvrtc) modules of cuda-python; BackendUnavailable saying why when missing."""
    global _CU, _NVRTC
    if _CU is not None:
        return _CU, _NVRTC
    reasons = []
    for mod_names in (("cuda.bindings.driver", "cuda.bindings.nvrtc"), ("cuda.cuda", "cuda.nvrtc")):
        try:
            import importlib
            drv = importlib.import_module(mod_names[0])
            nvrtc = importlib.import_module(mod_names[1])
        except Exception as exc:  # ImportError, or OSError from a missing library
            reasons.append(f"{mod_names[0]}: {type(exc).__name__}: {exc}")
            continue
        _CU, _NVRTC = drv, nvrtc
        return drv, nvrtc
    raise BackendUnavailable("cuda-python cannot be imported (" + "; ".join(reasons) + ")")


def bindings_version() -> str:
    """Version of the cuda-python bindings (cuda.bindings.__version__ or cuda.__version__)."""
    import_cuda()
    try:
        import cuda.bindings as b
        return str(getattr(b, "__version__", "?"))
    except ImportError:
        import cuda
        return str(getattr(cuda, "__version__", "?"))


def _err_text(err: Any) -> str:
    cu, nvrtc = _CU, _NVRTC
    try:
        if type(err).__name__ == "nvrtcResult":
            return f"{err.name}: {nvrtc.nvrtcGetErrorString(err)[1].decode()}"
        name = cu.cuGetErrorName(err)[1]
        text = cu.cuGetErrorString(err)[1]
        return f"{name.decode() if name else err}: {text.decode() if text else ''}"
    except Exception:
        return str(err)


def check(ret: Any, what: str) -> Any:
    """Unwrap a cuda-python result tuple: the value(s) after the error code, or BackendError."""
    err = ret[0] if isinstance(ret, tuple) else ret
    if int(err) != 0:
        raise BackendError(f"{what} failed: {_err_text(err)}")
    if not isinstance(ret, tuple) or len(ret) == 1:
        return None
    return ret[1] if len(ret) == 2 else ret[1:]


def gpu_count() -> Tuple[int, str]:
    """(number of CUDA devices, reason when 0): never raises."""
    try:
        cu, _ = import_cuda()
    except BackendUnavailable as exc:
        return 0, str(exc)
    try:
        check(cu.cuInit(0), "cuInit")
        n = int(check(cu.cuDeviceGetCount(), "cuDeviceGetCount"))
    except Exception as exc:  # RuntimeError "Failed to dlopen libcuda.so.1" when no driver
        return 0, f"no CUDA driver or device ({type(exc).__name__}: {exc})"
    return n, "" if n else "the CUDA driver reports no device"


# ---------------------------------------------------------------- device, memory, streams

class Device:
    """One GPU and its primary context (the one the CUDA runtime, and TensorRT, use)."""

    _open: Dict[int, "Device"] = {}
    _lock = threading.Lock()

    def __init__(self, ordinal: int):
        cu, _ = import_cuda()
        check(cu.cuInit(0), "cuInit")
        count = int(check(cu.cuDeviceGetCount(), "cuDeviceGetCount"))
        if not 0 <= ordinal < count:
            raise BackendUnavailable(f"CUDA device {ordinal} does not exist ({count} found)")
        self.ordinal = ordinal
        self.handle = check(cu.cuDeviceGet(ordinal), "cuDeviceGet")
        self.name = check(cu.cuDeviceGetName(256, self.handle), "cuDeviceGetName").split(b"\0")[0].decode()
        attr = cu.CUdevice_attribute
        self.capability = (
            int(check(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                              self.handle), "cuDeviceGetAttribute")),
            int(check(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                              self.handle), "cuDeviceGetAttribute")))
        self.total_memory = int(check(cu.cuDeviceTotalMem(self.handle), "cuDeviceTotalMem"))
        self.driver_version = int(check(cu.cuDriverGetVersion(), "cuDriverGetVersion"))
        self.context = check(cu.cuDevicePrimaryCtxRetain(self.handle), "cuDevicePrimaryCtxRetain")
        self.make_current()

    @classmethod
    def get(cls, ordinal: int = 0) -> "Device":
        """The process-wide Device of ``ordinal`` (its context made current in this thread)."""
        with cls._lock:
            dev = cls._open.get(ordinal)
            if dev is None:
                dev = cls._open[ordinal] = Device(ordinal)
        dev.make_current()
        return dev

    def make_current(self) -> None:
        """CUDA contexts are per thread: call before driver calls from a new thread."""
        check(_CU.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "compute_capability": f"{self.capability[0]}.{self.capability[1]}",
                "total_memory_mib": self.total_memory >> 20, "driver_version": self.driver_version}


class DeviceBuffer:
    """Device memory allocated once (cuMemAlloc: 256-byte aligned); ``ptr`` is its address."""

    def __init__(self, nbytes: int, dtype: Any = np.float32, shape: Optional[Sequence[int]] = None):
        if nbytes < 0:
            raise BackendError(f"cannot allocate {nbytes} bytes")
        self.nbytes = int(nbytes)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape) if shape is not None else (self.nbytes // self.dtype.itemsize,)
        self._mem = check(_CU.cuMemAlloc(max(self.nbytes, 1)), f"cuMemAlloc({self.nbytes} bytes)")
        self.ptr = int(self._mem)

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: Any = np.float32) -> "DeviceBuffer":
        dt = np.dtype(dtype)
        return cls(int(np.prod(shape, dtype=np.int64)) * dt.itemsize, dt, shape)

    @classmethod
    def from_host(cls, array: np.ndarray, stream: Optional["Stream"] = None) -> "DeviceBuffer":
        """A device copy of ``array`` (synchronous unless a stream is given)."""
        a = np.ascontiguousarray(array)
        buf = cls.empty(a.shape, a.dtype)
        buf.upload(a, stream)
        return buf

    def upload(self, array: np.ndarray, stream: Optional["Stream"] = None, offset: int = 0) -> None:
        """Host -> device at byte ``offset``.

        Async on ``stream`` (the host memory must then be pinned or kept alive
        and unchanged until the stream passes this point).
        """
        a = np.ascontiguousarray(array)
        self._check_range(offset, a.nbytes)
        if stream is None:
            check(_CU.cuMemcpyHtoD(self.ptr + offset, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
        else:
            check(_CU.cuMemcpyHtoDAsync(self.ptr + offset, a.ctypes.data, a.nbytes, stream.handle),
                  "cuMemcpyHtoDAsync")

    def download(self, out: Optional[np.ndarray] = None, stream: Optional["Stream"] = None,
                 offset: int = 0) -> np.ndarray:
        """Device -> host (into ``out`` when given, which must be pinned for a truly async copy)."""
        if out is None:
            out = np.empty(self.shape, self.dtype)
        if not out.flags.c_contiguous:
            raise BackendError("download target must be C-contiguous")
        self._check_range(offset, out.nbytes)
        if stream is None:
            check(_CU.cuMemcpyDtoH(out.ctypes.data, self.ptr + offset, out.nbytes), "cuMemcpyDtoH")
        else:
            check(_CU.cuMemcpyDtoHAsync(out.ctypes.data, self.ptr + offset, out.nbytes, stream.handle),
                  "cuMemcpyDtoHAsync")
        return out

    def zero(self, stream: "Stream") -> None:
        check(_CU.cuMemsetD8Async(self.ptr, 0, self.nbytes, stream.handle), "cuMemsetD8Async")

    def _check_range(self, offset: int, n: int) -> None:
        if offset < 0 or offset + n > self.nbytes:
            raise BackendError(f"copy of {n} bytes at offset {offset} overruns a {self.nbytes}-byte buffer")

    def free(self) -> None:
        if self.ptr:
            self.ptr = 0
            try:
                _CU.cuMemFree(self._mem)
            except Exception:
                pass

    def __del__(self) -> None:
        self.free()


def copy_device(dst: int, src: int, nbytes: int, stream: "Stream") -> None:
    """Device -> device copy of ``nbytes`` between raw addresses, on ``stream``."""
    check(_CU.cuMemcpyDtoDAsync(dst, src, nbytes, stream.handle), "cuMemcpyDtoDAsync")


class PinnedBuffer:
    """Page-locked host memory (cuMemAllocHost) seen as a NumPy array: async-copy staging."""

    def __init__(self, shape: Sequence[int], dtype: Any = np.float32):
        dt = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dt.itemsize, 1)
        self.addr = int(check(_CU.cuMemAllocHost(nbytes), f"cuMemAllocHost({nbytes} bytes)"))
        raw = (ctypes.c_uint8 * nbytes).from_address(self.addr)
        self.array = np.frombuffer(raw, np.uint8)[:int(np.prod(shape, dtype=np.int64)) * dt.itemsize] \
            .view(dt).reshape(tuple(shape))
        self.array[...] = 0

    def free(self) -> None:
        if self.addr:
            addr, self.addr = self.addr, 0
            self.array = None
            try:
                _CU.cuMemFreeHost(addr)
            except Exception:
                pass

    def __del__(self) -> None:
        self.free()


class Stream:
    """A non-blocking stream (TensorRT wants one that is not the legacy default stream)."""

    def __init__(self) -> None:
        self.stream = check(_CU.cuStreamCreate(_CU.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        self.handle = int(self.stream)

    def synchronize(self) -> None:
        check(_CU.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def destroy(self) -> None:
        if self.handle:
            self.handle = 0
            try:
                _CU.cuStreamDestroy(self.stream)
            except Exception:
                pass


class Event:
    """A CUDA event: ordering and timing (elapsed_ms) on the GPU's clock."""

    def __init__(self) -> None:
        self.event = check(_CU.cuEventCreate(_CU.CUevent_flags.CU_EVENT_DEFAULT), "cuEventCreate")

    def record(self, stream: Stream) -> None:
        check(_CU.cuEventRecord(self.event, stream.handle), "cuEventRecord")

    def synchronize(self) -> None:
        check(_CU.cuEventSynchronize(self.event), "cuEventSynchronize")

    def elapsed_ms(self, since: "Event") -> float:
        return float(check(_CU.cuEventElapsedTime(since.event, self.event), "cuEventElapsedTime"))


def pointer_table(buffers: Iterable[int]) -> DeviceBuffer:
    """A device array of addresses (uint64), for the kernels that walk every layer at once."""
    return DeviceBuffer.from_host(np.array(list(buffers), dtype=np.uint64))


# ---------------------------------------------------------------- CUDA graphs

class GraphCache:
    """CUDA graphs of launch sequences, captured once per key and replayed.

    ``run(key, enqueue)`` replays the graph of ``key``, capturing ``enqueue(stream)``
    the first time. When capture fails (an operation in ``enqueue`` cannot be captured),
    the key is remembered as uncapturable, ``log`` says why once, and ``enqueue`` runs
    plainly (now and on later calls with that key). With ``warmup`` a key's first call
    runs plainly and capture happens at its second (TensorRT does deferred work at the
    first enqueue after a shape change, which must not end up in a graph).
    Returns True when a graph ran.
    """

    def __init__(self, stream: Stream, log: Callable[[str], object] = print, max_graphs: int = 256):
        self.stream = stream
        self.log = log
        self.max_graphs = max_graphs
        self.graphs: Dict[Hashable, Tuple[Any, Any]] = {}
        self.failed: Dict[Hashable, str] = {}
        self.warm: set = set()
        self.replays = 0
        self.captures = 0

    def capture(self, enqueue: Callable[[Stream], None]) -> Tuple[Any, Any]:
        """Record ``enqueue`` on the stream into a graph and instantiate it (nothing executes)."""
        mode = _CU.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        check(_CU.cuStreamBeginCapture(self.stream.stream, mode), "cuStreamBeginCapture")
        try:
            enqueue(self.stream)
        except BaseException:
            _CU.cuStreamEndCapture(self.stream.stream)   # leaves capture mode; the graph is dropped
            raise
        graph = check(_CU.cuStreamEndCapture(self.stream.stream), "cuStreamEndCapture")
        try:
            exe = check(_CU.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        except BackendError:
            _CU.cuGraphDestroy(graph)
            raise
        return graph, exe

    def run(self, key: Hashable, enqueue: Callable[[Stream], None], warmup: bool = False) -> bool:
        entry = self.graphs.get(key)
        if entry is None and warmup and key not in self.warm:
            self.warm.add(key)
            enqueue(self.stream)
            return False
        if entry is None and key not in self.failed and len(self.graphs) < self.max_graphs:
            try:
                entry = self.graphs[key] = self.capture(enqueue)
                self.captures += 1
            except Exception as exc:
                self.failed[key] = str(exc)
                self.log(f"CUDA graph capture of {key} failed, running it without a graph: {exc}")
        if entry is None:
            enqueue(self.stream)
            return False
        check(_CU.cuGraphLaunch(entry[1], self.stream.handle), "cuGraphLaunch")
        self.replays += 1
        return True

    def clear(self) -> None:
        for graph, exe in self.graphs.values():
            _CU.cuGraphExecDestroy(exe)
            _CU.cuGraphDestroy(graph)
        self.graphs.clear()
        self.failed.clear()
        self.warm.clear()
