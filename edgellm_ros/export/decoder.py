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
from typing import Dict, List, Sequence

import numpy as np
from onnx import TensorProto

from ..models.llama import rope_inv_freq
from ..models.spec import ModelWeights
from ..lora import lora_input_names, module_shapes
from .graph import GraphBuilder, WeightFile

#: Additive mask value for dropped positions (finite in float16 too).
MASK_VALUE = -65504.0
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def decoder_io_names(num_layers: int, lora_modules: Sequence[str] = ()) -> Dict[str, List[str]]:
    """Input and output names of the decoder graph, in order."""
    ins = ["inputs_embeds", "position_ids", "attention_mask", "logits_index"]
    outs = ["logits", "hidden_states"]
    for i in range(num_layers):
        ins += [f"past_key.{i}", f"past_value.{i}"]
        outs += [f"present_key.{i}", f"present_value.{i}"]
    for i in range(num_layers):
        for m in lora_modules:
            ins += list(lora_input_names(i, m))
    return {"inputs": ins, "outputs": outs}


class _Decoder:
    def __init__(self, weights: ModelWeights, g: GraphBuilder, lora_modules: Sequence[str] = (),
                 feature_layers: Sequence[int] = ()):
        self.w, self.c, self.g = weights.tensors, weights.config, g
        self.lora_modules = tuple(lora_modules)
        self.feature_layers = tuple(feature_layers)
        self.lora_inputs: List[str] = []

    def linear(self, x: str, scope: str, name: str) -> str:
        """x @ W^T (+ b) (+ (x @ a) @ b for a LoRA slot); W stored as [in, out]."""
        g = self.g
        w = g.weight(f"model.{name}.weight", self.w[name + ".weight"].T)
        y = g.op("MatMul", [x, w], scope)
        bias = self.w.get(name + ".bias")
        if bias is not None:
            y = g.op("Add", [y, g.weight(f"model.{name}.bias", bias)], scope)
        layer, module = int(name.split(".")[1]), name.rsplit(".", 1)[1]
        if module in self.lora_modules:
            n_in, n_out = module_shapes(self.c)[module]
            a_name, b_name = lora_input_names(layer, module)
            rank = f"lora_rank.{layer}.{module}"
            self.lora_inputs += [g.input(a_name, F32, [n_in, rank]),
                                 g.input(b_name, F32, [rank, n_out])]
            low = g.op("MatMul", [x, a_name], f"{scope}/lora_a")
            y = g.op("Add", [y, g.op("MatMul", [low, b_name], f"{scope}/lora_b")], f"{scope}/lora")
        return y

    def rms_norm(self, x: str, scope: str, name: str) -> str:
        g = self.g
        sq = g.op("Mul", [x, x], scope)
        var = g.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
        var = g.op("Add", [var, g.const(self.c.rms_norm_eps, np.float32)], scope)
        inv = g.op("Reciprocal", [g.op("Sqrt", [var], scope)], scope)
        y = g.op("Mul", [x, inv], scope)
        return g.op("Mul", [y, g.weight(f"model.{name}", self.w[name])], scope)

    def rotate(self, x: str, cos: str, sin: str, scope: str) -> str:
        """x * cos + rotate_half(x) * sin; x [1, T, heads, D], cos/sin [1, T, 1, D]."""
        g, half = self.g, self.c.head_dim // 2
        x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([-1])], scope)
        x2 = g.op("Slice", [x, g.const([half]), g.const([2 * half]), g.const([-1])], scope)
        rot = g.op("Concat", [g.op("Neg", [x2], scope), x1], scope, axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], scope), g.op("Mul", [rot, sin], scope)], scope)

    def build(self) -> None:
        g, c = self.g, self.c
        H, NH, KVH, D = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        G = NH // KVH
        x = g.input("inputs_embeds", F32, [1, "seq", H])
        pos = g.input("position_ids", I64, [1, "seq"])
        mask = g.input("attention_mask", F32, [1, 1, "seq", "total"])
        lidx = g.input("logits_index", I64, ["num_logits"])
        past = []
        for i in range(c.num_layers):
            past.append((g.input(f"past_key.{i}", F32, [1, "past", KVH, D]),
                         g.input(f"past_value.{i}", F32, [1, "past", KVH, D])))

        # rotary tables, shared by all layers: [1, T, 1, D]
        s = "/model/rotary"
        ang = g.op("Unsqueeze", [g.op("Cast", [pos], s, to=F32), g.const([-1])], s)   # [1, T, 1]
        ang = g.op("Mul", [ang, g.const(rope_inv_freq(c), np.float32)], s)          # [1, T, D/2]
        ang = g.op("Concat", [ang, ang], s, axis=-1)                                # [1, T, D]
        cos = g.op("Unsqueeze", [g.op("Cos", [ang], s), g.const([2])], s)
        sin = g.op("Unsqueeze", [g.op("Sin", [ang], s), g.const([2])], s)
        scale = g.const(1.0 / math.sqrt(D), np.float32)

        presents = []
        layer_out = []
        for i in range(c.num_layers):
            L, n = f"/model/layers.{i}", f"layers.{i}"
            h = self.rms_norm(x, f"{L}/input_layernorm", f"{n}.input_layernorm.weight")
            q = self.linear(h, f"{L}/attn/q_proj", f"{n}.self_attn.q_proj")
            k = self.linear(h, f"{L}/attn/k_proj", f"{n}.self_attn.k_proj")
            v = self.linear(h, f"{L}/attn/v_proj", f"{n}.self_attn.v_proj")
            A = f"{L}/attn"
            q = g.op("Reshape", [q, g.const([0, 0, NH, D])], A)                   # [1, T, NH, D]
            k = g.op("Reshape", [k, g.const([0, 0, KVH, D])], A)                  # [1, T, KVH, D]
            v = g.op("Reshape", [v, g.const([0, 0, KVH, D])], A)
            q = self.rotate(q, cos, sin, f"{A}/q_rotary")
            k = self.rotate(k, cos, sin, f"{A}/k_rotary")
            presents.append((k, v))
            k_all = g.op("Concat", [past[i][0], k], A, axis=1)                   # [1, S, KVH, D]
            v_all = g.op("Concat", [past[i][1], v], A, axis=1)
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
            att = g.op("Reshape", [att, g.const([0, 0, NH * D])], A)             # [1, T, NH*D]
            x = g.op("Add", [x, self.linear(att, f"{A}/o_proj", f"{n}.self_attn.o_proj")], L)
            h = self.rms_norm(x, f"{L}/post_attention_layernorm",
                              f"{n}.post_attention_layernorm.weight")
            M = f"{L}/mlp"
            gate = self.linear(h, f"{M}/gate_proj", f"{n}.mlp.gate_proj")
            gate = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{M}/act")], f"{M}/act")
            up = self.linear(h, f"{M}/up_proj", f"{n}.mlp.up_proj")
            down = self.linear(g.op("Mul", [gate, up], M), f"{M}/down_proj", f"{n}.mlp.down_proj")
            x = g.op("Add", [x, down], L)
            layer_out.append(x)

        hidden = self.rms_norm(x, "/model/norm", "norm.weight")                # [1, T, H]
        picked = g.op("Gather", [hidden, lidx], "/model/lm_head", axis=1)       # [1, L, H]
        head = self.w.get("lm_head.weight", self.w["embed_tokens.weight"])
        logits = g.op("MatMul", [picked, g.weight("lm_head.weight", head.T)], "/model/lm_head")
        logits = g.op("Squeeze", [logits, g.const([0])], "/model/lm_head")      # [L, V]
        g.output(logits, "logits", F32, ["num_logits", c.vocab_size])
        if self.feature_layers:   # EAGLE-3 features: residual stream after chosen layers
            feats = g.op("Concat", [layer_out[i] for i in self.feature_layers], "/model/features",
                         axis=-1)
            g.output(feats, "hidden_states", F32, [1, "seq", H * len(self.feature_layers)])
        else:
            g.output(hidden, "hidden_states", F32, [1, "seq", H])
        for i, (k, v) in enumerate(presents):
            g.output(k, f"present_key.{i}", F32, [1, "seq", KVH, D])
            g.output(v, f"present_value.{i}", F32, [1, "seq", KVH, D])


def export_decoder(weights: ModelWeights, out_dir: str, weight_file: WeightFile,
                   name: str = "decoder", lora_modules: Sequence[str] = (),
                   feature_layers: Sequence[int] = ()) -> str:
    """Write ``{name}.onnx`` into out_dir (weights into weight_file); return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.onnx")
    g = GraphBuilder(name, weights=weight_file)
    dec = _Decoder(weights, g, lora_modules, feature_layers)
    dec.build()
    # LoRA inputs go after the KV inputs, as decoder_io_names lists them
    order = {n: i for i, n in enumerate(decoder_io_names(weights.config.num_layers,
                                                         lora_modules)["inputs"])}
    g.inputs.sort(key=lambda v: order[v.name])
    g.save(path, doc=__doc__ or "")
    return path
