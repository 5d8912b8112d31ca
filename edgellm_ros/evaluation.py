"""Quality of a decoder graph against a reference one, by teacher forcing.

Both decoders read the same token ids in the same chunks; at every position
the next-token distributions are compared:

- top-1 agreement: how often both pick the same most likely token;
- perplexity of each over the text (exp of the mean next-token NLL);
- mean KL(reference || variant) in nats.

Used by ``benchmarks/quality_bench.py`` and by the tests of the quantized
graphs, on the text sample the project ships (benchmarks/data/quality_sample.txt).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Sequence

import numpy as np

from .errors import InvalidRequest


def log_softmax_rows(x: np.ndarray) -> np.ndarray:
    """[N, V] logits -> [N, V] log-probabilities (float64)."""
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Agreement:
    """How a variant's next-token predictions compare with the reference's."""

    # positions scored (tokens - 1)
    positions: int
    # fraction of positions whose argmax equals the reference's
    top1_agreement: float
    # perplexity of the reference and of the variant on the text
    perplexity_reference: float
    perplexity: float
    # mean KL(reference || variant) per position, nats
    mean_kl: float
    # largest |logit difference| seen
    max_abs_logit_diff: float

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def compare_decoders(reference: Any, variant: Any, ids: Sequence[int], chunk: int = 128) -> Agreement:
    """Teacher-force ``ids`` through both decoders (fresh caches) and compare each position.

    ``reference`` / ``variant`` have the backends' ``forward(n_past, ids,
    logits_rows="all")``; chunks must fit their max_chunk and ids their KV cache.
    """
    ids = [int(t) for t in ids]
    if len(ids) < 2:
        raise InvalidRequest(f"need at least two tokens, got {len(ids)}")
    agree = 0
    nll_ref = nll_var = kl = 0.0
    worst = 0.0
    n = len(ids) - 1
    for start in range(0, n, chunk):
        part = ids[start:min(start + chunk, n)]
        targets = np.asarray(ids[start + 1:start + 1 + len(part)])
        a = np.array(reference.forward(start, part, logits_rows="all"), copy=True)
        b = np.asarray(variant.forward(start, part, logits_rows="all"))
        worst = max(worst, float(np.abs(a - b).max()))
        la, lb = log_softmax_rows(a), log_softmax_rows(b)
        rows = np.arange(len(part))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        nll_ref -= float(la[rows, targets].sum())
        nll_var -= float(lb[rows, targets].sum())
        kl += float((np.exp(la) * (la - lb)).sum())
    return Agreement(positions=n, top1_agreement=agree / n,
                     perplexity_reference=math.exp(nll_ref / n), perplexity=math.exp(nll_var / n),
                     mean_kl=kl / n, max_abs_logit_diff=worst)
