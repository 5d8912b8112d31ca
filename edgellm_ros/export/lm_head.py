"""The LM head: logits [L, V] of the hidden rows picked by logits_index.

Float graphs: one MatMul. Quantized graphs: the head's 8-bit blocks. The fused
CPU graph of a tied model (its head is its embedding table) holds three modes
and the runtime picks one per request (:func:`head_modes`).

Vocabulary reduction (runtime/vocab.py): with ``kept`` [K] model ids, every
head computes [L, K] logits from the kept rows only, and :func:`to_model_ids`
writes them at their model ids of a [L, V] output that is -inf elsewhere
(ConstantOfShape, Expand, ScatterElements: plain ops TensorRT 10.3 parses), so
whatever reads the logits keeps working in model ids.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from onnx import TensorProto, numpy_helper

from ..contract import HEAD_FAST_INPUT, HEAD_FLOAT_INPUT, HEAD_INT8_INPUT, HEAD_ROWS_INPUT
from ..models.quant import BLOCK, BlockQuant
from .projections import Projections

F32 = TensorProto.FLOAT

#: The fused CPU graph's LM head (see head_modes): exact logits for this
#: many best tokens of a 4-bit pass over the vocabulary (0: the whole 8-bit
#: head every step), its blocks HEAD_APPROX_BLOCK wide.
HEAD_CANDIDATES = 64
HEAD_APPROX_BLOCK = 64


def lm_head(p: Projections, picked: str, kept: Optional[np.ndarray] = None) -> Tuple[str, bool]:
    """(logits [L, V] of the hidden rows ``picked`` [L, H], whether the graph reads lm_head_rows).

    Float graphs: one MatMul. Quantized graphs: the head's 8-bit blocks
    (the GGUF's Q8_0, or int8 re-quantized), except in the fused CPU graph
    of a model whose head is its embedding table (tied, as the default
    model's is): there the runtime picks the head per request through three
    bool inputs (see head_modes). kept: the model ids a reduced head keeps
    (ascending); None = the whole vocabulary.
    """
    g, s = p.g, "/model/lm_head"
    tied = "lm_head.weight" not in p.w
    head = "embed_tokens.weight" if tied else "lm_head.weight"
    V = p.w[head].shape[0]
    if p.quantization == "none":
        w = p.w[head] if kept is None else p.w[head][kept]                   # [K, H]
        return to_model_ids(p, g.op("MatMul", [picked, g.weight("lm_head.weight", w.T)], s), kept, V), False
    exact = p.block_quant(head, 8)
    if kept is not None:
        exact = BlockQuant(exact.bits, exact.q[kept], exact.scale[kept],
                           None if exact.offset is None else exact.offset[kept], exact.origin)
    if not (p.fused and tied and HEAD_CANDIDATES and exact.q.shape[1] % HEAD_APPROX_BLOCK == 0):
        return to_model_ids(p, p.quantized_matmul(picked, s, "lm_head.weight", [exact]), kept, V), False
    return to_model_ids(p, head_modes(p, picked, exact, kept), kept, V), True


def to_model_ids(p: Projections, logits: str, kept: Optional[np.ndarray], vocab: int) -> str:
    """Reduced logits [L, K] written at their model ids ``kept`` of a [L, V] tensor of -inf.

    The identity without a reduction.
    """
    if kept is None:
        return logits
    g, s = p.g, "/model/lm_head/to_model_ids"
    shape = g.op("Shape", [logits], s)                                        # [2]: L, K
    rows = g.op("Slice", [shape, g.const([0]), g.const([1])], s)              # [1]: L
    full = g.op("Concat", [rows, g.const([vocab])], s, axis=0)                # [2]: L, V
    fill = numpy_helper.from_array(np.array([-np.inf], np.float32), "value")
    out = g.op("ConstantOfShape", [full], s, value=fill)                      # [L, V] of -inf
    idx = g.op("Expand", [g.const(np.asarray(kept, np.int64)[None, :]), shape], s)   # [L, K]
    return g.op("ScatterElements", [out, idx, logits], s, axis=1)             # [L, V]


def head_modes(p: Projections, picked: str, exact: BlockQuant, kept: Optional[np.ndarray] = None) -> str:
    """The fused CPU graph's LM head for a tied model, three ways in one graph.

    A decode step on a CPU is bound by the bytes it reads, and the LM head
    is the largest weight a step reads.

    - ``lm_head_fast`` true (greedy requests): two passes. A 4-bit pass
      over the whole vocabulary (symmetric blocks of HEAD_APPROX_BLOCK of
      the head's own values, about half the 8-bit blocks' bytes) picks
      each row's HEAD_CANDIDATES best tokens; their logits are recomputed
      in float32 from their rows of the embedding table (the
      ``lm_head_rows`` input, bound to the runtime's own table: no second
      copy) and written over the 4-bit estimates. For a GGUF those rows
      are the Q8_0 blocks' values, so greedy reads the 8-bit head's logits
      with float32 activations; the rest of the row keeps the estimates.
    - ``lm_head_int8``: the whole 8-bit head (MatMulNBits, int8 activations),
      what the plain graph computes;
    - ``lm_head_float``: the whole head in float32 from the table (the
      exact mode of ``int4_compute: float32``).

    Each is an ONNX ``If`` subgraph, so its matmuls are written as
    MatMulNBits directly (ONNX Runtime fuses DequantizeLinear + MatMul only
    in the main graph).

    With ``kept`` (a reduced head: ``exact`` holds the kept rows only) each
    mode gives [L, K]: the two passes run over the kept rows, their TopK
    candidates (reduced indices) are mapped to model ids before their rows
    are gathered from the whole table; the float32 mode computes the whole
    head from the table and keeps the kept columns.
    """
    g, s = p.g, "/model/lm_head"
    V, H = exact.q.shape        # V: the head's rows (K when reduced)
    table = g.input(HEAD_ROWS_INPUT, F32, [p.w["embed_tokens.weight"].shape[0], H])
    fast_flag = g.input(HEAD_FAST_INPUT, TensorProto.BOOL, [])
    int8_flag = g.input(HEAD_INT8_INPUT, TensorProto.BOOL, [])
    float_flag = g.input(HEAD_FLOAT_INPUT, TensorProto.BOOL, [])
    with g.branch() as fast_nodes:
        # pass 1: symmetric 4-bit blocks ([-7, 7]: the scale is max|w| / 7)
        w = exact.dequantize().reshape(V, H // HEAD_APPROX_BLOCK, HEAD_APPROX_BLOCK)
        scale = np.abs(w).max(axis=-1) / 7.0
        q = np.clip(np.rint(w / np.where(scale == 0, 1.0, scale)[..., None]), -7, 7)
        approx = p.matmul_nbits(picked, q.reshape(V, H).astype(np.int8), scale, 4,
                                HEAD_APPROX_BLOCK, f"{s}/approx", "model.lm_head.approx")
        # pass 2: the candidates' logits from their rows of the table, in float32
        _, idx = g.op("TopK", [approx, g.const([min(HEAD_CANDIDATES, V)])], f"{s}/candidates",
                      n_out=2, axis=-1)                                       # [L, k]
        ids = idx if kept is None else \
            g.op("Gather", [g.const(np.asarray(kept, np.int64)), idx], f"{s}/candidates", axis=0)
        rows = g.op("Gather", [table, ids], f"{s}/rescore", axis=0)          # [L, k, H]
        x = g.op("Unsqueeze", [picked, g.const([1])], f"{s}/rescore")        # [L, 1, H]
        y = g.op("MatMul", [x, g.op("Transpose", [rows], f"{s}/rescore", perm=[0, 2, 1])],
                 f"{s}/rescore")                                              # [L, 1, k]
        y = g.op("Squeeze", [y, g.const([1])], f"{s}/rescore")               # [L, k]
        fast = g.op("ScatterElements", [approx, idx, y], f"{s}/rescore", axis=-1)
    with g.branch() as q8_nodes:
        full8 = p.matmul_nbits(picked, exact.q, exact.scale, 8, BLOCK, f"{s}/int8",
                               f"model.lm_head.{p.quantization}")
    with g.branch() as f32_nodes:
        full32 = g.op("Gemm", [picked, table], f"{s}/float32", transB=1)     # [L, V]
        if kept is not None:                                                  # [L, K]
            full32 = g.op("Gather", [full32, g.const(np.asarray(kept, np.int64))], f"{s}/float32", axis=1)
    # three Ifs side by side, each giving [L, V] when its flag is set and [0, V] when not,
    # then one Concat: ONNX Runtime prepacks MatMulNBits weights for a subgraph one level
    # deep, not two (nested, the 8-bit head runs unpacked, many times slower)
    parts = []
    for flag, (nodes, out), kind in ((fast_flag, (fast_nodes, fast), "two_pass"),
                                     (int8_flag, (q8_nodes, full8), "int8"),
                                     (float_flag, (f32_nodes, full32), "float32")):
        with g.branch() as none_nodes:
            empty = g.op("Identity", [g.const(np.zeros((0, V), np.float32), np.float32)],
                         f"{s}/{kind}/off")
        parts.append(g.if_op(flag, [(nodes, out), (none_nodes, empty)], f"{s}/{kind}", F32,
                             ["rows", V]))
    return g.op("Concat", parts, s, axis=0)                                  # [L, V]
