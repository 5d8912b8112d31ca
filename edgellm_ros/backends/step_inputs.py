"""The per-step inputs every decoder backend fills the same way (positions, mask, logits index).

Host-side NumPy only: the backends bind or copy the filled buffers themselves.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ..errors import BackendError, ContextFull
from ..contract import MASK_VALUE


def check_step(t: int, p: int, max_chunk: int, max_seq_len: int) -> None:
    """A step of t new tokens after p cached rows must fit the buffers and the cache."""
    if not 1 <= t <= max_chunk:
        raise BackendError(f"step of {t} tokens is outside [1, {max_chunk}]")
    if p + t > max_seq_len:
        raise ContextFull(f"{p + t} tokens do not fit in max_seq_len={max_seq_len}")


def causal_upper(max_chunk: int) -> np.ndarray:
    """[T, T] with MASK_VALUE above the diagonal: row j of a chunk drops new rows > j."""
    return np.triu(np.full((max_chunk, max_chunk), MASK_VALUE, np.float32), 1)


def fill_step(pos: np.ndarray, mask_flat: np.ndarray, lidx: np.ndarray, tri: np.ndarray, p: int, t: int,
              positions: Optional[np.ndarray], mask: Optional[np.ndarray],
              logits_rows: Union[str, Sequence[int]]) -> int:
    """Write positions [T], the additive mask [T, P+T] and the logits index.

    The mask is row-major, at the start of mask_flat. Returns L, the number of
    logits rows. Defaults: positions P..P+T-1, a causal mask, the last row's
    logits ("all" = every row).
    """
    if positions is not None:
        pos[:t] = positions
    elif t <= 2:   # the decode step (two rows when padded): no temporary array
        pos[0] = p
        pos[t - 1] = p + t - 1
    else:
        pos[:t] = np.arange(p, p + t)
    m = mask_flat[:t * (p + t)].reshape(t, p + t)
    if mask is None:
        m[:, :p] = 0.0
        m[:, p:] = tri[:t, :t]
    else:
        m[...] = mask
    if isinstance(logits_rows, str):
        if logits_rows == "last":
            n = 1
            lidx[0] = t - 1
        else:  # "all"
            n = t
            lidx[:t] = np.arange(t)
    else:
        n = len(logits_rows)
        lidx[:n] = logits_rows
    return n
