"""One in-memory description of a decoder-only model, whatever file it came from.

Weights use the Hugging Face Llama names without the ``model.`` prefix and the
Hugging Face layout: linear weights are ``[out_features, in_features]`` and the
Q/K rows are in the half-split rotary order (``rotate_half``), so every loader
(GGUF, safetensors) hands the same tensors to the reference and to the export.

    embed_tokens.weight                       [V, H]
    layers.{i}.input_layernorm.weight         [H]
    layers.{i}.self_attn.q_proj.weight        [NH*D, H]   (+ .bias [NH*D] for Qwen2)
    layers.{i}.self_attn.k_proj.weight        [KVH*D, H]  (+ .bias)
    layers.{i}.self_attn.v_proj.weight        [KVH*D, H]  (+ .bias)
    layers.{i}.self_attn.o_proj.weight        [H, NH*D]
    layers.{i}.post_attention_layernorm.weight [H]
    layers.{i}.mlp.gate_proj.weight           [F, H]
    layers.{i}.mlp.up_proj.weight             [F, H]
    layers.{i}.mlp.down_proj.weight           [H, F]
    norm.weight                               [H]
    lm_head.weight                            [V, H]  (absent when tied)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar

import numpy as np

from ..errors import ModelLoadError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_C = TypeVar("_C", bound="FromDict")


class FromDict:
    """Mixin of the config dataclasses: ``from_dict`` ignoring unknown keys (as mlx-lm's BaseModelArgs)."""

    @classmethod
    def from_dict(cls: Type[_C], d: Mapping[str, Any]) -> _C:
        """Build from a mapping (a manifest, a JSON file); keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


#: Bounds of every hyper-parameter a model file may declare: (kind, lowest, highest).
#: Far above any model a robot runs (Llama 3.1 405B: 126 layers, H 16384, 128 heads,
#: vocab 128256, context 131072), so they only stop hostile or corrupt values
#: before anything is sized from them.
FIELD_BOUNDS: Dict[str, Tuple[type, float, float]] = {
    "num_layers": (int, 1, 1024),
    "hidden_size": (int, 1, 65536),
    "intermediate_size": (int, 1, 262144),
    "num_heads": (int, 1, 1024),
    "num_kv_heads": (int, 1, 1024),
    "head_dim": (int, 2, 1024),
    "vocab_size": (int, 1, 1 << 21),
    "max_position_embeddings": (int, 1, 1 << 24),
    "rope_theta": (float, 1.0, 1e12),
    "rms_norm_eps": (float, 1e-12, 0.1),
}


def bounded(value: Any, field: str, where: str, bound: Optional[str] = None) -> Any:
    """``value`` as FIELD_BOUNDS[field]'s kind when inside its bounds; else ModelLoadError.

    ``where`` names the file and key in the message ("model.gguf: llama.block_count").
    A bool, a string, NaN or an infinity is refused, never converted.
    """
    kind, lo, hi = FIELD_BOUNDS[bound or field]
    ok = type(value) is int or (kind is float and type(value) is float)
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():   # numpy scalars (GGUF values)
        ok, value = True, value.item()
    if not ok or isinstance(value, bool) or not (lo <= value <= hi):   # NaN fails the comparison
        span = f"[{int(lo)}, {int(hi)}]" if kind is int else f"[{lo:g}, {hi:g}]"
        raise ModelLoadError(f"{where} = {value!r}: {field} must be {'an integer' if kind is int else 'a number'} "
                             f"in {span}")
    return kind(value)


@dataclass(frozen=True)
class ModelConfig(FromDict):
    """Architecture hyper-parameters of a Llama-family decoder."""

    # Architecture family name ("llama"; Qwen2 is llama with q/k/v biases).
    architecture: str
    # Decoder layers.
    num_layers: int
    # Model width H.
    hidden_size: int
    # MLP width F.
    intermediate_size: int
    # Query heads NH.
    num_heads: int
    # Key/value heads KVH (grouped-query attention when < NH).
    num_kv_heads: int
    # Per-head width D.
    head_dim: int
    # Vocabulary size V.
    vocab_size: int
    # Rotary base.
    rope_theta: float = 10000.0
    # RMSNorm epsilon.
    rms_norm_eps: float = 1e-5
    # The LM head shares the embedding matrix.
    tie_word_embeddings: bool = False
    # q/k/v projections carry biases (Qwen2).
    attention_bias: bool = False
    # Training context length (informational; the KV cache size is ours).
    max_position_embeddings: int = 2048
    # Llama-3 style rope scaling dict, or None.
    rope_scaling: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        for name in FIELD_BOUNDS:
            bounded(getattr(self, name), name, f"model config {name}")
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ModelLoadError(f"head_dim must be even for rotary embedding, got {self.head_dim}")

    @classmethod
    def checked(cls, where: str, **fields: Any) -> "ModelConfig":
        """Build one from a file's values; a ModelLoadError names ``where`` (the file)."""
        try:
            return cls(**fields)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{where}: {exc}") from exc

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class ModelWeights:
    """A loaded model: its config, float32 weights and tokenizer metadata."""

    config: ModelConfig
    # Tensor name (see module docstring) -> float32 array.
    tensors: Dict[str, np.ndarray]
    # Where it came from (a file or a folder).
    source: str
    # Tokenizer source: ("gguf", metadata dict) or ("hf", folder path).
    tokenizer_source: tuple = field(default=("none", None))
    # Tensor name -> models.quant.BlockQuant: the integer blocks the file stores
    # (GGUF Q4_0 / Q4_1 / Q8_0), which ``tensors`` holds dequantized.
    quantized: Dict[str, Any] = field(default_factory=dict, repr=False)

    def lm_head(self) -> np.ndarray:
        """[V, H] output projection (the embedding when tied)."""
        if "lm_head.weight" in self.tensors:
            return self.tensors["lm_head.weight"]
        return self.tensors["embed_tokens.weight"]

    def check(self) -> None:
        """Raise ModelLoadError when a tensor is missing or has the wrong shape."""
        c = self.config
        H, F, V, D = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
        want = {"embed_tokens.weight": (V, H), "norm.weight": (H,)}
        if not c.tie_word_embeddings:
            want["lm_head.weight"] = (V, H)
        for i in range(c.num_layers):
            p = f"layers.{i}."
            want.update({
                p + "input_layernorm.weight": (H,),
                p + "post_attention_layernorm.weight": (H,),
                p + "self_attn.q_proj.weight": (c.num_heads * D, H),
                p + "self_attn.k_proj.weight": (c.num_kv_heads * D, H),
                p + "self_attn.v_proj.weight": (c.num_kv_heads * D, H),
                p + "self_attn.o_proj.weight": (H, c.num_heads * D),
                p + "mlp.gate_proj.weight": (F, H),
                p + "mlp.up_proj.weight": (F, H),
                p + "mlp.down_proj.weight": (H, F),
            })
            if c.attention_bias:
                want[p + "self_attn.q_proj.bias"] = (c.num_heads * D,)
                want[p + "self_attn.k_proj.bias"] = (c.num_kv_heads * D,)
                want[p + "self_attn.v_proj.bias"] = (c.num_kv_heads * D,)
        for name, shape in want.items():
            t = self.tensors.get(name)
            if t is None:
                raise ModelLoadError(f"{self.source}: tensor {name} is missing")
            if tuple(t.shape) != shape:
                raise ModelLoadError(
                    f"{self.source}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
