"""Block-wise integer weights: the GGUF's own blocks, or a round-to-nearest re-quantization.

A linear weight ``W [out, in]`` is stored as blocks of 32 consecutive input
features, each with a float32 scale and, for asymmetric formats, an offset::

    W[o, 32*b + j] = scale[o, b] * q[o, 32*b + j] + offset[o, b]

with ``q`` signed (int4 values in [-8, 7], int8 values in [-127, 127]). That
is the block-wise, signed, symmetric ``DequantizeLinear`` of ONNX opset 21 (the
form TensorRT's parser accepts) plus, when ``offset`` is present, a
correction ``sum_b offset[o, b] * sum_j x[32*b + j]`` that the graph adds.

GGUF blocks map onto it exactly:

| GGUF  | stores (per block of 32)        | here                                      |
|-------|---------------------------------|-------------------------------------------|
| Q4_0  | d (fp16), q in [0, 15]          | q - 8, scale d, no offset                 |
| Q4_1  | d, m (fp16), q in [0, 15]       | q - 8, scale d, offset m + 8 d            |
| Q8_0  | d (fp16), q in [-127, 127]      | q, scale d, no offset                     |

so the quantized graph computes with the very numbers the GGUF holds. Other
sources (float checkpoints, other GGUF types) are re-quantized by
:func:`quantize_symmetric` (round to nearest, absmax scale per block, or for
int4 the scale that fits the calibration inputs best).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import ConfigError, CorruptModelError, UnsupportedModelError

BLOCK = 32


@dataclass
class BlockQuant:
    """One [out, in] weight in blocks of BLOCK input features."""

    # 4 or 8.
    bits: int
    # [out, in] int8 holding the signed values.
    q: np.ndarray
    # [out, in / BLOCK] float32.
    scale: np.ndarray
    # [out, in / BLOCK] float32, or None for symmetric blocks.
    offset: Optional[np.ndarray]
    # Where the blocks came from: "gguf Q4_1", "rtn int4", ...
    origin: str

    @property
    def shape(self):
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        """The float32 [out, in] weight these blocks stand for."""
        out, n_in = self.q.shape
        w = self.q.reshape(out, n_in // BLOCK, BLOCK).astype(np.float32) * self.scale[..., None]
        if self.offset is not None:
            w += self.offset[..., None]
        return w.reshape(out, n_in)

    def take_rows(self, order: np.ndarray) -> "BlockQuant":
        """The same blocks with output rows reordered (GGUF Q/K un-permutation)."""
        return BlockQuant(self.bits, self.q[order], self.scale[order],
                          None if self.offset is None else self.offset[order], self.origin)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] values: low nibbles are elements 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def from_gguf(raw: np.ndarray, kind: str, shape: tuple, name: str) -> BlockQuant:
    """Blocks of a GGUF tensor (``raw`` uint8 [rows, row_bytes]) of type Q4_0, Q4_1 or Q8_0."""
    out, n_in = shape
    per_block = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind]
    if n_in % BLOCK or raw.size != out * (n_in // BLOCK) * per_block:
        raise CorruptModelError(f"tensor {name} ({kind}) holds {raw.size} bytes, "
                                f"expected {out * (n_in // BLOCK) * per_block} for {shape}")
    blocks = np.ascontiguousarray(raw).reshape(-1, per_block)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    offset = None
    if kind == "Q8_0":
        q = blocks[:, 2:].copy().view(np.int8)
        bits = 8
    else:
        start = 4 if kind == "Q4_1" else 2
        q = (_nibbles(blocks[:, start:]).astype(np.int16) - 8).astype(np.int8)
        bits = 4
        if kind == "Q4_1":
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
            offset = (m + 8.0 * d).reshape(out, n_in // BLOCK)
    return BlockQuant(bits, q.reshape(out, n_in), d.reshape(out, n_in // BLOCK), offset,
                      f"gguf {kind}")


# Scale factors (x Q4_0's scale) the activation-weighted search tries per block: 1.0 (Q4_0's
# rule, kept on ties), a coarse grid, then steps of 0.01 around the block's best coarse factor
COARSE_FACTORS = np.round(np.arange(0.50, 1.305, 0.05), 2)
FINE_STEPS = np.array([-0.04, -0.03, -0.02, -0.01, 0.01, 0.02, 0.03, 0.04])


def quantize_symmetric(w: np.ndarray, bits: int, channel_weight: Optional[np.ndarray] = None) -> BlockQuant:
    """Round-to-nearest signed blocks of a float [out, in] weight.

    int4 uses Q4_0's rule (the value of largest magnitude maps to -8, so the
    full [-8, 7] range is used); int8 maps the largest magnitude to +-127.

    channel_weight ([in], int4 only): the mean square of each input feature
    over calibration text. Each block then takes, of the scales tried
    (COARSE_FACTORS x Q4_0's, then FINE_STEPS around the best), the one with the least error weighted by it,
    ``sum_j channel_weight[j] * (w_j - scale * q_j)^2``: the expected squared
    error of the block's share of the output where the inputs are
    uncorrelated. Inputs of a transformer projection are far from uniform
    (a few features carry most of the energy), so this spends the 16 levels
    where the output feels them. Never worse than Q4_0's rule by that
    measure (its scale is tried first and kept on ties).
    """
    out, n_in = w.shape
    if n_in % BLOCK:
        raise UnsupportedModelError(f"in_features {n_in} is not a multiple of the {BLOCK}-wide blocks")
    blk = w.reshape(out, n_in // BLOCK, BLOCK).astype(np.float32)
    if bits == 4:
        idx = np.abs(blk).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(blk, idx, axis=-1)[..., 0]
        scale = extreme / -8.0
        lo, hi = -8, 7
    elif bits == 8:
        scale = np.abs(blk).max(axis=-1) / 127.0
        lo, hi = -127, 127
    else:
        raise ConfigError(f"bits must be 4 or 8, got {bits!r}")
    origin = f"rtn int{bits}"
    if channel_weight is not None and bits == 4:
        scale = _weighted_scale_search(blk, scale, np.asarray(channel_weight, np.float32), lo, hi)
        origin = "rtn int4, activation-weighted scales"
    safe = np.where(scale == 0, 1.0, scale)
    q = np.clip(np.rint(blk / safe[..., None]), lo, hi).astype(np.int8)
    return BlockQuant(bits, q.reshape(out, n_in), scale.astype(np.float32), None, origin)


def _weighted_scale_search(blk: np.ndarray, base: np.ndarray, channel_weight: np.ndarray,
                           lo: int, hi: int) -> np.ndarray:
    """Per block, the tried scale (see COARSE_FACTORS) with the least channel-weighted error."""
    out, nb, _ = blk.shape
    if channel_weight.shape != (nb * BLOCK,):
        raise ConfigError(f"channel_weight has shape {channel_weight.shape}, want ({nb * BLOCK},)")
    cw = channel_weight.reshape(1, nb, BLOCK)
    buf = np.empty_like(blk)

    def error(s: np.ndarray) -> np.ndarray:
        safe = np.where(s == 0, np.float32(1.0), s)[..., None]
        e = np.divide(blk, safe, out=buf)
        np.clip(np.rint(e, out=e), lo, hi, out=e)
        e *= safe
        e -= blk
        e *= e
        e *= cw
        return e.sum(-1)

    best_f, best_err = np.ones_like(base), error(base)

    def try_factors(factors) -> None:   # scalars, or per-block arrays
        nonlocal best_f, best_err
        for f in factors:
            f = np.broadcast_to(np.float32(f), base.shape)
            err = error(base * f)
            better = err < best_err
            best_f = np.where(better, f, best_f)
            best_err = np.where(better, err, best_err)

    try_factors(COARSE_FACTORS)
    try_factors([best_f + d for d in FINE_STEPS])
    return base * best_f
