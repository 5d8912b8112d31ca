"""Token selection: small pure functions composed into one sampler.

Each filter takes a 1-D float logits row and returns the candidate ids and
their logits; the sampler draws from the softmax of what survives. Greedy is
a plain argmax on the row (no copy).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from .config import SamplingConfig

Candidates = Tuple[np.ndarray, np.ndarray]  # (ids [n] int64, logits [n] float)


def top_k(ids: np.ndarray, logits: np.ndarray, k: int) -> Candidates:
    """Keep the k largest logits (all when k <= 0 or k >= n)."""
    if k <= 0 or k >= logits.shape[0]:
        return ids, logits
    keep = np.argpartition(-logits, k - 1)[:k]
    return ids[keep], logits[keep]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def top_p(ids: np.ndarray, logits: np.ndarray, p: float) -> Candidates:
    """Keep the smallest most-likely set whose probability reaches p (nucleus)."""
    if p >= 1.0:
        return ids, logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    cutoff = int(np.searchsorted(np.cumsum(probs), p)) + 1  # always keeps the top token
    keep = order[:cutoff]
    return ids[keep], logits[keep]


def make_sampler(cfg: SamplingConfig, seed: Optional[int] = None) -> Callable[[np.ndarray], int]:
    """A function logits[V] -> token id for this request's settings.

    Order as in most runtimes: temperature, then top-k, then top-p, then a
    draw from the renormalised distribution with the request's own generator.
    """
    if cfg.greedy:
        return lambda row: int(np.argmax(row))
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    inv_t = 1.0 / cfg.temperature

    def sample(row: np.ndarray) -> int:
        logits = row.astype(np.float64) * inv_t
        ids = np.arange(logits.shape[0])
        ids, logits = top_k(ids, logits, cfg.top_k)
        ids, logits = top_p(ids, logits, cfg.top_p)
        probs = softmax(logits)
        return int(ids[rng.choice(probs.shape[0], p=probs)])

    return sample
