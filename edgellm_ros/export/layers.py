"""The parts of a Llama layer other than its projections, built into one ONNX graph.

RMSNorm, residual add + norm, rotary embedding and attention; the projections
are in projections.py. Two attentions: plain ONNX ops (every backend: KV rows [1, S, KVH, D], past and
new concatenated), or ONNX Runtime's GroupQueryAttention in the fused CPU
graphs (head-major KV buffers [1, KVH, max_seq, D], rotary inside the kernel).

:class:`LayerBuilder` is shared by the decoder (decoder.py) and the EAGLE draft
(draft.py). Shapes: T new tokens, P cached, S = P + T, NH / KVH query /
key-value heads, G = NH // KVH, D head dim, R rotary table rows.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from onnx import TensorProto

from ..models.llama import rope_inv_freq
from ..models.spec import ModelWeights
from .graph import GraphBuilder
from .projections import Projections, Requantizer

F32 = TensorProto.FLOAT

#: attend(q, k, v, (past_key, past_value), scope) -> (attention output [1, T, NH*D],
#: present key, present value)
Attend = Callable[[str, str, str, Tuple[str, str], str], Tuple[str, str, str]]


#: Fewest positions of a fused graph's rotary tables (2 MiB at D = 64).
DEFAULT_ROPE_ROWS = 8192


def rope_table_rows(needed: int = 0) -> int:
    """Positions the fused graph's cos/sin tables cover: the rows the node will use.

    ``needed`` is max_seq_len plus the EAGLE rows, never the model's declared
    context length (a GGUF may claim 2**31 positions); at least
    DEFAULT_ROPE_ROWS, rounded up to a multiple of 1024.
    """
    return max(DEFAULT_ROPE_ROWS, -(-int(needed) // 1024) * 1024)


class LayerBuilder:
    """Builds the parts of Llama layers into the graph ``g``.

    Norms and attention here; ``proj`` is the :class:`Projections` in the
    graph's weight format. fused: the fused CPU graph (GroupQueryAttention, SkipSimplifiedLayerNormalization,
    packed matmuls); quantization, requant, lora_modules: see Projections.
    """

    def __init__(self, weights: ModelWeights, g: GraphBuilder, quantization: str = "none",
                 fused: bool = False, requant: Optional[Requantizer] = None,
                 lora_modules: Sequence[str] = (), rope_rows: int = 0):
        self.w, self.c, self.g = weights.tensors, weights.config, g
        self.fused = fused
        self.rope_rows = rope_table_rows(rope_rows)
        self.quantization = quantization
        self.proj = Projections(weights, g, quantization, fused, requant, lora_modules)

    def attention(self, pos: str, mask: str) -> Attend:
        """Return the graph's attention function (fused or plain), built once for every layer.

        Its rotary tables (of ``pos``) are built here, before the first layer.
        """
        return self.fused_attention(pos, mask) if self.fused else self.plain_attention(pos, mask)

    def add_norm(self, x: str, delta: str, scope: str, name: str) -> Tuple[str, str]:
        """Residual add and the next RMSNorm: (x + delta, rms_norm(x + delta)).

        The fused graph uses ONNX Runtime's SkipSimplifiedLayerNormalization
        (one kernel for both); the plain graph two ops and the norm pattern.
        """
        if not self.fused:
            x = self.g.op("Add", [x, delta], scope)
            return x, self.rms_norm(x, scope, name)
        h, _, _, x = self.g.op("SkipSimplifiedLayerNormalization",
                               [x, delta, self.g.weight(f"model.{name}", self.w[name])], scope,
                               n_out=4, unused=(1, 2), domain="com.microsoft",
                               epsilon=self.c.rms_norm_eps)
        return x, h

    def rms_norm(self, x: str, scope: str, name: str) -> str:
        """RMSNorm, x / sqrt(mean(x^2) + eps) * w, in the op pattern ONNX Runtime fuses."""
        g = self.g
        sq = g.op("Pow", [x, g.const(2.0, np.float32)], scope)
        if g.opset >= 18:
            var = g.op("ReduceMean", [sq, g.const([-1])], scope, keepdims=1)
        else:
            var = g.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
        var = g.op("Add", [var, g.const(self.c.rms_norm_eps, np.float32)], scope)
        y = g.op("Div", [x, g.op("Sqrt", [var], scope)], scope)
        return g.op("Mul", [y, g.weight(f"model.{name}", self.w[name])], scope)

    def rotate(self, x: str, cos: str, sin: str, scope: str) -> str:
        """Rotary embedding: x * cos + rotate_half(x) * sin; x [1, T, heads, D], cos/sin [1, T, 1, D]."""
        g, half = self.g, self.c.head_dim // 2
        x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([-1])], scope)
        x2 = g.op("Slice", [x, g.const([half]), g.const([2 * half]), g.const([-1])], scope)
        rot = g.op("Concat", [g.op("Neg", [x2], scope), x1], scope, axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], scope), g.op("Mul", [rot, sin], scope)], scope)

    def plain_attention(self, pos: str, mask: str) -> Callable[..., Tuple[str, str, str]]:
        """Attention in plain ONNX ops (every backend): KV rows [1, S, KVH, D], past + new concatenated."""
        g, c = self.g, self.c
        NH, KVH, D = c.num_heads, c.num_kv_heads, c.head_dim
        G = NH // KVH
        # rotary tables, shared by all layers: [1, T, 1, D]
        s = "/model/rotary"
        ang = g.op("Unsqueeze", [g.op("Cast", [pos], s, to=F32), g.const([-1])], s)   # [1, T, 1]
        ang = g.op("Mul", [ang, g.const(rope_inv_freq(c), np.float32)], s)          # [1, T, D/2]
        ang = g.op("Concat", [ang, ang], s, axis=-1)                                # [1, T, D]
        cos = g.op("Unsqueeze", [g.op("Cos", [ang], s), g.const([2])], s)
        sin = g.op("Unsqueeze", [g.op("Sin", [ang], s), g.const([2])], s)
        scale = g.const(1.0 / math.sqrt(D), np.float32)

        def attend(q: str, k: str, v: str, past: Tuple[str, str], A: str) -> Tuple[str, str, str]:
            q = g.op("Reshape", [q, g.const([0, 0, NH, D])], A)                   # [1, T, NH, D]
            k = g.op("Reshape", [k, g.const([0, 0, KVH, D])], A)                  # [1, T, KVH, D]
            v = g.op("Reshape", [v, g.const([0, 0, KVH, D])], A)
            q = self.rotate(q, cos, sin, f"{A}/q_rotary")
            k = self.rotate(k, cos, sin, f"{A}/k_rotary")
            k_all = g.op("Concat", [past[0], k], A, axis=1)                      # [1, S, KVH, D]
            v_all = g.op("Concat", [past[1], v], A, axis=1)
            q = g.op("Mul", [q, scale], A)
            q = g.op("Reshape", [q, g.const([0, 0, KVH, G, D])], A)              # [1, T, KVH, G, D]
            q = g.op("Transpose", [q], A, perm=[0, 2, 3, 1, 4])                  # [1, KVH, G, T, D]
            kt = g.op("Transpose", [k_all], A, perm=[0, 2, 3, 1])                # [1, KVH, D, S]
            kt = g.op("Unsqueeze", [kt, g.const([2])], A)                        # [1, KVH, 1, D, S]
            scores = g.op("MatMul", [q, kt], A)                                   # [1, KVH, G, T, S]
            scores = g.op("Add", [scores, mask], A)
            probs = g.op("Softmax", [scores], A, axis=-1)
            vt = g.op("Transpose", [v_all], A, perm=[0, 2, 1, 3])                # [1, KVH, S, D]
            vt = g.op("Unsqueeze", [vt, g.const([2])], A)                        # [1, KVH, 1, S, D]
            att = g.op("MatMul", [probs, vt], A)                                  # [1, KVH, G, T, D]
            att = g.op("Transpose", [att], A, perm=[0, 3, 1, 2, 4])              # [1, T, KVH, G, D]
            return g.op("Reshape", [att, g.const([0, 0, NH * D])], A), k, v      # [1, T, NH*D]
        return attend

    def fused_attention(self, pos: str, mask: str) -> Callable[..., Tuple[str, str, str]]:
        """ONNX Runtime's GroupQueryAttention (com.microsoft), CPU graphs only.

        The KV buffers are head-major [1, KVH, max_seq, D] and bound as both
        past and present (ONNX Runtime's shared-buffer mode: the kernel writes
        the T new rows at P..P+T-1 in place); rotary runs inside the kernel
        from cos/sin tables at ``position_ids``; the additive mask goes in as
        attention_bias (on top of the kernel's causal rule, which a tree in
        topological order satisfies).
        """
        g, c = self.g, self.c
        s = "/model/attn_lengths"
        total = g.op("Gather", [g.op("Shape", [mask], s), g.const(3)], s, axis=0)     # P + T
        total = g.op("Cast", [total], s, to=TensorProto.INT32)
        seqlens = g.op("Reshape", [g.op("Sub", [total, g.const(1, np.int32)], s), g.const([1])], s)
        ang = np.arange(self.rope_rows, dtype=np.float64)[:, None] * rope_inv_freq(c)[None]
        cos = g.weight("model.rotary.cos_cache", np.cos(ang).astype(np.float32))       # [R, D/2]
        sin = g.weight("model.rotary.sin_cache", np.sin(ang).astype(np.float32))

        def attend(q: str, k: str, v: str, past: Tuple[str, str], A: str) -> Tuple[str, str, str]:
            # k == v == "": q is packed [q | k | v] (no Split node)
            return g.op("GroupQueryAttention", [q, k, v, past[0], past[1], seqlens, total, cos, sin,
                                                pos, mask], A, n_out=3, domain="com.microsoft",
                        num_heads=c.num_heads, kv_num_heads=c.num_kv_heads, do_rotary=1,
                        rotary_interleaved=0)
        return attend
