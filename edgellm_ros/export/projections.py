"""Projections ``x @ W^T`` in each weight format of the exported graphs.

- "none": float32 weights, one MatMul.
- "int4" / "int4-sym" / "int8": block-wise signed INT4 or INT8 weights
  (blocks of 32 along the input) through DequantizeLinear + MatMul, opset 21;
  ONNX Runtime fuses the pair into MatMulNBits. Q4_1-style blocks with offsets
  ("int4" keeps them) add the offset correction: a float32 matmul on the
  input's block sums in the plain graph, extra 4-bit rows over a widened input
  in the fused CPU graph.
- MatMulNBits written directly, for ``If`` branches (the LM head's modes).

:class:`Projections` adds the biases, packs projections of one input into one
matmul and adds the LoRA slots, ``(x @ a) @ b``, of the LoRA variant.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import TensorProto

from ..contract import lora_input_names, module_shapes
from ..models.quant import BLOCK, BlockQuant, quantize_symmetric
from ..models.spec import ModelWeights
from .graph import GraphBuilder, pack_int

F32 = TensorProto.FLOAT


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


class Projections:
    """The projections of one graph, in its weight format (see the module docstring).

    quantization: one of contract.QUANTIZATIONS; fused: the fused CPU
    graph (offset rows instead of the block-sum correction); requant: how
    weights without usable file blocks are re-quantized; lora_modules: the
    modules given LoRA slots. quant_origins counts the weights per origin
    (the file's blocks, re-quantized).
    """

    def __init__(self, weights: ModelWeights, g: GraphBuilder, quantization: str = "none",
                 fused: bool = False, requant: Optional[Requantizer] = None,
                 lora_modules: Sequence[str] = ()):
        self.w, self.c, self.g = weights.tensors, weights.config, g
        self.requant = requant or Requantizer()
        self.fused = fused
        self.blocks = weights.quantized
        self.lora_modules = tuple(lora_modules)
        self.quantization = quantization
        self.quant_origins: Dict[str, int] = {}

    def matmul_weight(self, x: str, scope: str, key: str, names: Sequence[str]) -> str:
        """The product x @ [W_1; W_2; ...]^T for the weights ``names`` (each [out_i, in]), stored as one.

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
        """The product x @ (q * scale + offsets)^T for Q4_1-style blocks in one 4-bit MatMulNBits.

        The fused graph's form.

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
        """The product x @ (q * scale)^T for signed INT4 / INT8 blocks (q [N, K], scale [N, K/32]).

        Block-wise DequantizeLinear + MatMul (opset 21; ONNX Runtime fuses the
        pair into MatMulNBits with the session's accuracy level, int4_compute).
        """
        g = self.g
        elem = TensorProto.INT4 if bits == 4 else TensorProto.INT8
        qt = g.weight(f"{key}.q{bits}", pack_int(q.T, bits), elem_type=elem, dims=[q.shape[1], q.shape[0]])
        st = g.weight(f"{key}.scale", np.ascontiguousarray(scale.T, np.float32))
        w = g.op("DequantizeLinear", [qt, st], scope, axis=0, block_size=BLOCK)  # [K, N]
        return g.op("MatMul", [x, w], scope)

    def matmul_nbits(self, x: str, q: np.ndarray, scale: np.ndarray, bits: int, block: int,
                     scope: str, key: str) -> str:
        """The product x @ W^T as ONNX Runtime's MatMulNBits (int8 activations).

        W [N, K] = q * scale in blocks of ``block`` (q signed, scale [N, K/block]),
        written directly: for If branches, which ONNX Runtime's DequantizeLinear +
        MatMul fusion does not reach.
        """
        n, width = q.shape
        u: np.ndarray = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).reshape(n, width // block, block)
        if bits == 4:   # two per byte, the lower index in the low nibble
            u = u[..., 0::2] | (u[..., 1::2] << 4)
        qb = self.g.weight(f"{key}.mnb{bits}", np.ascontiguousarray(u))
        sb = self.g.weight(f"{key}.mnb{bits}.scale", np.ascontiguousarray(scale, np.float32).reshape(-1))
        return self.g.op("MatMulNBits", [x, qb, sb], scope, domain="com.microsoft", K=width, N=n,
                         bits=bits, block_size=block, accuracy_level=4)

    def project(self, x: str, scope: str, names: Sequence[str], split: bool = True) -> List[str]:
        """Each projection in ``names``: x @ W^T (+ b) (+ (x @ a) @ b for LoRA slots).

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
                g.input(a_name, F32, [n_in, rank])                                # [in, r]
                g.input(b_name, F32, [rank, n_out])                               # [r, out]
                sc = f"{scope}/{module}"
                low = g.op("MatMul", [x, a_name], f"{sc}/lora_a")
                out = g.op("Add", [out, g.op("MatMul", [low, b_name], f"{sc}/lora_b")], f"{sc}/lora")
            result.append(out)
        return result

    def linear(self, x: str, scope: str, name: str) -> str:
        return self.project(x, scope, [name])[0]
