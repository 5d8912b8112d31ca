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

Vocabulary reduction (``vocab``, runtime/vocab.py): the LM head keeps the
rows of K kept ids; ``logits`` stays [L, V], -inf off the kept ids
(lm_head.to_model_ids).

Two variants share one weights file: ``decoder.onnx`` and
``decoder_lora.onnx``, whose every projection m in (q, k, v, o, gate, up,
down)_proj computes ``x @ W + (x @ a) @ b`` with r dynamic per slot.

The runtime binds ``past_*`` to rows [0, P) and ``present_*`` to rows
[P, P+T) of one [max_seq_len, KVH, D] buffer per layer, so new keys and values
land in the KV cache with no copy.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from onnx import TensorProto

from ..models.spec import ModelWeights
from ..contract import QUANTIZATIONS, decoder_io_names
from ..errors import ConfigError
from .graph import GraphBuilder, WeightFile
from .layers import Attend, LayerBuilder
from .lm_head import lm_head
from .projections import Requantizer

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


class DecoderGraph(LayerBuilder):
    """The decoder graph of the module docstring, layer by layer as models/llama.py computes it.

    One difference in form: each residual add is fused with the RMSNorm that
    follows it (:meth:`add_norm`), so the first layer's input norm stands alone
    and the last add carries the final norm. Shapes: T new tokens, P cached,
    S = P + T, H hidden, NH / KVH query / key-value heads, D head dim, F MLP
    width, L rows of logits_index, V vocabulary.
    """

    def __init__(self, weights: ModelWeights, g: GraphBuilder, lora_modules: Sequence[str] = (),
                 feature_layers: Sequence[int] = (), quantization: str = "none",
                 fused: bool = False, requant: Optional[Requantizer] = None, rope_rows: int = 0,
                 vocab: Optional[np.ndarray] = None):
        super().__init__(weights, g, quantization, fused, requant, lora_modules, rope_rows)
        self.feature_layers = tuple(feature_layers)
        #: [K] model ids the LM head keeps (None: the whole vocabulary)
        self.vocab = vocab
        #: whether the graph reads the embedding table as lm_head_rows (lm_head.head_modes)
        self.head_rows = False

    def build(self) -> None:
        """Add the inputs, every layer, the LM head and the outputs to the graph."""
        g, c = self.g, self.c
        H, KVH, D = c.hidden_size, c.num_kv_heads, c.head_dim
        x = g.input("inputs_embeds", F32, [1, "seq", H])                          # [1, T, H]
        pos = g.input("position_ids", I64, [1, "seq"])                            # [1, T]
        mask = g.input("attention_mask", F32, [1, 1, "seq", "total"])             # [1, 1, T, S]
        lidx = g.input("logits_index", I64, ["num_logits"])                       # [L]
        # plain: rows [0, P) of the cache; fused: the whole buffer, written in place
        kv_shape = [1, KVH, "max_seq", D] if self.fused else [1, "past", KVH, D]
        past = []
        for i in range(c.num_layers):
            past.append((g.input(f"past_key.{i}", F32, kv_shape),
                         g.input(f"past_value.{i}", F32, kv_shape)))
        attend = self.attention(pos, mask)   # its rotary tables serve every layer

        presents = []
        layer_out = []
        h = self.rms_norm(x, "/model/layers.0/input_layernorm", "layers.0.input_layernorm.weight")
        for i in range(c.num_layers):
            L = f"/model/layers.{i}"
            att, k, v = self.self_attn(i, h, past[i], attend)                    # [1, T, H]
            presents.append((k, v))
            # x = x + att; h = post_attention_layernorm(x)
            x, h = self.add_norm(x, att, f"{L}/post_attention_layernorm",
                                 f"layers.{i}.post_attention_layernorm.weight")  # [1, T, H] each
            down = self.mlp(i, h)                                                 # [1, T, H]
            # x = x + down; h = the next layer's input_layernorm(x), after the last layer norm(x)
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
        logits, self.head_rows = lm_head(self.proj, picked, self.vocab)          # [L, V]
        g.output(logits, "logits", F32, ["num_logits", c.vocab_size])
        if self.feature_layers:   # EAGLE-3 features: residual stream after chosen layers
            feats = g.op("Concat", [layer_out[i] for i in self.feature_layers], "/model/features",
                         axis=-1)                                                # [1, T, 3H]
            g.output(feats, "hidden_states", F32, [1, "seq", H * len(self.feature_layers)])
        else:
            g.output(hidden, "hidden_states", F32, [1, "seq", H])
        for i, (k, v) in enumerate(presents):
            g.output(k, f"present_key.{i}", F32, kv_shape if self.fused else [1, "seq", KVH, D])
            g.output(v, f"present_value.{i}", F32, kv_shape if self.fused else [1, "seq", KVH, D])

    def self_attn(self, i: int, h: str, past: Tuple[str, str], attend: Attend) -> Tuple[str, str, str]:
        """(o_proj(attention(q, k, v)) [1, T, H], present key, present value) of layer i."""
        A, n = f"/model/layers.{i}/attn", f"layers.{i}.self_attn"
        qkv = [f"{n}.{m}" for m in ("q_proj", "k_proj", "v_proj")]
        if self.fused and not {"q_proj", "k_proj", "v_proj"} & set(self.proj.lora_modules):
            # packed [q | k | v] [1, T, (NH + 2 KVH) * D], split inside GroupQueryAttention
            q, k, v = self.proj.project(h, f"{A}/qkv_proj", qkv, split=False)[0], "", ""
        else:
            q, k, v = self.proj.project(h, f"{A}/qkv_proj", qkv)      # [1, T, NH*D], [1, T, KVH*D] x 2
        att, k, v = attend(q, k, v, past, A)                                     # [1, T, NH*D]
        return self.proj.linear(att, f"{A}/o_proj", f"{n}.o_proj"), k, v        # [1, T, H]

    def mlp(self, i: int, h: str) -> str:
        """down_proj(silu(gate_proj(h)) * up_proj(h)) [1, T, H] of layer i."""
        g, M, n = self.g, f"/model/layers.{i}/mlp", f"layers.{i}.mlp"
        gate, up = self.proj.project(h, f"{M}/gate_up_proj", [f"{n}.gate_proj", f"{n}.up_proj"])  # [1, T, F]
        gate = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{M}/act")], f"{M}/act")  # silu
        return self.proj.linear(g.op("Mul", [gate, up], M), f"{M}/down_proj", f"{n}.down_proj")


def export_decoder(weights: ModelWeights, out_dir: str, weight_file: WeightFile,
                   name: str = "decoder", lora_modules: Sequence[str] = (),
                   feature_layers: Sequence[int] = (), quantization: str = "none",
                   fused: bool = False, info: Optional[Dict[str, Any]] = None,
                   requant: Optional[Requantizer] = None, rope_rows: int = 0,
                   vocab: Optional[np.ndarray] = None) -> str:
    """Write ``{name}.onnx`` into out_dir (weights into weight_file); return the path.

    quantization: "none" (float32 weights, opset 17), "int4" (block-wise
    signed INT4 projections and an INT8 LM head, opset 21: the file's own
    blocks where it has them, exact), "int4-sym" (the same with
    asymmetric file blocks re-quantized symmetric: no offset correction) or
    "int8" (block-wise INT8 everywhere: Q8_0 blocks kept, the rest
    re-quantized; twice int4's bytes, no offset correction). ``info`` receives
    "weight_origins": how many weights came from the file's own blocks and
    how many were re-quantized. fused: ONNX Runtime's GroupQueryAttention
    with head-major KV buffers (a CPU-only graph; see LayerBuilder.fused_attention in layers.py).
    requant: how weights without usable file blocks are re-quantized (and a
    cache shared by the variants of one family); plain round to nearest if None.
    rope_rows: positions the fused graph's rotary tables must cover (layers.rope_table_rows).
    vocab: [K] ascending model ids a reduced LM head keeps (None: the whole head).
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.onnx")
    g = GraphBuilder(name, weights=weight_file, opset=17 if quantization == "none" else 21)
    dec = DecoderGraph(weights, g, lora_modules, feature_layers, quantization, fused, requant, rope_rows,
                       vocab)
    dec.build()
    if info is not None:
        info["weight_origins"] = dict(dec.proj.quant_origins)
        info["head_rows"] = dec.head_rows
    # LoRA inputs go after the KV inputs, as decoder_io_names lists them
    order = {n: i for i, n in enumerate(decoder_io_names(weights.config.num_layers, lora_modules,
                                                         dec.head_rows)["inputs"])}
    g.inputs.sort(key=lambda v: order[v.name])
    g.save(path, doc=__doc__ or "")
    return path
