"""NumPy reference forward of the Llama decoder: the oracle of the tests.

Short and literal on purpose. Batch 1; shapes in comments use
T = new tokens, P = cached tokens, S = P + T, H = hidden, NH / KVH = query /
key-value heads, G = NH // KVH, D = head dim, F = MLP width, V = vocabulary.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from ..errors import UnsupportedModelError
from .spec import ModelConfig, ModelWeights


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies [D/2], with Llama-3 scaling when configured."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "llama3":
        factor = float(rs["factor"])
        low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
        old_ctx = float(rs.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind not in (None, "default"):
        raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported (default or llama3 only)")
    return inv.astype(np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)) * w


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Half-split rotary embedding. x [T, heads, D]; cos/sin [T, 1, D]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def causal_mask(t: int, p: int) -> np.ndarray:
    """Additive mask [T, P+T]: token j sees every cached row and new rows <= j."""
    m = np.zeros((t, p + t), dtype=np.float32)
    m[:, p:][np.triu_indices(t, 1)] = np.float32(-1e9)
    return m


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class LlamaReference:
    """Evaluates the decoder on float32 weights, one request at a time."""

    def __init__(self, weights: ModelWeights):
        self.w = weights.tensors
        self.cfg = weights.config
        self.lm_head = weights.lm_head()  # [V, H]
        self.inv_freq = rope_inv_freq(self.cfg)  # [D/2]
        # residual stream after each layer of the last forward (EAGLE-3 features)
        self.layer_outputs: List[np.ndarray] = []

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return self.w["embed_tokens.weight"][np.asarray(ids)]  # [T, H]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        return y if b is None else y + b

    def forward(
        self,
        embeds: np.ndarray,                      # [T, H]
        positions: np.ndarray,                   # [T]
        past: List[Tuple[np.ndarray, np.ndarray]],  # per layer ([P, KVH, D], [P, KVH, D])
        mask: Optional[np.ndarray] = None,       # [T, P+T] additive; None = causal
    ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
        """Return (logits [T, V], final hidden [T, H], new K/V per layer [T, KVH, D])."""
        c = self.cfg
        t = embeds.shape[0]
        p = past[0][0].shape[0] if past else 0
        if mask is None:
            mask = causal_mask(t, p)
        ang = positions.astype(np.float32)[:, None] * self.inv_freq[None, :]  # [T, D/2]
        ang = np.concatenate([ang, ang], axis=-1)[:, None, :]                  # [T, 1, D]
        cos, sin = np.cos(ang), np.sin(ang)
        g = c.num_heads // c.num_kv_heads
        x = embeds.astype(np.float32)
        new_kv = []
        self.layer_outputs = []
        for i in range(c.num_layers):
            pre = f"layers.{i}."
            h = rms_norm(x, self.w[pre + "input_layernorm.weight"], c.rms_norm_eps)
            q = self._linear(h, pre + "self_attn.q_proj").reshape(t, c.num_heads, c.head_dim)
            k = self._linear(h, pre + "self_attn.k_proj").reshape(t, c.num_kv_heads, c.head_dim)
            v = self._linear(h, pre + "self_attn.v_proj").reshape(t, c.num_kv_heads, c.head_dim)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            new_kv.append((k, v))
            k_all = np.concatenate([past[i][0], k]) if p else k      # [S, KVH, D]
            v_all = np.concatenate([past[i][1], v]) if p else v
            k_all = np.repeat(k_all, g, axis=1).transpose(1, 2, 0)   # [NH, D, S]
            v_all = np.repeat(v_all, g, axis=1).transpose(1, 0, 2)   # [NH, S, D]
            scores = q.transpose(1, 0, 2) @ k_all / math.sqrt(c.head_dim) + mask  # [NH, T, S]
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            attn = (probs @ v_all).transpose(1, 0, 2).reshape(t, -1)  # [T, NH*D]
            x = x + self._linear(attn, pre + "self_attn.o_proj")
            h = rms_norm(x, self.w[pre + "post_attention_layernorm.weight"], c.rms_norm_eps)
            gate = silu(self._linear(h, pre + "mlp.gate_proj"))
            x = x + self._linear(gate * self._linear(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
            self.layer_outputs.append(x)
        hidden = rms_norm(x, self.w["norm.weight"], c.rms_norm_eps)   # [T, H]
        return hidden @ self.lm_head.T, hidden, new_kv

    def greedy(self, ids: List[int], n: int, stop_ids: frozenset = frozenset()) -> List[int]:
        """Plain greedy decoding: the oracle for generation tests."""
        past: List[Tuple[np.ndarray, np.ndarray]] = []
        out: List[int] = []
        pos = 0
        cur = list(ids)
        for _ in range(n):
            logits, _, kv = self.forward(self.embed(np.asarray(cur)), np.arange(pos, pos + len(cur)), past)
            past = kv if not past else [
                (np.concatenate([pk, k]), np.concatenate([pv, v])) for (pk, pv), (k, v) in zip(past, kv)]
            pos += len(cur)
            tok = int(np.argmax(logits[-1]))
            out.append(tok)
            if tok in stop_ids:
                break
            cur = [tok]
        return out
