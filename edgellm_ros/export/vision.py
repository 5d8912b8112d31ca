"""ONNX export of the SmolVLM / Idefics3 vision tower: SigLIP encoder + pixel-shuffle connector.

Plain ONNX ops at opset 17 (Conv, Reshape, Transpose, MatMul, Add, Mul,
Softmax, LayerNormalization, Tanh, Pow), so the TensorRT 10.3 of JetPack 6
parses it; no contrib ops. One graph for every backend.

Inputs
| name          | dtype   | shape          | meaning                                              |
|---------------|---------|----------------|------------------------------------------------------|
| pixel_values  | float32 | [N, 3, S, S]   | N tiles, rescaled and normalised (vision.py)         |

Outputs
| name          | dtype   | shape          | meaning                                              |
|---------------|---------|----------------|------------------------------------------------------|
| image_embeds  | float32 | [N, Q, H]      | Q = (S/P / s)^2 image tokens per tile in the text    |
|               |         |                | model's width H, in prompt order                     |

S = tile side (vision image_size), P = patch side, s = connector scale factor.
The patch embedding is a Conv with kernel = stride = P; position embeddings are
a constant (every tile is a full S x S square, so the ids are 0..L-1); the
pixel shuffle is Reshape/Transpose with the batch dimension copied (0).
Node names follow ``/vision/layers.{i}/attn/q_proj/MatMul``.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional

import numpy as np
from onnx import TensorProto

from ..models.siglip import CONNECTOR_WEIGHT, VISION_PREFIX, VisionWeights
from .graph import GraphBuilder, WeightFile

F32 = TensorProto.FLOAT


def vision_io_names() -> Dict[str, list]:
    """Input and output names of the vision graph."""
    return {"inputs": ["pixel_values"], "outputs": ["image_embeds"]}


class _Vision:
    def __init__(self, vision: VisionWeights, g: GraphBuilder):
        self.w, self.c, self.g = vision.tensors, vision.config, g

    def weight(self, name: str, arr: Optional[np.ndarray] = None) -> str:
        arr = self.w[name] if arr is None else arr
        return self.g.weight(f"vision.{name}", np.ascontiguousarray(arr, dtype=np.float32))

    def linear(self, x: str, scope: str, name: str) -> str:
        """The product x @ W^T (+ b); W stored as [in, out]."""
        g = self.g
        y = g.op("MatMul", [x, self.weight(name + ".weight", self.w[name + ".weight"].T)], scope)
        if name + ".bias" in self.w:
            y = g.op("Add", [y, self.weight(name + ".bias")], scope)
        return y

    def layer_norm(self, x: str, scope: str, name: str) -> str:
        w, b = self.weight(name + ".weight"), self.weight(name + ".bias")
        return self.g.op("LayerNormalization", [x, w, b], scope, axis=-1,
                         epsilon=float(self.c.layer_norm_eps))

    def gelu_tanh(self, x: str, scope: str) -> str:
        """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        g = self.g
        cube = g.op("Mul", [g.op("Mul", [x, x], scope), x], scope)
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, np.float32)], scope)], scope)
        inner = g.op("Mul", [inner, g.const(math.sqrt(2.0 / math.pi), np.float32)], scope)
        t = g.op("Add", [g.op("Tanh", [inner], scope), g.const(1.0, np.float32)], scope)
        return g.op("Mul", [g.op("Mul", [x, t], scope), g.const(0.5, np.float32)], scope)

    def build(self) -> None:
        g, c, v = self.g, self.c, VISION_PREFIX
        S, P, E, NH = c.image_size, c.patch_size, c.hidden_size, c.num_heads
        D, n, s = E // NH, c.patches_per_side, c.scale_factor
        L = n * n
        px = g.input("pixel_values", F32, ["num_tiles", c.num_channels, S, S])

        emb = "/vision/embeddings"
        x = g.op("Conv", [px, self.weight(v + "embeddings.patch_embedding.weight"),
                          self.weight(v + "embeddings.patch_embedding.bias")],
                 emb + "/patch_embedding", kernel_shape=[P, P], strides=[P, P])      # [N, E, n, n]
        x = g.op("Reshape", [x, g.const([0, E, L])], emb)                              # [N, E, L]
        x = g.op("Transpose", [x], emb, perm=[0, 2, 1])                                # [N, L, E]
        pos = self.w[v + "embeddings.position_embedding.weight"][None]                 # [1, L, E]
        x = g.op("Add", [x, self.weight(v + "embeddings.position_embedding.weight", pos)], emb)

        scale = g.const(1.0 / math.sqrt(D), np.float32)
        for i in range(c.num_layers):
            Ls, n_ = f"/vision/layers.{i}", f"{v}encoder.layers.{i}"
            A = f"{Ls}/attn"
            h = self.layer_norm(x, f"{Ls}/layer_norm1", f"{n_}.layer_norm1")
            q = self.linear(h, f"{A}/q_proj", f"{n_}.self_attn.q_proj")
            k = self.linear(h, f"{A}/k_proj", f"{n_}.self_attn.k_proj")
            val = self.linear(h, f"{A}/v_proj", f"{n_}.self_attn.v_proj")
            heads = g.const([0, L, NH, D])
            q = g.op("Reshape", [q, heads], A)                                   # [N, L, NH, D]
            q = g.op("Transpose", [q], A, perm=[0, 2, 1, 3])                     # [N, NH, L, D]
            k = g.op("Reshape", [k, heads], A)
            k = g.op("Transpose", [k], A, perm=[0, 2, 3, 1])                     # [N, NH, D, L]
            val = g.op("Reshape", [val, heads], A)
            val = g.op("Transpose", [val], A, perm=[0, 2, 1, 3])                 # [N, NH, L, D]
            scores = g.op("MatMul", [g.op("Mul", [q, scale], A), k], A)         # [N, NH, L, L]
            probs = g.op("Softmax", [scores], A, axis=-1)
            att = g.op("MatMul", [probs, val], A)                                # [N, NH, L, D]
            att = g.op("Transpose", [att], A, perm=[0, 2, 1, 3])                 # [N, L, NH, D]
            att = g.op("Reshape", [att, g.const([0, L, E])], A)                  # [N, L, E]
            x = g.op("Add", [x, self.linear(att, f"{A}/out_proj", f"{n_}.self_attn.out_proj")], Ls)
            h = self.layer_norm(x, f"{Ls}/layer_norm2", f"{n_}.layer_norm2")
            M = f"{Ls}/mlp"
            h = self.gelu_tanh(self.linear(h, f"{M}/fc1", f"{n_}.mlp.fc1"), f"{M}/act")
            x = g.op("Add", [x, self.linear(h, f"{M}/fc2", f"{n_}.mlp.fc2")], Ls)
        x = self.layer_norm(x, "/vision/post_layernorm", v + "post_layernorm")          # [N, L, E]

        C = "/connector/pixel_shuffle"
        # [N, h, w/s, E*s] -> [N, w/s, h, E*s] -> [N, w/s, h/s, E*s*s] -> [N, h/s, w/s, E*s*s]
        x = g.op("Reshape", [x, g.const([0, n, n // s, E * s])], C)
        x = g.op("Transpose", [x], C, perm=[0, 2, 1, 3])
        x = g.op("Reshape", [x, g.const([0, n // s, n // s, E * s * s])], C)
        x = g.op("Transpose", [x], C, perm=[0, 2, 1, 3])
        x = g.op("Reshape", [x, g.const([0, c.image_seq_len, E * s * s])], C)  # [N, Q, E*s*s]
        proj = self.weight(CONNECTOR_WEIGHT, self.w[CONNECTOR_WEIGHT].T)        # [E*s*s, H]
        y = g.op("MatMul", [x, proj], "/connector/modality_projection")        # [N, Q, H]
        g.output(y, "image_embeds", F32, ["num_tiles", c.image_seq_len, c.text_hidden_size])


def export_vision(vision: VisionWeights, out_dir: str, weight_file: Optional[WeightFile] = None,
                  name: str = "vision") -> str:
    """Write ``{name}.onnx`` into out_dir (weights into weight_file, else inline); return its path."""
    vision.check()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.onnx")
    g = GraphBuilder(name, weights=weight_file)
    _Vision(vision, g).build()
    g.save(path, doc=__doc__ or "")
    return path
