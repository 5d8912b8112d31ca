"""EAGLE draft networks: config, loading and the NumPy reference forward.

Two checkpoint layouts, both one decoder layer over the base model's features:

EAGLE-3 (what TensorRT-Edge-LLM, TensorRT-LLM and SGLang load)::

    config.json: hidden_size, num_attention_heads, num_key_value_heads,
                 intermediate_size, rms_norm_eps, rope_theta, vocab_size,
                 draft_vocab_size, target_hidden_size, target_layer_ids (opt.)
    fc.weight                          [H, 3 * Ht]   features of 3 base layers -> H
    midlayer.input_layernorm.weight    [H]           on the token embedding
    midlayer.hidden_norm.weight        [H]           on the incoming hidden state
    midlayer.self_attn.q_proj.weight   [NH*D, 2H]    attention reads [embedding; hidden]
    midlayer.self_attn.{k,v}_proj.weight [KVH*D, 2H]
    midlayer.self_attn.o_proj.weight   [H, NH*D]
    midlayer.post_attention_layernorm.weight, midlayer.mlp.{gate,up,down}_proj.weight
    norm.weight                        [H]
    lm_head.weight                     [Vd, H]       over the draft vocabulary
    d2t                                [Vd] int64    base id = draft id + d2t[draft id]

  step: h = fc(features) on the first step, the previous step's output after;
  x = [rms(emb) ; rms(h)]; a = h + o_proj(attn(x)); out = a + mlp(rms(a));
  logits = lm_head(rms(out)); the next step's h = out.

EAGLE-1::

    fc.weight [H, 2H], fc.bias [H]     over [embedding; feature]
    layers.0.self_attn.*, layers.0.post_attention_layernorm.weight, layers.0.mlp.*
    (no input_layernorm on layer 0; the base model's LM head, no final norm)

  step: x = fc([emb; f]); a = x + o_proj(attn(x)); out = a + mlp(rms(a));
  logits = base_lm_head(out); the next step's f = out.

Features (what the base graph exports as hidden_states): EAGLE-1 reads the
base's final-norm output (F = H); EAGLE-3 the residual stream after each
layer of ``target_layer_ids`` concatenated (F = 3H), by default
[2, L // 2, L - 3] (these are layer indices; transformers' ``hidden_states``
tuple holds the same tensors at index + 1).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import ModelLoadError
from .llama import causal_mask, rms_norm, rope_inv_freq, rotate, silu
from .spec import FIELD_BOUNDS, ModelConfig, bounded

LAYOUTS = ("eagle3", "eagle1")
#: The most bytes of a draft's config.json read.
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class DraftConfig:
    """Hyper-parameters of a one-layer EAGLE draft."""

    # "eagle3" or "eagle1".
    layout: str
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    # Base vocabulary V.
    vocab_size: int
    # Draft vocabulary Vd (EAGLE-3); = vocab_size for EAGLE-1.
    draft_vocab_size: int
    # Width of one base feature Ht.
    target_hidden_size: int
    # Base layers whose outputs form the features (EAGLE-3), () for EAGLE-1.
    target_layer_ids: Tuple[int, ...] = ()
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[Dict[str, Any]] = None

    @property
    def feature_size(self) -> int:
        """F: width of the base features the draft reads."""
        return self.target_hidden_size * max(1, len(self.target_layer_ids))

    def rope(self) -> ModelConfig:
        """A ModelConfig carrying what rotary embedding needs."""
        return ModelConfig("llama", 1, self.hidden_size, self.intermediate_size, self.num_heads,
                           self.num_kv_heads, self.head_dim, self.vocab_size, self.rope_theta,
                           self.rms_norm_eps, rope_scaling=self.rope_scaling)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["target_layer_ids"] = list(self.target_layer_ids)
        return d


def default_target_layers(num_layers: int) -> Tuple[int, ...]:
    """[2, L // 2, L - 3], clamped into range for very small test models."""
    return tuple(max(0, min(num_layers - 1, i)) for i in (2, num_layers // 2, num_layers - 3))


def read_config(folder: str) -> Dict[str, Any]:
    """The draft's config.json as an object (ModelLoadError naming the file otherwise)."""
    from ..loaders.jsonfile import read_json_object

    try:
        return read_json_object(os.path.join(folder, "config.json"), max_bytes=MAX_CONFIG_BYTES)
    except ModelLoadError as exc:
        raise ModelLoadError(f"EAGLE draft {folder}: {exc}") from exc


def load_draft(folder: str, base: ModelConfig) -> Tuple[DraftConfig, Dict[str, np.ndarray]]:
    """Read an EAGLE-3 or EAGLE-1 checkpoint folder and check it against the base model."""
    from ..loaders.hf import read_safetensors

    raw = read_config(folder)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) \
        if os.path.isdir(folder) else []
    if not files:
        raise ModelLoadError(f"EAGLE draft {folder}: no *.safetensors file")
    t: Dict[str, np.ndarray] = {}
    for f in files:
        for k, v in read_safetensors(os.path.join(folder, f)).items():
            t[k[len("model."):] if k.startswith("model.") else k] = v
    layout = "eagle3" if "midlayer.self_attn.q_proj.weight" in t else \
        "eagle1" if "layers.0.self_attn.q_proj.weight" in t else ""
    if not layout:
        raise ModelLoadError(f"EAGLE draft {folder}: neither an EAGLE-3 (midlayer.*) nor an "
                             "EAGLE-1 (layers.0.*) checkpoint")
    cfg = draft_config(raw, layout, base, os.path.join(folder, "config.json"))
    _check(cfg, t, base, folder)
    out = {k: (v.astype(np.int64) if k in ("d2t", "t2d") else v.astype(np.float32))
           for k, v in t.items()}
    if layout == "eagle3" and "d2t" not in out:
        out["d2t"] = np.zeros(cfg.draft_vocab_size, np.int64)
    return cfg, out


def draft_layers(raw: Dict[str, Any], where: str) -> Optional[Tuple[int, ...]]:
    """The EAGLE-3 ``target_layer_ids`` a draft config names (None: the default), type-checked."""
    eagle_cfg = raw.get("eagle_config") or {}
    if not isinstance(eagle_cfg, dict):
        raise ModelLoadError(f"{where}: eagle_config = {eagle_cfg!r} must be an object")
    layers = raw.get("target_layer_ids") or eagle_cfg.get("eagle_aux_hidden_state_layer_ids")
    if not layers:
        return None
    if not isinstance(layers, list) or len(layers) != 3 or \
            not all(type(i) is int and 0 <= i < FIELD_BOUNDS["num_layers"][2] for i in layers):
        raise ModelLoadError(f"{where}: target_layer_ids = {layers!r} must be three layer indices "
                             f"in [0, {FIELD_BOUNDS['num_layers'][2]:g})")
    return tuple(layers)


def draft_config(raw: Dict[str, Any], layout: str, base: ModelConfig, where: str) -> DraftConfig:
    """A DraftConfig from a checkpoint's config.json, every field checked (ModelLoadError names it)."""
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{where}: holds a {type(raw).__name__}, not an object")

    def get(key: str, field: str, default: Any, bound: Optional[str] = None) -> Any:
        value = raw.get(key)
        return bounded(default if value is None else value, field, f"{where}: {key}", bound)

    H = get("hidden_size", "hidden_size", base.hidden_size)
    heads = get("num_attention_heads", "num_heads", base.num_heads)
    vocab = get("vocab_size", "vocab_size", base.vocab_size)
    layers = (draft_layers(raw, where) or default_target_layers(base.num_layers)) if layout == "eagle3" else ()
    if any(i >= base.num_layers for i in layers):
        raise ModelLoadError(f"{where}: target_layer_ids = {list(layers)} outside the base model's "
                             f"{base.num_layers} layers")
    kv_heads = get("num_key_value_heads", "num_kv_heads", heads)
    if heads % kv_heads:
        raise ModelLoadError(f"{where}: num_attention_heads = {heads} is not a multiple of "
                             f"num_key_value_heads = {kv_heads}")
    rope_scaling = raw.get("rope_scaling", base.rope_scaling)
    if rope_scaling is not None and not isinstance(rope_scaling, dict):
        raise ModelLoadError(f"{where}: rope_scaling = {rope_scaling!r} must be an object or null")
    return DraftConfig(
        layout=layout, hidden_size=H, num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=get("head_dim", "head_dim", H // heads),
        intermediate_size=get("intermediate_size", "intermediate_size", base.intermediate_size),
        vocab_size=vocab,
        draft_vocab_size=get("draft_vocab_size", "draft_vocab_size", vocab, "vocab_size"),
        target_hidden_size=get("target_hidden_size", "target_hidden_size", base.hidden_size, "hidden_size"),
        target_layer_ids=tuple(layers),
        rms_norm_eps=get("rms_norm_eps", "rms_norm_eps", base.rms_norm_eps),
        rope_theta=get("rope_theta", "rope_theta", base.rope_theta),
        rope_scaling=rope_scaling)


def _check(cfg: DraftConfig, t: Dict[str, np.ndarray], base: ModelConfig, folder: str) -> None:
    H, D, NH, KVH = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    if H != base.hidden_size or cfg.vocab_size != base.vocab_size:
        raise ModelLoadError(
            f"EAGLE draft {folder}: hidden {H} / vocab {cfg.vocab_size} do not match the base "
            f"model's {base.hidden_size} / {base.vocab_size}")
    if any(not 0 <= i < base.num_layers for i in cfg.target_layer_ids):
        raise ModelLoadError(f"EAGLE draft {folder}: target_layer_ids {cfg.target_layer_ids} "
                             f"outside the base model's {base.num_layers} layers")
    p = "midlayer." if cfg.layout == "eagle3" else "layers.0."
    x_in = 2 * H if cfg.layout == "eagle3" else H
    want = {p + "self_attn.q_proj.weight": (NH * D, x_in), p + "self_attn.k_proj.weight": (KVH * D, x_in),
            p + "self_attn.v_proj.weight": (KVH * D, x_in), p + "self_attn.o_proj.weight": (H, NH * D),
            p + "post_attention_layernorm.weight": (H,),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, H),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, H),
            p + "mlp.down_proj.weight": (H, cfg.intermediate_size)}
    if cfg.layout == "eagle3":
        want.update({"fc.weight": (H, cfg.feature_size), p + "input_layernorm.weight": (H,),
                     p + "hidden_norm.weight": (H,), "norm.weight": (H,),
                     "lm_head.weight": (cfg.draft_vocab_size, H)})
        if "d2t" in t:
            want["d2t"] = (cfg.draft_vocab_size,)
    else:
        want.update({"fc.weight": (H, 2 * H)})
    for name, shape in want.items():
        if name not in t:
            raise ModelLoadError(f"EAGLE draft {folder}: tensor {name} is missing")
        if tuple(t[name].shape) != shape:
            raise ModelLoadError(f"EAGLE draft {folder}: tensor {name} has shape "
                                 f"{tuple(t[name].shape)}, expected {shape}")
    if "d2t" in t:   # base id = draft id + d2t[draft id] must be a base token
        base_ids = np.arange(cfg.draft_vocab_size) + t["d2t"].astype(np.int64)
        bad = np.flatnonzero((base_ids < 0) | (base_ids >= cfg.vocab_size))
        if len(bad):
            raise ModelLoadError(f"EAGLE draft {folder}: tensor d2t maps draft id {int(bad[0])} to base id "
                                 f"{int(base_ids[bad[0]])}, outside the vocabulary of {cfg.vocab_size}")


class DraftReference:
    """NumPy forward of a draft step (the oracle of the draft graph)."""

    def __init__(self, cfg: DraftConfig, w: Dict[str, np.ndarray], embed: np.ndarray,
                 base_lm_head: np.ndarray):
        self.cfg, self.w, self.embed_table, self.base_head = cfg, w, embed, base_lm_head
        self.inv_freq = rope_inv_freq(cfg.rope())
        self.p = "midlayer." if cfg.layout == "eagle3" else "layers.0."

    def project(self, features: np.ndarray) -> np.ndarray:
        """EAGLE-3 first step: [T, F] base features -> [T, H]."""
        return features @ self.w["fc.weight"].T

    def forward(self, ids: np.ndarray, hidden: np.ndarray, positions: np.ndarray,
                past: Tuple[np.ndarray, np.ndarray], mask: Optional[np.ndarray] = None
                ) -> Tuple[np.ndarray, np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """One draft step over ids [T], hidden [T, H] (EAGLE-3: already projected; EAGLE-1: the feature).

        Returns (logits [T, Vd] over the draft vocabulary, out [T, H] (the next
        step's hidden), (k, v) [T, KVH, D]).
        """
        c, w, p = self.cfg, self.w, self.p
        t = len(ids)
        emb = self.embed_table[np.asarray(ids)]
        eps = c.rms_norm_eps
        if c.layout == "eagle3":
            x = np.concatenate([rms_norm(emb, w[p + "input_layernorm.weight"], eps),
                                rms_norm(hidden, w[p + "hidden_norm.weight"], eps)], -1)  # [T, 2H]
            residual = hidden
        else:
            x = np.concatenate([emb, hidden], -1) @ w["fc.weight"].T + w["fc.bias"]       # [T, H]
            residual = x
        n_past = past[0].shape[0]
        if mask is None:
            mask = causal_mask(t, n_past)
        ang = positions.astype(np.float32)[:, None] * self.inv_freq[None, :]
        ang = np.concatenate([ang, ang], -1)[:, None, :]
        cos, sin = np.cos(ang), np.sin(ang)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(t, c.num_heads, c.head_dim)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(t, c.num_kv_heads, c.head_dim)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(t, c.num_kv_heads, c.head_dim)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        g = c.num_heads // c.num_kv_heads
        k_all = np.concatenate([past[0], k]) if n_past else k
        v_all = np.concatenate([past[1], v]) if n_past else v
        k_all = np.repeat(k_all, g, axis=1).transpose(1, 2, 0)
        v_all = np.repeat(v_all, g, axis=1).transpose(1, 0, 2)
        s = q.transpose(1, 0, 2) @ k_all / math.sqrt(c.head_dim) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        att = ((s / s.sum(-1, keepdims=True)) @ v_all).transpose(1, 0, 2).reshape(t, -1)
        a = residual + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(a, w[p + "post_attention_layernorm.weight"], eps)
        mlp = (silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) \
            @ w[p + "mlp.down_proj.weight"].T
        out = a + mlp
        if c.layout == "eagle3":
            logits = rms_norm(out, w["norm.weight"], eps) @ w["lm_head.weight"].T
        else:
            logits = out @ self.base_head.T
        return logits, out, (k, v)

    def to_base_ids(self, draft_ids: np.ndarray) -> np.ndarray:
        if self.cfg.layout == "eagle3":
            return draft_ids + self.w["d2t"][draft_ids]
        return draft_ids


def base_features(hidden_by_layer: List[np.ndarray], final_norm_out: np.ndarray,
                  cfg: DraftConfig) -> np.ndarray:
    """Features a draft reads, from the base's per-layer outputs (reference use)."""
    if cfg.layout == "eagle1":
        return final_norm_out
    return np.concatenate([hidden_by_layer[i] for i in cfg.target_layer_ids], -1)
