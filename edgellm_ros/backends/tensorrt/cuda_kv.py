"""The KV cache in device memory: KVCache's interface (kv_cache.py), on the GPU.

One buffer per layer for keys and one for values, [max_seq_len, KVH, D], allocated
once; TensorRT binds past = rows [0, P) and present = rows [P, P+T) by address.
Besides them, per layer, a ``scratch`` of ``scratch_rows`` rows: where present rows go
when rows [P, P+T) cannot be bound in place (TensorRT wants 256-byte aligned tensor
addresses, P * row_nbytes may not be) and in bucketed decode graphs (the present
address must not change from step to step); ``commit_scratch`` then copies them to
rows [P, P+T) of every layer in one launch.

``snapshot`` / ``restore`` copy rows [0, n) of every layer to / from one device
allocation (the prompt cache keeps those, opaque); ``move_rows`` is the EAGLE
compaction, every layer in one kernel launch.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ...errors import BackendError
from .cuda_kernels import device_kernels
from .cuda_rt import Device, DeviceBuffer, PinnedBuffer, Stream, copy_device, pointer_table


class DeviceSnapshot:
    """Rows [0, rows) of every layer's K and V, in one device allocation."""

    def __init__(self, rows: int, buffers: int, row_nbytes: int, dtype: np.dtype):
        self.rows = rows
        self.row_nbytes = row_nbytes
        self.dtype = dtype
        self.buffers = buffers                 # 2 * layers: keys first, then values
        self.data = DeviceBuffer(rows * row_nbytes * buffers, dtype)

    def part(self, i: int) -> int:
        """Address of buffer i's rows."""
        return self.data.ptr + i * self.rows * self.row_nbytes

    def to_host(self) -> Tuple[Tuple[np.ndarray, ...], Tuple[np.ndarray, ...]]:
        """KVCache.snapshot's form ((keys...), (values...)), each [rows, row elements] (tests)."""
        flat = self.data.download().view(self.dtype).reshape(self.buffers, self.rows, -1)
        half = self.buffers // 2
        return tuple(flat[:half]), tuple(flat[half:])


class DeviceKVCache:
    """Device-memory KV cache of a decoder (the TensorRT backend's)."""

    #: rows of the EAGLE compaction index buffer (the largest verify tree is far below)
    MAX_MOVE = 4096

    def __init__(self, device: Device, stream: Stream, num_layers: int, max_seq_len: int,
                 kv_heads: int, head_dim: int, dtype: np.dtype = np.dtype(np.float32),
                 scratch_rows: int = 1):
        self.device = device
        self.stream = stream
        self.kernels = device_kernels(device)
        self.dtype = np.dtype(dtype)
        self.shape = (max_seq_len, kv_heads, head_dim)
        self.max_seq_len = max_seq_len
        self.row_nbytes = kv_heads * head_dim * self.dtype.itemsize
        self.scratch_rows = scratch_rows
        self.keys: List[DeviceBuffer] = [DeviceBuffer.empty(self.shape, dtype) for _ in range(num_layers)]
        self.values: List[DeviceBuffer] = [DeviceBuffer.empty(self.shape, dtype) for _ in range(num_layers)]
        sshape = (scratch_rows, kv_heads, head_dim)
        self.scratch_keys = [DeviceBuffer.empty(sshape, dtype) for _ in range(num_layers)]
        self.scratch_values = [DeviceBuffer.empty(sshape, dtype) for _ in range(num_layers)]
        for b in self.keys + self.values + self.scratch_keys + self.scratch_values:
            b.zero(stream)   # masked rows of a bucketed step must hold finite values
        self._table = pointer_table(b.ptr for b in self.keys + self.values)
        self._scratch_table = pointer_table(b.ptr for b in self.scratch_keys + self.scratch_values)
        # compaction / commit arguments: host staging (pinned) -> device, stream-ordered
        self._src_host = PinnedBuffer((self.MAX_MOVE,), np.int32)
        self._src = DeviceBuffer.empty((self.MAX_MOVE,), np.int32)
        self._args_host = PinnedBuffer((4,), np.int32)
        self._args = DeviceBuffer.empty((4,), np.int32)
        stream.synchronize()

    # -- KVCache's interface ------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return 2 * len(self.keys) * self.max_seq_len * self.row_nbytes

    def snapshot_nbytes(self, rows: int) -> int:
        return 2 * len(self.keys) * rows * self.row_nbytes

    def snapshot(self, rows: int) -> DeviceSnapshot:
        """A device copy of rows [0, rows) of every layer (for the prompt cache)."""
        self._check_rows(rows)
        self.device.make_current()
        bufs = self.keys + self.values
        snap = DeviceSnapshot(rows, len(bufs), self.row_nbytes, self.dtype)
        n = rows * self.row_nbytes
        for i, b in enumerate(bufs):
            if n:
                copy_device(snap.part(i), b.ptr, n, self.stream)
        self.stream.synchronize()
        return snap

    def restore(self, snap: DeviceSnapshot) -> int:
        """Copy a snapshot back into rows [0, n); returns n."""
        bufs = self.keys + self.values
        if not isinstance(snap, DeviceSnapshot) or snap.buffers != len(bufs) \
                or snap.row_nbytes != self.row_nbytes:
            raise BackendError(f"snapshot {snap!r} was not taken from a KV cache of this shape")
        self._check_rows(snap.rows)
        self.device.make_current()
        n = snap.rows * self.row_nbytes
        for i, b in enumerate(bufs):
            if n:
                copy_device(b.ptr, snap.part(i), n, self.stream)
        self.stream.synchronize()
        return snap.rows

    def move_rows(self, src: np.ndarray, dst_start: int) -> None:
        """Compact rows: rows ``src`` -> dst_start.. in every layer (one kernel launch).

        Rows are copied in order, so a destination row must not be a source row of a
        later entry (true of EAGLE's accepted rows: increasing and >= their destination);
        anything else is refused rather than copied differently from KVCache.move_rows.
        """
        src = np.asarray(src, np.int64).reshape(-1)
        n = len(src)
        if n == 0:
            return
        if n > self.MAX_MOVE:
            raise BackendError(f"cannot move {n} rows at once (at most {self.MAX_MOVE})")
        if src.min() < 0 or src.max() >= self.max_seq_len or not 0 <= dst_start <= self.max_seq_len - n:
            raise BackendError(f"rows {src.tolist()} -> {dst_start} are outside the cache's "
                               f"{self.max_seq_len} rows")
        later = (src >= dst_start) & (src < dst_start + np.arange(n))
        if later.any():
            raise BackendError(f"rows {src.tolist()} -> {dst_start}: row {int(src[later][0])} would be "
                               "overwritten before it is read")
        self.device.make_current()
        self._src_host.array[:n] = src
        self._args_host.array[:2] = (n, dst_start)
        self._src.upload(self._src_host.array[:n], self.stream)
        self._args.upload(self._args_host.array, self.stream)
        self.kernels.move_rows(self._table.ptr, 2 * len(self.keys), self._src.ptr, self._args.ptr,
                               self.row_nbytes, self.stream)
        self.stream.synchronize()   # the pinned staging is reused by the next call

    # -- what the decoder uses ----------------------------------------------------
    def commit_scratch(self, args_ptr: int) -> None:
        """Enqueue the copy of scratch rows [0, n) to cache rows [p, p+n) of every layer.

        (n, p) are read from the device int32 array at ``args_ptr`` (so a
        captured graph replays with new values).
        """
        self.kernels.copy_rows(self._table.ptr, self._scratch_table.ptr, 2 * len(self.keys), args_ptr,
                               self.row_nbytes, self.scratch_rows, self.stream)

    def to_host(self) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """Every layer's K and V as NumPy arrays [max_seq_len, KVH, D] (tests, the self-test)."""
        self.device.make_current()
        self.stream.synchronize()
        return ([b.download() for b in self.keys], [b.download() for b in self.values])

    def load_host(self, keys: List[np.ndarray], values: List[np.ndarray]) -> None:
        """Fill the buffers from host arrays (tests, the self-test)."""
        self.device.make_current()
        self.stream.synchronize()
        for b, a in zip(self.keys + self.values, list(keys) + list(values)):
            b.upload(np.ascontiguousarray(a, self.dtype))

    def _check_rows(self, rows: int) -> None:
        if not 0 <= rows <= self.max_seq_len:
            raise BackendError(f"{rows} rows are outside the cache's {self.max_seq_len}")

    def close(self) -> None:
        for b in self.keys + self.values + self.scratch_keys + self.scratch_values:
            b.free()
        for b in (self._table, self._scratch_table, self._src, self._args):
            b.free()
        self._src_host.free()
        self._args_host.free()
