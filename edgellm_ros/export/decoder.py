"""ONNX export of the Llama decoder (batch 1), the graph every backend runs.

Plain ONNX ops at opset 17 (MatMul, Add, Mul, Softmax, Gather, Concat, Slice,
Reshape, Transpose, ReduceMean, Sqrt, Sigmoid, Cos, Sin...), so the TensorRT
10.3 of JetPack 6 parses it; no contrib ops, no attention/rotary plugins.

Inputs
| name               | dtype   | shape              | meaning                                          |
|--------------------|---------|--------------------|--------------------------------------------------|
| inputs_embeds      | float32 | [1, T, H]          | token (or image) embeddings, looked up outside   |
| position_ids       | int64   | [1, T]             | rotary positions (tree depth for EAGLE nodes)    |
| attention_mask     | float32 | [1, 1, T, P+T]     | additive: 0 keeps, MASK_VALUE drops              |
| logits_index       | int64   | [L]                | rows of T whose logits are wanted                |
| past_key.{i}       | float32 | [1, P, KVH, D]     | cached keys of layer i (rotary applied)          |
| past_value.{i}     | float32 | [1, P, KVH, D]     | cached values of layer i                         |
| lora.{i}.{m}.a     | float32 | [in, r]            | LoRA A^T of module m of layer i (LoRA variant)   |
| lora.{i}.{m}.b     | float32 | [r, out]           | scale * LoRA B^T; rank-1 zeros = no adapter      |
| lm_head_rows       | float32 | [V, H]             | fused quantized graph of a tied model only: the  |
| lm_head_fast       | bool    | []                 | embedding table, and the LM head's mode flags    |
| lm_head_int8       | bool    | []                 | (one true; see _Decoder.head_modes)              |
| lm_head_float      | bool    | []                 |                                                  |

Outputs
| name               | dtype   | shape              | meaning                                          |
|--------------------|---------|--------------------|--------------------------------------------------|
| logits             | float32 | [L, V]             | LM head on the rows named by logits_index        |
| hidden_states      | float32 | [1, T, F]          | EAGLE features: final-norm output (F = H), or the|
|                    |         |                    | outputs of feature_layers concatenated (F = 3H)  |
| present_key.{i}    | float32 | [1, T, KVH, D]     | keys of the T new tokens (rotary applied)        |
| present_value.{i}  | float32 | [1, T, KVH, D]     | values of the T new tokens                       |

Two variants share one weights file: ``decoder.onnx`` and
``decoder_lora.onnx``, whose every projection m in (q, k, v, o, gate, up,
down)_proj computes ``x @ W + (x @ a) @ b`` with r dynamic per slot.

The runtime binds ``past_*`` to rows [0, P) and ``present_*`` to rows
[P, P+T) of one [max_seq_len, KVH, D] buffer per layer, so new keys and values
land in the KV cache with no copy.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import TensorProto

from ..runtime.config import QUANTIZATIONS
from ..models.llama import rope_inv_freq
from ..models.quant import BLOCK, BlockQuant, quantize_symmetric
from ..models.spec import ModelWeights
from ..contract import (HEAD_FAST_INPUT, HEAD_FLOAT_INPUT, HEAD_INT8_INPUT, HEAD_ROWS_INPUT, decoder_io_names,
                        lora_input_names, module_shapes)
from .graph import GraphBuilder, WeightFile, pack_int


#: The fused CPU graph's LM head (see _Decoder.lm_head): exact logits for this
#: many best tokens of a 4-bit pass over the vocabulary (0: the whole 8-bit
#: head every step), its blocks HEAD_APPROX_BLOCK wide.
HEAD_CANDIDATES = 64
HEAD_APPROX_BLOCK = 64


def rope_table_rows(config: Any) -> int:
    """Positions the fused graph's cos/sin tables cover (max_seq_len must stay below)."""
    return max(int(config.max_position_embeddings), 8192)


F32, I64 = TensorProto.FLOAT, TensorProto.INT64


class Requantizer:
    """Re-quantizes weights to symmetric blocks (quantize_symmetric), each (name, bits) once.

    calibrate: returns {weight name: [in] mean square of its input per feature}
    (export.calibration.input_mean_squares), called once, on the first INT4
    re-quantization (a GGUF whose blocks are all kept never pays for it);
    INT4 blocks of the weights it names take the activation-weighted scale.
    One instance serves the four variants of a family.
    """

    def __init__(self, calibrate: Optional[Callable[[], Dict[str, np.ndarray]]] = None):
        self.calibrate = calibrate
        self.channel_weights: Optional[Dict[str, np.ndarray]] = None
        self.done: Dict[Tuple[str, int], BlockQuant] = {}

    def __call__(self, name: str, w: np.ndarray, bits: int) -> BlockQuant:
        key = (name, bits)
        if key not in self.done:
            cw = None
            if bits == 4 and self.calibrate is not None:
                if self.channel_weights is None:
                    self.channel_weights = self.calibrate()
                cw = self.channel_weights.get(name)
            self.done[key] = quantize_symmetric(w, bits, cw)
        return self.done[key]


class _Decoder:
    def __init__(self, weights: ModelWeights, g: GraphBuilder, lora_modules: Sequence[str] = (),
                 feature_layers: Sequence[int] = (), quantization: str = "none",
                 fused: bool = False, requant: Optional[Requantizer] = None):
        self.w, self.c, self.g = weights.tensors, weights.config, g
        self.requant = requant or Requantizer()
        self.fused = fused
        self.rope_rows = rope_table_rows(weights.config)
        self.blocks = weights.quantized
        self.lora_modules = tuple(lora_modules)
        self.feature_layers = tuple(feature_layers)
        self.lora_inputs: List[str] = []
        self.quantization = quantization
        self.quant_origins: Dict[str, int] = {}
        self.head_rows = False

    def matmul_weight(self, x: str, scope: str, key: str, names: Sequence[str]) -> str:
        """x @ [W_1; W_2; ...]^T for the weights ``names`` (each [out_i, in]), stored as one.

        quantization "int4" / "int4-sym": the weights go in as block-wise
        signed INT4 through DequantizeLinear (opset 21), see block_quant, plus
        the per-block offset correction where the blocks have offsets (Q4_1: a
        float32 matmul on the input's block sums, exact, in the plain graph; in
        the fused CPU graph the offsets join the weight as extra 4-bit rows over
        the widened input, see offset_augmented_matmul); "int8": block-wise
        signed INT8 (no offsets: every weight is re-expressed in 8-bit blocks,
        which hold a Q4_1 block's 16 levels to within 1/254 of its largest
        magnitude).
        """
        g = self.g
        if self.quantization == "none":
            w = np.concatenate([self.w[n] for n in names], axis=0) if len(names) > 1 \
                else self.w[names[0]]
            return g.op("MatMul", [x, g.weight(f"model.{key}", w.T)], scope)
        bits = 8 if self.quantization == "int8" else 4
        return self.quantized_matmul(x, scope, key, [self.block_quant(n, bits) for n in names])

    def block_quant(self, name: str, bits: int) -> BlockQuant:
        """The file's own blocks of ``name`` when they fit, else a symmetric re-quantization.

        "int4" keeps any file blocks of ``bits`` (Q4_1's offsets included,
        exact); "int4-sym" keeps only symmetric ones (Q4_0, Q8_0) and
        re-quantizes the rest, so no offset correction runs; "int8" asks for
        bits=8 everywhere, so it keeps Q8_0 blocks and re-quantizes the rest.
        """
        bq = self.blocks.get(name)
        if bq is None or bq.bits != bits or (bq.offset is not None and self.quantization == "int4-sym"):
            bq = self.requant(name, self.w[name], bits)
        self.quant_origins[bq.origin] = self.quant_origins.get(bq.origin, 0) + 1
        return bq

    def quantized_matmul(self, x: str, scope: str, key: str, parts: Sequence[BlockQuant]) -> str:
        g = self.g
        q = np.concatenate([b.q for b in parts], axis=0)                       # [N, K]
        scale = np.concatenate([b.scale for b in parts], axis=0)               # [N, K/32]
        n_in = q.shape[1]
        key = f"model.{key}.{self.quantization}"   # one weights file may hold both int4 modes
        if all(b.offset is None for b in parts):
            return self.dq_matmul(x, q, scale, parts[0].bits, scope, key)
        off = np.concatenate([b.offset if b.offset is not None else np.zeros_like(b.scale)
                              for b in parts], axis=0)                         # [N, K/32]
        if self.fused:
            return self.offset_augmented_matmul(x, q, scale, off, scope, key)
        y = self.dq_matmul(x, q, scale, parts[0].bits, scope, key)
        # block sums of x: [1, T, K] -> [1, T, K/32, 32] -> sum over the block. (A MatMul
        # with a 0/1 [K, K/32] matrix reads K*K/32 floats a step: 295 KB for down_proj.)
        blocks = g.op("Reshape", [x, g.const([0, 0, n_in // BLOCK, BLOCK])], f"{scope}/offset")
        sums = g.op("ReduceSum", [blocks, g.const([-1])], f"{scope}/offset", keepdims=0)
        corr = g.op("MatMul", [sums, g.weight(f"{key}.offset", np.ascontiguousarray(off.T))], f"{scope}/offset")
        return g.op("Add", [y, corr], f"{scope}/offset")

    def offset_augmented_matmul(self, x: str, q: np.ndarray, scale: np.ndarray, off: np.ndarray,
                                scope: str, key: str) -> str:
        """x @ (q * scale + offsets)^T for Q4_1-style blocks in one 4-bit MatMulNBits (fused graph).

        A block's offset adds ``offset[n, b] * S_b`` to output n, S_b being the
        sum of the input over block b. So the input is widened to [x, S, S]
        (S zero-padded to whole blocks of 32) and the weight to [q, hi, lo]:
        per group of 32 offsets of one output, the offset is ``16 * hi + lo``
        steps of sigma = the group's largest magnitude / 119 (hi, lo in
        [-8, 7]: 8-bit precision from two 4-bit rows), hi's blocks scaled by
        16 sigma and lo's by sigma. S itself comes from a 4-bit MatMulNBits
        with 0/1 weights (exact in INT4). Two kernels and a Concat instead of
        the plain graph's Reshape, ReduceSum, offset MatMul and Add; the extra
        rows add 2 * 32 / K of the weight's bytes (11% for K = 576). With int8
        activations this is not bit-exact (the exact mode runs the plain graph).
        """
        n, k = q.shape
        nb = k // BLOCK
        kp = -(-nb // BLOCK) * BLOCK                                   # S padded to whole blocks
        ones = np.repeat(np.eye(kp, nb, dtype=np.int8), BLOCK, axis=1)   # row b: 1 on block b
        sums = self.dq_matmul(x, ones, np.ones((kp, nb), np.float32), 4, f"{scope}/offset",
                              f"{key}.offset.blocksum")
        wide = self.g.op("Concat", [x, sums, sums], f"{scope}/offset", axis=-1)   # [.., K + 2 kp]
        groups = np.pad(off, ((0, 0), (0, kp - nb))).reshape(n, kp // BLOCK, BLOCK)
        sigma = np.abs(groups).max(-1) / 119.0
        sigma[sigma == 0] = 1.0
        steps = np.rint(groups / sigma[..., None]).astype(np.int16)    # [-119, 119]
        hi = np.floor_divide(steps + 8, 16)
        lo = steps - 16 * hi
        wq = np.concatenate([q, hi.reshape(n, kp), lo.reshape(n, kp)], axis=1).astype(np.int8)
        ws = np.concatenate([scale, 16.0 * sigma, sigma], axis=1)
        return self.dq_matmul(wide, wq, ws, 4, scope, f"{key}.offset.augmented")

    def dq_matmul(self, x: str, q: np.ndarray, scale: np.ndarray, bits: int, scope: str, key: str) -> str:
        """x @ (q * scale)^T for signed INT4 / INT8 blocks (q [N, K], scale [N, K/32]) as
        block-wise DequantizeLinear + MatMul (opset 21; ONNX Runtime fuses the pair into
        MatMulNBits with the session's accuracy level, int4_compute)."""
        g = self.g
        elem = TensorProto.INT4 if bits == 4 else TensorProto.INT8
        qt = g.weight(f"{key}.q{bits}", pack_int(q.T, bits), elem_type=elem, dims=[q.shape[1], q.shape[0]])
        st = g.weight(f"{key}.scale", np.ascontiguousarray(scale.T, np.float32))
        w = g.op("DequantizeLinear", [qt, st], scope, axis=0, block_size=BLOCK)  # [K, N]
        return g.op("MatMul", [x, w], scope)

    def project(self, x: str, scope: str, names: Sequence[str], split: bool = True) -> List[str]:
        """x @ W^T (+ b) (+ (x @ a) @ b for LoRA slots) for each projection in ``names``.

        Projections of one input (q/k/v, gate/up) run as one MatMul and a Split:
        fewer, larger kernels. Each name is a module path like
        ``layers.3.self_attn.q_proj``; weights stored as [in, out]. split=False
        returns the packed output alone (no LoRA slot may be among ``names``).
        """
        g = self.g
        widths = [self.w[n + ".weight"].shape[0] for n in names]
        key = names[0] if len(names) == 1 else \
            names[0].rsplit(".", 1)[0] + "." + "_".join(n.rsplit(".", 1)[1].split("_")[0] for n in names)
        y = self.matmul_weight(x, scope, key + ".weight", [n + ".weight" for n in names])
        biases = [self.w.get(n + ".bias") for n in names]
        if any(b is not None for b in biases):
            bias = np.concatenate([b if b is not None else np.zeros(wd, np.float32)
                                   for b, wd in zip(biases, widths)])
            y = g.op("Add", [y, g.weight(f"model.{key}.bias", bias)], scope)
        if not split:
            return [y]
        outs = [y] if len(names) == 1 else \
            g.op("Split", [y, g.const(widths)], scope, n_out=len(names), axis=-1)
        result = []
        for name, out in zip(names, outs):
            layer, module = int(name.split(".")[1]), name.rsplit(".", 1)[1]
            if module in self.lora_modules:
                n_in, n_out = module_shapes(self.c)[module]
                a_name, b_name = lora_input_names(layer, module)
                rank = f"lora_rank.{layer}.{module}"
                self.lora_inputs += [g.input(a_name, F32, [n_in, rank]),
                                     g.input(b_name, F32, [rank, n_out])]
                sc = f"{scope}/{module}"
                low = g.op("MatMul", [x, a_name], f"{sc}/lora_a")
                out = g.op("Add", [out, g.op("MatMul", [low, b_name], f"{sc}/lora_b")], f"{sc}/lora")
            result.append(out)
        return result

    def linear(self, x: str, scope: str, name: str) -> str:
        return self.project(x, scope, [name])[0]

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
        """x / sqrt(mean(x^2) + eps) * w, in the op pattern ONNX Runtime fuses into one kernel."""
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
        """x * cos + rotate_half(x) * sin; x [1, T, heads, D], cos/sin [1, T, 1, D]."""
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

    def lm_head(self, picked: str) -> str:
        """Logits [L, V] of the hidden rows ``picked`` [L, H].

        Float graphs: one MatMul. Quantized graphs: the head's 8-bit blocks
        (the GGUF's Q8_0, or int8 re-quantized), except in the fused CPU graph
        of a model whose head is its embedding table (tied, as the default
        model's is): there the runtime picks the head per request through three
        bool inputs (see head_modes).
        """
        g, s = self.g, "/model/lm_head"
        tied = "lm_head.weight" not in self.w
        head = "embed_tokens.weight" if tied else "lm_head.weight"
        if self.quantization == "none":
            return g.op("MatMul", [picked, g.weight("lm_head.weight", self.w[head].T)], s)
        exact = self.block_quant(head, 8)
        if not (self.fused and tied and HEAD_CANDIDATES and exact.q.shape[1] % HEAD_APPROX_BLOCK == 0):
            return self.quantized_matmul(picked, s, "lm_head.weight", [exact])
        return self.head_modes(picked, exact)

    def head_modes(self, picked: str, exact: BlockQuant) -> str:
        """The fused CPU graph's LM head for a tied model, three ways in one graph.

        A decode step on a CPU is bound by the bytes it reads, and the LM head
        is the largest weight (SmolLM2: 28 M of the 134 M weights a step reads).

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
        """
        g, s = self.g, "/model/lm_head"
        V, H = exact.q.shape
        table = g.input(HEAD_ROWS_INPUT, F32, [V, H])
        fast_flag = g.input(HEAD_FAST_INPUT, TensorProto.BOOL, [])
        int8_flag = g.input(HEAD_INT8_INPUT, TensorProto.BOOL, [])
        float_flag = g.input(HEAD_FLOAT_INPUT, TensorProto.BOOL, [])
        self.head_rows = True
        with g.branch() as fast_nodes:
            # pass 1: symmetric 4-bit blocks ([-7, 7]: the scale is max|w| / 7)
            w = exact.dequantize().reshape(V, H // HEAD_APPROX_BLOCK, HEAD_APPROX_BLOCK)
            scale = np.abs(w).max(axis=-1) / 7.0
            q = np.clip(np.rint(w / np.where(scale == 0, 1.0, scale)[..., None]), -7, 7)
            approx = self.matmul_nbits(picked, q.reshape(V, H).astype(np.int8), scale, 4,
                                       HEAD_APPROX_BLOCK, f"{s}/approx", "model.lm_head.approx")
            # pass 2: the candidates' logits from their rows of the table, in float32
            _, idx = g.op("TopK", [approx, g.const([min(HEAD_CANDIDATES, V)])], f"{s}/candidates",
                          n_out=2, axis=-1)                                       # [L, k]
            rows = g.op("Gather", [table, idx], f"{s}/rescore", axis=0)          # [L, k, H]
            x = g.op("Unsqueeze", [picked, g.const([1])], f"{s}/rescore")        # [L, 1, H]
            y = g.op("MatMul", [x, g.op("Transpose", [rows], f"{s}/rescore", perm=[0, 2, 1])],
                     f"{s}/rescore")                                              # [L, 1, k]
            y = g.op("Squeeze", [y, g.const([1])], f"{s}/rescore")               # [L, k]
            fast = g.op("ScatterElements", [approx, idx, y], f"{s}/rescore", axis=-1)
        with g.branch() as q8_nodes:
            full8 = self.matmul_nbits(picked, exact.q, exact.scale, 8, BLOCK, f"{s}/int8",
                                      f"model.lm_head.{self.quantization}")
        with g.branch() as f32_nodes:
            full32 = g.op("Gemm", [picked, table], f"{s}/float32", transB=1)
        # three Ifs side by side, each giving [L, V] when its flag is set and [0, V] when not,
        # then one Concat: ONNX Runtime prepacks MatMulNBits weights for a subgraph one level
        # deep, not two (nested, the 8-bit head ran ~100x slower)
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

    def matmul_nbits(self, x: str, q: np.ndarray, scale: np.ndarray, bits: int, block: int,
                     scope: str, key: str) -> str:
        """x @ W^T as ONNX Runtime's MatMulNBits (int8 activations) for W [N, K] = q * scale
        in blocks of ``block`` (q signed, scale [N, K/block]), written directly (If branches,
        which ONNX Runtime's DequantizeLinear + MatMul fusion does not reach)."""
        n, width = q.shape
        u = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).reshape(n, width // block, block)
        if bits == 4:   # two per byte, the lower index in the low nibble
            u = u[..., 0::2] | (u[..., 1::2] << 4)
        qb = self.g.weight(f"{key}.mnb{bits}", np.ascontiguousarray(u))
        sb = self.g.weight(f"{key}.mnb{bits}.scale", np.ascontiguousarray(scale, np.float32).reshape(-1))
        return self.g.op("MatMulNBits", [x, qb, sb], scope, domain="com.microsoft", K=width, N=n,
                         bits=bits, block_size=block, accuracy_level=4)

    def build(self) -> None:
        g, c = self.g, self.c
        H, KVH, D = c.hidden_size, c.num_kv_heads, c.head_dim
        x = g.input("inputs_embeds", F32, [1, "seq", H])
        pos = g.input("position_ids", I64, [1, "seq"])
        mask = g.input("attention_mask", F32, [1, 1, "seq", "total"])
        lidx = g.input("logits_index", I64, ["num_logits"])
        kv_shape = [1, KVH, "max_seq", D] if self.fused else [1, "past", KVH, D]
        past = []
        for i in range(c.num_layers):
            past.append((g.input(f"past_key.{i}", F32, kv_shape),
                         g.input(f"past_value.{i}", F32, kv_shape)))
        attend = self.fused_attention(pos, mask) if self.fused else self.plain_attention(pos, mask)

        presents = []
        layer_out = []
        h = self.rms_norm(x, "/model/layers.0/input_layernorm", "layers.0.input_layernorm.weight")
        for i in range(c.num_layers):
            L, n = f"/model/layers.{i}", f"layers.{i}"
            qkv = [f"{n}.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj")]
            if self.fused and not {"q_proj", "k_proj", "v_proj"} & set(self.lora_modules):
                q, k, v = self.project(h, f"{L}/attn/qkv_proj", qkv, split=False)[0], "", ""
            else:
                q, k, v = self.project(h, f"{L}/attn/qkv_proj", qkv)
            A = f"{L}/attn"
            att, k, v = attend(q, k, v, past[i], A)                                # [1, T, NH*D]
            presents.append((k, v))
            x, h = self.add_norm(x, self.linear(att, f"{A}/o_proj", f"{n}.self_attn.o_proj"),
                                 f"{L}/post_attention_layernorm", f"{n}.post_attention_layernorm.weight")
            M = f"{L}/mlp"
            gate, up = self.project(h, f"{M}/gate_up_proj", [f"{n}.mlp.gate_proj", f"{n}.mlp.up_proj"])
            gate = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{M}/act")], f"{M}/act")
            down = self.linear(g.op("Mul", [gate, up], M), f"{M}/down_proj", f"{n}.mlp.down_proj")
            if i + 1 < c.num_layers:
                x, h = self.add_norm(x, down, f"/model/layers.{i + 1}/input_layernorm",
                                     f"layers.{i + 1}.input_layernorm.weight")
            else:
                x, h = self.add_norm(x, down, "/model/norm", "norm.weight")
            layer_out.append(x)

        hidden = h                                                               # [1, T, H]
        picked = g.op("Gather", [hidden, lidx], "/model/lm_head", axis=1)       # [1, L, H]
        # [L, H] before the head, so its last node writes the bound logits output itself
        picked = g.op("Squeeze", [picked, g.const([0])], "/model/lm_head")      # [L, H]
        logits = self.lm_head(picked)                                            # [L, V]
        g.output(logits, "logits", F32, ["num_logits", c.vocab_size])
        if self.feature_layers:   # EAGLE-3 features: residual stream after chosen layers
            feats = g.op("Concat", [layer_out[i] for i in self.feature_layers], "/model/features",
                         axis=-1)
            g.output(feats, "hidden_states", F32, [1, "seq", H * len(self.feature_layers)])
        else:
            g.output(hidden, "hidden_states", F32, [1, "seq", H])
        for i, (k, v) in enumerate(presents):
            g.output(k, f"present_key.{i}", F32, kv_shape if self.fused else [1, "seq", KVH, D])
            g.output(v, f"present_value.{i}", F32, kv_shape if self.fused else [1, "seq", KVH, D])


def export_decoder(weights: ModelWeights, out_dir: str, weight_file: WeightFile,
                   name: str = "decoder", lora_modules: Sequence[str] = (),
                   feature_layers: Sequence[int] = (), quantization: str = "none",
                   fused: bool = False, info: Optional[Dict[str, Any]] = None,
                   requant: Optional[Requantizer] = None) -> str:
    """Write ``{name}.onnx`` into out_dir (weights into weight_file); return the path.

    quantization: "none" (float32 weights, opset 17), "int4" (block-wise
    signed INT4 projections and an INT8 LM head, opset 21: the file's own
    blocks where it has them, exact), "int4-sym" (the same with
    asymmetric file blocks re-quantized symmetric: no offset correction) or
    "int8" (block-wise INT8 everywhere: Q8_0 blocks kept, the rest
    re-quantized; twice int4's bytes, no offset correction). ``info`` receives
    "weight_origins": how many weights came from the file's own blocks and
    how many were re-quantized. fused: ONNX Runtime's GroupQueryAttention
    with head-major KV buffers (a CPU-only graph; see _Decoder.fused_attention).
    requant: how weights without usable file blocks are re-quantized (and a
    cache shared by the variants of one family); plain round to nearest if None.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.onnx")
    g = GraphBuilder(name, weights=weight_file, opset=17 if quantization == "none" else 21)
    dec = _Decoder(weights, g, lora_modules, feature_layers, quantization, fused, requant)
    dec.build()
    if info is not None:
        info["weight_origins"] = dict(dec.quant_origins)
        info["head_rows"] = dec.head_rows
    # LoRA inputs go after the KV inputs, as decoder_io_names lists them
    order = {n: i for i, n in enumerate(decoder_io_names(weights.config.num_layers, lora_modules,
                                                         dec.head_rows)["inputs"])}
    g.inputs.sort(key=lambda v: order[v.name])
    g.save(path, doc=__doc__ or "")
    return path
