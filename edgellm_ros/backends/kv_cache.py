"""The KV cache: one preallocated buffer per layer for keys and one for values.

Shape per buffer: [max_seq_len, KVH, D]. Allocated once (at configure); the
backend binds rows [0, P) as the graph's past and rows [P, P+T) as its
present, so running a step writes the new keys and values in place.

``head_major=True`` lays each buffer out as [KVH, max_seq_len, D] instead: the
layout of ONNX Runtime's GroupQueryAttention, which is bound to the whole
buffer as both past and present and writes rows P..P+T-1 itself (the fused
CPU graph). "Rows" below are positions in either layout.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

Snapshot = Tuple[Tuple[np.ndarray, ...], Tuple[np.ndarray, ...]]


class KVCache:
    """Host-memory KV cache of a decoder (the ONNX Runtime backend's)."""

    def __init__(self, num_layers: int, max_seq_len: int, kv_heads: int, head_dim: int,
                 dtype: np.dtype = np.dtype(np.float32), head_major: bool = False):
        self.head_major = head_major
        shape = (kv_heads, max_seq_len, head_dim) if head_major else (max_seq_len, kv_heads, head_dim)
        self.keys: List[np.ndarray] = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.values: List[np.ndarray] = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.max_seq_len = max_seq_len
        self.row_nbytes = kv_heads * head_dim * np.dtype(dtype).itemsize

    @property
    def nbytes(self) -> int:
        return 2 * len(self.keys) * self.max_seq_len * self.row_nbytes

    def snapshot_nbytes(self, rows: int) -> int:
        """Bytes a snapshot of ``rows`` rows of every layer takes."""
        return 2 * len(self.keys) * rows * self.row_nbytes

    def snapshot(self, rows: int) -> Snapshot:
        """Copies of rows [0, rows) of every layer (for the prompt cache)."""
        if self.head_major:
            return (tuple(k[:, :rows].copy() for k in self.keys),
                    tuple(v[:, :rows].copy() for v in self.values))
        return (tuple(k[:rows].copy() for k in self.keys),
                tuple(v[:rows].copy() for v in self.values))

    def restore(self, snap: Snapshot) -> int:
        """Copy a snapshot back into rows [0, n); returns n."""
        keys, values = snap
        n = keys[0].shape[1 if self.head_major else 0]
        for dst, src in zip(self.keys + self.values, keys + values):
            if self.head_major:
                dst[:, :n] = src
            else:
                dst[:n] = src
        return n

    def move_rows(self, src: np.ndarray, dst_start: int) -> None:
        """Compact rows: copy rows ``src`` (indices) to dst_start.. in every layer."""
        end = dst_start + len(src)
        for buf in self.keys + self.values:
            if self.head_major:
                buf[:, dst_start:end] = buf[:, src]
            else:
                buf[dst_start:end] = buf[src]
