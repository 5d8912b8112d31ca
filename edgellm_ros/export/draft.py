"""ONNX export of an EAGLE draft step (batch 1); same op set as the decoder.

``draft.onnx``
| name            | dtype   | shape          | meaning                                            |
|-----------------|---------|----------------|----------------------------------------------------|
| inputs_embeds   | float32 | [1, T, H]      | base embeddings of the tokens                      |
| hidden_in       | float32 | [1, T, H]      | EAGLE-3: fc(features) or the parent's hidden_out;  |
|                 |         |                | EAGLE-1: the base feature or the parent's output   |
| position_ids    | int64   | [1, T]         | rotary positions                                   |
| attention_mask  | float32 | [1, 1, T, P+T] | additive (causal, or the tree mask)                |
| logits_index    | int64   | [L]            | rows whose logits are wanted                       |
| past_key/value  | float32 | [1, P, KVH, D] | the draft's own KV cache rows [0, P)               |
| logits (out)    | float32 | [L, Vd]        | over the draft vocabulary (EAGLE-1: Vd = V)        |
| hidden_out      | float32 | [1, T, H]      | the next step's hidden_in                          |
| present_key/value (out) | float32 | [1, T, KVH, D] | rows [P, P+T) of the draft cache           |

``draft_fc.onnx`` (EAGLE-3 only): features [1, T, F] -> hidden [1, T, H].

The CPU variant (quantization "int8", ONNX Runtime only) uses the decoder's
fused CPU ops: q/k/v and gate/up packed into one matmul each, ONNX Runtime's
GroupQueryAttention (rotary inside, the tree mask as attention_bias) with a
head-major KV buffer [1, KVH, max_seq, D] bound as both past and present, and
SkipSimplifiedLayerNormalization for the residual add + norm.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np
from onnx import TensorProto

from ..errors import ConfigError
from ..models.eagle import DraftConfig
from ..models.quant import quantize_symmetric
from ..models.spec import ModelWeights
from .graph import GraphBuilder, WeightFile
from .layers import LayerBuilder
from .projections import Projections

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


DRAFT_QUANTIZATIONS = ("none", "int8")


def draft_matmul(p: Projections, x: str, scope: str, key: str, w: np.ndarray, int8: bool) -> str:
    """The product x @ w^T, w [out, in]: float32, or block-wise INT8 (32 per block, symmetric).

    INT8 through DequantizeLinear, which ONNX Runtime runs as one MatMulNBits kernel.
    """
    if int8:
        return p.quantized_matmul(x, scope, key, [quantize_symmetric(w, 8)])
    return p.g.op("MatMul", [x, p.g.weight(key, w.T)], scope)


class _Draft(LayerBuilder):
    def __init__(self, cfg: DraftConfig, w: Dict[str, np.ndarray], base_head: np.ndarray,
                 g: GraphBuilder, quantization: str = "none"):
        weights = ModelWeights(cfg.rope(), w, "draft")
        super().__init__(weights, g, quantization=quantization, fused=quantization == "int8")
        self.d, self.base_head = cfg, base_head

    def matmul(self, x: str, scope: str, *names: str) -> str:
        """The product x @ [W_1; W_2; ...]^T: one matmul over the named weights, packed."""
        w = np.concatenate([self.w[n] for n in names], axis=0) if len(names) > 1 else self.w[names[0]]
        key = "draft." + "+".join(names)
        return draft_matmul(self.proj, x, scope, key, w, self.quantization == "int8")

    def self_attn(self, x: str, pos: str, mask: str, past: tuple, p: str, A: str) -> tuple:
        """(attention output [1, T, NH*D], present key, present value)."""
        names = [p + f"self_attn.{m}_proj.weight" for m in "qkv"]
        if self.fused:   # packed [q | k | v] straight into GroupQueryAttention
            return self.fused_attention(pos, mask)(self.matmul(x, f"{A}/qkv_proj", *names), "", "", past, A)
        q, k, v = (self.matmul(x, f"{A}/{m}_proj", n) for m, n in zip("qkv", names))
        return self.plain_attention(pos, mask)(q, k, v, past, A)

    def build(self) -> None:
        g, d = self.g, self.d
        H, KVH, D = d.hidden_size, d.num_kv_heads, d.head_dim
        p = "midlayer." if d.layout == "eagle3" else "layers.0."
        emb = g.input("inputs_embeds", F32, [1, "seq", H])
        hid = g.input("hidden_in", F32, [1, "seq", H])
        pos = g.input("position_ids", I64, [1, "seq"])
        mask = g.input("attention_mask", F32, [1, 1, "seq", "total"])
        lidx = g.input("logits_index", I64, ["num_logits"])
        kv_shape = [1, KVH, "max_seq", D] if self.fused else [1, "past", KVH, D]
        pk = g.input("past_key", F32, kv_shape)
        pv = g.input("past_value", F32, kv_shape)
        S = "/draft"
        if d.layout == "eagle3":
            e = self.rms_norm(emb, f"{S}/input_layernorm", p + "input_layernorm.weight")
            h = self.rms_norm(hid, f"{S}/hidden_norm", p + "hidden_norm.weight")
            x = g.op("Concat", [e, h], S, axis=-1)                               # [1, T, 2H]
            residual = hid
        else:
            x = g.op("Concat", [emb, hid], S, axis=-1)                           # [1, T, 2H]
            x = g.op("Add", [self.matmul(x, f"{S}/fc", "fc.weight"),
                             g.weight("draft.fc.bias", self.w["fc.bias"])], f"{S}/fc")
            residual = x
        A = f"{S}/attn"
        att, k, v = self.self_attn(x, pos, mask, (pk, pv), p, A)
        M = f"{S}/mlp"
        a, h = self.add_norm(residual, self.matmul(att, f"{A}/o_proj", p + "self_attn.o_proj.weight"),
                             f"{S}/post_attention_layernorm", p + "post_attention_layernorm.weight")
        gate_up = self.matmul(h, f"{M}/gate_up_proj", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        gate, up = g.op("Split", [gate_up, g.const([d.intermediate_size] * 2)], M, n_out=2, axis=-1)
        gate = g.op("Mul", [gate, g.op("Sigmoid", [gate], M)], M)
        out = g.op("Add", [a, self.matmul(g.op("Mul", [gate, up], M), f"{M}/down_proj",
                                          p + "mlp.down_proj.weight")], S)
        picked = g.op("Gather", [out, lidx], f"{S}/lm_head", axis=1)            # [1, L, H]
        if d.layout == "eagle3":
            picked = self.rms_norm(picked, f"{S}/norm", "norm.weight")
            head = self.w["lm_head.weight"]
        else:
            head = self.base_head
        logits = draft_matmul(self.proj, picked, f"{S}/lm_head", "draft.lm_head.weight",
                              np.asarray(head), self.quantization == "int8")
        logits = g.op("Squeeze", [logits, g.const([0])], f"{S}/lm_head")
        g.output(logits, "logits", F32, ["num_logits", head.shape[0]])
        g.output(out, "hidden_out", F32, [1, "seq", H])
        g.output(k, "present_key", F32, kv_shape if self.fused else [1, "seq", KVH, D])
        g.output(v, "present_value", F32, kv_shape if self.fused else [1, "seq", KVH, D])


def export_draft(cfg: DraftConfig, w: Dict[str, np.ndarray], base_head: np.ndarray,
                 out_dir: str, quantization: str = "none") -> Dict[str, str]:
    """Write draft.onnx (and draft_fc.onnx for EAGLE-3) with draft.data; return paths.

    quantization "int8": every projection, the fc and the LM head as block-wise
    INT8 (the CPU variant: a draft step reads a quarter of the bytes; the
    draft only proposes tokens, so its rounding never changes the output).
    """
    if quantization not in DRAFT_QUANTIZATIONS:
        raise ConfigError(f"draft quantization must be one of {DRAFT_QUANTIZATIONS}, "
                          f"got {quantization!r}")
    os.makedirs(out_dir, exist_ok=True)
    wf = WeightFile(os.path.join(out_dir, "draft.data"))
    paths = {}
    opset = 21 if quantization == "int8" else 17
    try:
        g = GraphBuilder("edgellm_draft", weights=wf, opset=opset)
        _Draft(cfg, w, base_head, g, quantization).build()
        paths["draft"] = os.path.join(out_dir, "draft.onnx")
        g.save(paths["draft"], doc=__doc__ or "")
        if cfg.layout == "eagle3":
            g = GraphBuilder("edgellm_draft_fc", weights=wf, opset=opset)
            feats = g.input("features", F32, [1, "seq", cfg.feature_size])
            y = draft_matmul(Projections(ModelWeights(cfg.rope(), w, "draft"), g, quantization),
                             feats, "/draft/fc", "draft.fc.weight", w["fc.weight"],
                             quantization == "int8")
            g.output(y, "hidden", F32, [1, "seq", cfg.hidden_size])
            paths["fc"] = os.path.join(out_dir, "draft_fc.onnx")
            g.save(paths["fc"], doc=__doc__ or "")
    finally:
        wf.close()
    return paths
