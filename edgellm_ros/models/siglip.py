"""NumPy reference of the SmolVLM / Idefics3 vision tower: the oracle of the tests.

SigLIP vision transformer (patch embedding, learned position embeddings,
pre-LN encoder layers with a GELU-tanh MLP, post-LN) followed by the Idefics3
connector (pixel shuffle by ``scale_factor``, then one bias-free linear into
the text model's width). Shapes in comments use N = tiles, S = tile side in
pixels, P = patch side, n = S // P patches per side (a remainder of S is
dropped), L = n * n patches, E = vision width, NH = vision heads, D = E // NH,
F = vision MLP width, s = scale factor, Q = L // s**2 image tokens per tile,
H = text width.

Tensor names are transformers' Idefics3 names without the leading ``model.``::

    vision_model.embeddings.patch_embedding.weight         [E, 3, P, P]
    vision_model.embeddings.patch_embedding.bias           [E]
    vision_model.embeddings.position_embedding.weight      [L, E]
    vision_model.encoder.layers.{i}.layer_norm1.weight     [E]   (+ .bias)
    vision_model.encoder.layers.{i}.self_attn.q_proj.weight [E, E] (+ .bias; k, v, out_proj alike)
    vision_model.encoder.layers.{i}.layer_norm2.weight     [E]   (+ .bias)
    vision_model.encoder.layers.{i}.mlp.fc1.weight         [F, E] (+ .bias [F])
    vision_model.encoder.layers.{i}.mlp.fc2.weight         [E, F] (+ .bias [E])
    vision_model.post_layernorm.weight                     [E]   (+ .bias)
    connector.modality_projection.proj.weight              [H, E * s**2]

Every tile is a full S x S square (the processor never pads one), so the
patch attention mask is all ones and the position ids are 0..L-1; transformers
derives them by bucketing float coordinates, which equals 0..L-1 for the grids
of released checkpoints (n = 8, 16, 26, 27, 32) but not for every n (e.g. 25).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict

import numpy as np

from ..errors import InvalidRequest, ModelLoadError
from .spec import FromDict

VISION_PREFIX = "vision_model."
CONNECTOR_WEIGHT = "connector.modality_projection.proj.weight"


@dataclass(frozen=True)
class VisionConfig(FromDict):
    """Hyper-parameters of the SigLIP encoder and the Idefics3 connector."""

    # Vision width E.
    hidden_size: int
    # Vision MLP width F.
    intermediate_size: int
    # Encoder layers.
    num_layers: int
    # Attention heads NH (head width E // NH).
    num_heads: int
    # Tile side S in pixels (the encoder's image_size).
    image_size: int
    # Patch side P in pixels.
    patch_size: int
    # Pixel-shuffle factor s of the connector.
    scale_factor: int
    # Text model width H (the connector's output).
    text_hidden_size: int
    # Colour channels of pixel_values.
    num_channels: int = 3
    # LayerNorm epsilon.
    layer_norm_eps: float = 1e-6
    # MLP activation (only the tanh-approximated GELU is implemented).
    hidden_act: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "image_size",
                     "patch_size", "scale_factor", "text_hidden_size", "num_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelLoadError(
                    f"vision config {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ModelLoadError(
                f"vision hidden_size {self.hidden_size} is not a multiple of "
                f"num_heads {self.num_heads}")
        if self.patch_size > self.image_size:
            raise ModelLoadError(
                f"vision patch_size {self.patch_size} exceeds image_size {self.image_size}")
        if self.patches_per_side % self.scale_factor:
            raise ModelLoadError(
                f"{self.patches_per_side} patches per side cannot be pixel-shuffled by "
                f"scale_factor {self.scale_factor}")
        if self.hidden_act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise ModelLoadError(f"vision hidden_act {self.hidden_act!r} is not supported "
                                 "(only the tanh approximation of GELU)")

    @property
    def patches_per_side(self) -> int:
        """Patches along a side of the image: n = S // P."""
        return self.image_size // self.patch_size

    @property
    def image_seq_len(self) -> int:
        """Q: image tokens one tile becomes after the pixel shuffle."""
        return (self.patches_per_side // self.scale_factor) ** 2

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class VisionWeights:
    """A loaded vision tower: its config and float32 tensors (names in the module docstring)."""

    config: VisionConfig
    tensors: Dict[str, np.ndarray]
    # Where it came from.
    source: str = ""
    # Extra facts a caller may want (e.g. the HF model_type); not used by the math.
    meta: Dict[str, Any] = field(default_factory=dict)

    def expected_shapes(self) -> Dict[str, tuple]:
        c = self.config
        E, F, P, C = c.hidden_size, c.intermediate_size, c.patch_size, c.num_channels
        v = VISION_PREFIX
        want: Dict[str, tuple] = {
            v + "embeddings.patch_embedding.weight": (E, C, P, P),
            v + "embeddings.patch_embedding.bias": (E,),
            v + "embeddings.position_embedding.weight": (c.patches_per_side ** 2, E),
            v + "post_layernorm.weight": (E,), v + "post_layernorm.bias": (E,),
            CONNECTOR_WEIGHT: (c.text_hidden_size, E * c.scale_factor ** 2),
        }
        for i in range(c.num_layers):
            p = f"{v}encoder.layers.{i}."
            for norm in ("layer_norm1", "layer_norm2"):
                want[p + norm + ".weight"] = (E,)
                want[p + norm + ".bias"] = (E,)
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                want[p + f"self_attn.{proj}.weight"] = (E, E)
                want[p + f"self_attn.{proj}.bias"] = (E,)
            want.update({p + "mlp.fc1.weight": (F, E), p + "mlp.fc1.bias": (F,),
                         p + "mlp.fc2.weight": (E, F), p + "mlp.fc2.bias": (E,)})
        return want

    def check(self) -> None:
        """Raise ModelLoadError when a tensor is missing or has the wrong shape."""
        for name, shape in self.expected_shapes().items():
            t = self.tensors.get(name)
            if t is None:
                raise ModelLoadError(f"{self.source}: vision tensor {name} is missing")
            if tuple(t.shape) != shape:
                raise ModelLoadError(
                    f"{self.source}: vision tensor {name} has shape {tuple(t.shape)}, "
                    f"expected {shape}")


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (transformers' ``gelu_pytorch_tanh``)."""
    inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x ** 3)
    return 0.5 * x * (1.0 + np.tanh(inner))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * w + b


def patchify(pixel_values: np.ndarray, patch: int) -> np.ndarray:
    """[N, C, S, S] -> [N, L, C*P*P], patches in row-major order, each flattened (C, P, P).

    Pixels past the last whole patch are dropped, as the stride-P convolution
    drops them (SmolVLM-Instruct: 384 px tiles, 14 px patches, 27 per side).
    """
    n_img, c, h, w = pixel_values.shape
    h, w = h - h % patch, w - w % patch
    x = pixel_values[:, :, :h, :w].reshape(n_img, c, h // patch, patch, w // patch, patch)
    x = x.transpose(0, 2, 4, 1, 3, 5)                                   # [N, n, n, C, P, P]
    return x.reshape(n_img, (h // patch) * (w // patch), c * patch * patch)


def pixel_shuffle(x: np.ndarray, s: int) -> np.ndarray:
    """Idefics3's space-to-depth: [N, L, E] -> [N, L / s**2, E * s**2] (transformers' order)."""
    n_img, seq, e = x.shape
    side = int(round(math.sqrt(seq)))
    x = x.reshape(n_img, side, side // s, e * s)                       # [N, h, w/s, E*s]
    x = x.transpose(0, 2, 1, 3)                                         # [N, w/s, h, E*s]
    x = x.reshape(n_img, side // s, side // s, e * s * s)               # [N, w/s, h/s, E*s*s]
    x = x.transpose(0, 2, 1, 3)                                         # [N, h/s, w/s, E*s*s]
    return x.reshape(n_img, seq // (s * s), e * s * s)


class SiglipReference:
    """Evaluates encoder + connector on float32 weights."""

    def __init__(self, weights: VisionWeights):
        self.w = weights.tensors
        self.cfg = weights.config

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        return y if b is None else y + b

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """[N, C, S, S] float32 -> vision features [N, L, E] (after post_layernorm)."""
        c, v = self.cfg, VISION_PREFIX
        pixel_values = np.asarray(pixel_values, np.float32)
        want = (c.num_channels, c.image_size, c.image_size)
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != want:
            raise InvalidRequest(f"pixel_values must be [N, {', '.join(map(str, want))}], "
                                 f"got {list(pixel_values.shape)}")
        n_img, P, E, NH = pixel_values.shape[0], c.patch_size, c.hidden_size, c.num_heads
        D = E // NH
        conv = self.w[v + "embeddings.patch_embedding.weight"].reshape(E, -1)      # [E, C*P*P]
        x = patchify(pixel_values, P) @ conv.T                                     # [N, L, E]
        x = x + self.w[v + "embeddings.patch_embedding.bias"]
        x = x + self.w[v + "embeddings.position_embedding.weight"]                 # ids 0..L-1
        L = x.shape[1]
        for i in range(c.num_layers):
            p = f"{v}encoder.layers.{i}."
            h = layer_norm(x, self.w[p + "layer_norm1.weight"], self.w[p + "layer_norm1.bias"],
                           c.layer_norm_eps)
            q = self._linear(h, p + "self_attn.q_proj").reshape(n_img, L, NH, D)
            k = self._linear(h, p + "self_attn.k_proj").reshape(n_img, L, NH, D)
            val = self._linear(h, p + "self_attn.v_proj").reshape(n_img, L, NH, D)
            q = q.transpose(0, 2, 1, 3)                                             # [N, NH, L, D]
            k = k.transpose(0, 2, 3, 1)                                             # [N, NH, D, L]
            val = val.transpose(0, 2, 1, 3)                                         # [N, NH, L, D]
            scores = q @ k / np.float32(math.sqrt(D))                               # [N, NH, L, L]
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            attn = (probs @ val).transpose(0, 2, 1, 3).reshape(n_img, L, E)         # [N, L, E]
            x = x + self._linear(attn, p + "self_attn.out_proj")
            h = layer_norm(x, self.w[p + "layer_norm2.weight"], self.w[p + "layer_norm2.bias"],
                           c.layer_norm_eps)
            x = x + self._linear(gelu_tanh(self._linear(h, p + "mlp.fc1")), p + "mlp.fc2")
        return layer_norm(x, self.w[v + "post_layernorm.weight"], self.w[v + "post_layernorm.bias"],
                          c.layer_norm_eps).astype(np.float32)

    def connect(self, features: np.ndarray) -> np.ndarray:
        """Vision features [N, L, E] -> image embeddings [N, Q, H]."""
        shuffled = pixel_shuffle(features, self.cfg.scale_factor)                  # [N, Q, E*s*s]
        return (shuffled @ self.w[CONNECTOR_WEIGHT].T).astype(np.float32)          # [N, Q, H]

    def forward(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values [N, C, S, S] -> image embeddings [N, Q, H]."""
        return self.connect(self.encode(pixel_values))
