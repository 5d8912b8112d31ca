"""NVRTC-compiled kernels of the TensorRT backend (device memory and launches: cuda_rt.py).

Kernels (compiled once per process and device by NVRTC for the device's own
compute capability), 4-byte ("_4") and 2-byte ("_2") element variants:

* ``gather_rows``: out[r] = table[ids[r]] (the embedding lookup; fp32 / fp16 tables);
  ids outside [0, V) give a zero row.
* ``move_rows``: in every buffer of a pointer table, rows src[0..n) -> dst..dst+n,
  one thread per (column, buffer), rows in order: the EAGLE KV compaction of all
  layers in one launch; n and dst are read from device memory, so a captured graph
  replays with new values.
* ``copy_rows``: rows [0, n) of each source buffer -> rows [dst, dst+n) of the
  matching destination buffer (present rows written to a scratch -> the cache).
* ``decode_mask``: the additive mask [Pb + 1] and position of a bucketed decode step
  (rows [P, Pb) of the bound past are hidden), P read from device memory.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from ...errors import BackendError
from ...contract import MASK_VALUE
from .cuda_rt import Device, DeviceBuffer, Stream, check, import_cuda

#: MASK_VALUE as a C float literal (the graphs' "drop this entry").
MASK_VALUE_TEXT = f"{float(MASK_VALUE)!r}f"

KERNEL_SOURCE = r"""
typedef unsigned int u32;
typedef unsigned short u16;

template <typename T>
__device__ void gather_rows(const T* table, const long long* ids, T* out, int width, long long vocab) {
    const int r = blockIdx.y;
    const long long id = ids[r];
    const bool ok = id >= 0 && id < vocab;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x)
        out[(long long)r * width + c] = ok ? table[id * width + c] : (T)0;
}

// args[0] = n rows, args[1] = first destination row. Each thread owns one column of one
// buffer and walks the rows in order, so a row is read before any later row overwrites it.
template <typename T>
__device__ void move_rows(T* const* bufs, const int* src, const int* args, int width) {
    T* buf = bufs[blockIdx.y];
    const int n = args[0], dst = args[1];
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x)
        for (int i = 0; i < n; ++i)
            buf[(long long)(dst + i) * width + c] = buf[(long long)src[i] * width + c];
}

// rows [0, args[0]) of src_bufs[b] -> rows [args[1], args[1] + args[0]) of dst_bufs[b]
template <typename T>
__device__ void copy_rows(T* const* dst_bufs, T* const* src_bufs, const int* args, int width) {
    const int n = args[0], dst = args[1];
    T* d = dst_bufs[blockIdx.y];
    const T* s = src_bufs[blockIdx.y];
    const long long total = (long long)n * width;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x)
        d[(long long)dst * width + e] = s[e];
}

extern "C" __global__ void gather_rows_4(const u32* t, const long long* ids, u32* o, int w, long long v)
{ gather_rows<u32>(t, ids, o, w, v); }
extern "C" __global__ void gather_rows_2(const u16* t, const long long* ids, u16* o, int w, long long v)
{ gather_rows<u16>(t, ids, o, w, v); }
extern "C" __global__ void move_rows_4(u32* const* b, const int* s, const int* a, int w)
{ move_rows<u32>(b, s, a, w); }
extern "C" __global__ void move_rows_2(u16* const* b, const int* s, const int* a, int w)
{ move_rows<u16>(b, s, a, w); }
extern "C" __global__ void copy_rows_4(u32* const* d, u32* const* s, const int* a, int w)
{ copy_rows<u32>(d, s, a, w); }
extern "C" __global__ void copy_rows_2(u16* const* d, u16* const* s, const int* a, int w)
{ copy_rows<u16>(d, s, a, w); }

// mask[j] = 0 for j < P and j == pb (the new token), MASK for P <= j < pb; pos[0] = P = args[1]
extern "C" __global__ void decode_mask(const int* args, float* mask, long long* pos, int pb) {
    const int p = args[1];
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j <= pb; j += gridDim.x * blockDim.x)
        mask[j] = (j < p || j == pb) ? 0.0f : MASK_VALUE;
    if (blockIdx.x == 0 && threadIdx.x == 0) pos[0] = p;
}
""".replace("MASK_VALUE", MASK_VALUE_TEXT)

KERNEL_NAMES = ("gather_rows_4", "gather_rows_2", "move_rows_4", "move_rows_2", "copy_rows_4",
                "copy_rows_2", "decode_mask")


def compile_kernels(arch: str, source: str = KERNEL_SOURCE) -> bytes:
    """NVRTC: ``source`` -> a cubin for ``arch`` (e.g. "sm_87", Jetson Orin). Needs no GPU."""
    _, nvrtc = import_cuda()
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), b"edgellm_kernels.cu", 0, [], []),
                 "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if int(res[0]) != 0:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * int(size)
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise BackendError(f"NVRTC cannot compile the kernels for {arch}: "
                               f"{log.decode(errors='replace').strip()}")
        size = int(check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize"))
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class Kernels:
    """The module of KERNEL_SOURCE loaded on a device; ``launch`` enqueues one kernel."""

    BLOCK = 256

    def __init__(self, device: Device):
        self.cu = cu = import_cuda()[0]
        self.cubin = compile_kernels(device.sm)
        self.module = check(cu.cuModuleLoadData(self.cubin), "cuModuleLoadData")
        self.functions = {n: check(cu.cuModuleGetFunction(self.module, n.encode()),
                                   f"cuModuleGetFunction({n})") for n in KERNEL_NAMES}

    def launch(self, name: str, grid: Tuple[int, int], args: Sequence[Any], stream: Stream) -> None:
        """``args``: NumPy scalars of the kernel's parameter types (np.uint64 for pointers)."""
        holders = [np.array(a) for a in args]   # kept alive until cuLaunchKernel returns
        params = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
        check(self.cu.cuLaunchKernel(self.functions[name], max(grid[0], 1), max(grid[1], 1), 1,
                                     self.BLOCK, 1, 1, 0, stream.handle, params.ctypes.data, 0),
              f"cuLaunchKernel({name})")

    def _cols(self, width: int, rows: int = 1) -> int:
        return min(-(-width // self.BLOCK), max(1, 4096 // max(rows, 1)))

    @staticmethod
    def _elem(row_nbytes: int) -> Tuple[str, int]:
        if row_nbytes % 4 == 0:
            return "4", row_nbytes // 4
        if row_nbytes % 2 == 0:
            return "2", row_nbytes // 2
        raise BackendError(f"rows of {row_nbytes} bytes are neither 4- nor 2-byte words")

    # -- the operations -----------------------------------------------------------
    def gather_rows(self, table: DeviceBuffer, ids_ptr: int, n: int, out_ptr: int, stream: Stream) -> None:
        """out[r] = table[ids[r]] for r < n; table is [V, H] of a 4- or 2-byte dtype."""
        vocab = table.shape[0]
        suffix, width = self._elem(table.nbytes // vocab)
        self.launch("gather_rows_" + suffix, (self._cols(width, n), n),
                    [np.uint64(table.ptr), np.uint64(ids_ptr), np.uint64(out_ptr), np.int32(width),
                     np.int64(vocab)], stream)

    def move_rows(self, table_ptr: int, n_bufs: int, src_ptr: int, args_ptr: int, row_nbytes: int,
                  stream: Stream) -> None:
        """In each of the ``n_bufs`` buffers of the device pointer table: rows src[i] -> dst + i."""
        suffix, width = self._elem(row_nbytes)
        self.launch("move_rows_" + suffix, (self._cols(width), n_bufs),
                    [np.uint64(table_ptr), np.uint64(src_ptr), np.uint64(args_ptr), np.int32(width)], stream)

    def copy_rows(self, dst_table_ptr: int, src_table_ptr: int, n_bufs: int, args_ptr: int,
                  row_nbytes: int, max_rows: int, stream: Stream) -> None:
        suffix, width = self._elem(row_nbytes)
        self.launch("copy_rows_" + suffix, (self._cols(width * max_rows), n_bufs),
                    [np.uint64(dst_table_ptr), np.uint64(src_table_ptr), np.uint64(args_ptr),
                     np.int32(width)], stream)

    def decode_mask(self, args_ptr: int, mask_ptr: int, pos_ptr: int, pb: int, stream: Stream) -> None:
        self.launch("decode_mask", (self._cols(pb + 1), 1),
                    [np.uint64(args_ptr), np.uint64(mask_ptr), np.uint64(pos_ptr), np.int32(pb)], stream)


_LOADED: Dict[int, Kernels] = {}
_LOADED_LOCK = threading.Lock()


def device_kernels(device: Device) -> Kernels:
    """The device's compiled kernels (NVRTC, once per device and process)."""
    with _LOADED_LOCK:
        k = _LOADED.get(device.ordinal)
        if k is None:
            k = _LOADED[device.ordinal] = Kernels(device)
    return k
