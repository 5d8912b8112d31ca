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


def candidates(cfg: SamplingConfig, row: np.ndarray) -> Candidates:
    """Temperature, then top-k, then top-p (the order of most runtimes)."""
    logits = row.astype(np.float64) * (1.0 / cfg.temperature)
    ids, logits = top_k(np.arange(logits.shape[0]), logits, cfg.top_k)
    return top_p(ids, logits, cfg.top_p)


def make_distribution(cfg: SamplingConfig) -> Callable[[np.ndarray], np.ndarray]:
    """A function logits[V] -> the full probability vector [V] the sampler draws from."""
    def dist(row: np.ndarray) -> np.ndarray:
        ids, logits = candidates(cfg, row)
        p = np.zeros(row.shape[0], np.float64)
        p[ids] = softmax(logits)
        return p
    return dist


def make_rng(cfg: SamplingConfig) -> np.random.Generator:
    """The request's own random generator (seeded when the request says so)."""
    return np.random.default_rng(cfg.seed)


def make_sampler(cfg: SamplingConfig, rng: Optional[np.random.Generator] = None
                 ) -> Callable[[np.ndarray], int]:
    """A function logits[V] -> token id for this request's settings."""
    if cfg.greedy:
        return lambda row: int(np.argmax(row))
    gen = rng if rng is not None else make_rng(cfg)

    def sample(row: np.ndarray) -> int:
        ids, logits = candidates(cfg, row)
        probs = softmax(logits)
        return int(ids[gen.choice(probs.shape[0], p=probs)])

    return sample
