"""The composed sampler draws from temperature, then top-k, then top-p, then softmax.

The expected distributions are written out here from the probabilities, so a
sampler that skipped top-p (or top-k, or applied them in the other order)
draws from a different set and fails the chi-square. make_distribution (what
EAGLE's acceptance uses) must give the same vector.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.runtime.config import SamplingConfig
from edgellm_ros.runtime.sampling import make_distribution, make_sampler

P = np.array([0.06, 0.40, 0.04, 0.25, 0.15, 0.10])
LOGITS = np.log(P).astype(np.float32)

# (settings, expected distribution), worked by hand from P:
CASES = [
    # top_k=4 keeps .40 .25 .15 .10 (sum .90): .444 .278 .167 .111; top_p=.7 then keeps
    # .444 + .278 = .722 >= .7: ids 1 and 3, renormalised .40/.65 and .25/.65.
    (dict(temperature=1.0, top_k=4, top_p=0.7), {1: 0.40 / 0.65, 3: 0.25 / 0.65}),
    # top_k=2 keeps .40 .25 (.615 .385), which top_p=.95 leaves; top_p=.95 alone would keep
    # five tokens (.40 .25 .15 .10 .06 reach .96).
    (dict(temperature=1.0, top_k=2, top_p=0.95), {1: 0.40 / 0.65, 3: 0.25 / 0.65}),
    # temperature 0.5 squares the probabilities: .16 .0625 .0225 .01 over the top 4 (sum .255):
    # .627 .245 .088 .039; top_p=.85 keeps the first two (.872).
    (dict(temperature=0.5, top_k=4, top_p=0.85), {1: 0.16 / 0.2225, 3: 0.0625 / 0.2225}),
    # top_k=2 alone (top_p=1): .40/.65 and .25/.65; with top_p=.5 the top token alone.
    (dict(temperature=1.0, top_k=2, top_p=0.5), {1: 1.0}),
]
CHI2_P001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}   # critical values at p = 0.001, by dof


def _expected(want):
    e = np.zeros(len(P))
    for i, v in want.items():
        e[i] = v
    return e


@pytest.mark.parametrize("kwargs, want", CASES)
def test_distribution_is_top_k_then_top_p(kwargs, want):
    got = make_distribution(SamplingConfig(**kwargs))(LOGITS)
    np.testing.assert_allclose(got, _expected(want), atol=1e-6,
                               err_msg=f"{kwargs}: the sampler's distribution")


@pytest.mark.parametrize("kwargs, want", CASES)
def test_sampled_tokens_follow_top_k_then_top_p(kwargs, want):
    n = 6000
    sample = make_sampler(SamplingConfig(seed=1234, **kwargs))
    counts = np.bincount([sample(LOGITS) for _ in range(n)], minlength=len(P))
    outside = {i: int(c) for i, c in enumerate(counts) if c and i not in want}
    assert not outside, f"{kwargs}: drew tokens the filters remove: {outside}"
    e = n * _expected(want)
    keep = sorted(want)
    chi2 = float((((counts[keep] - e[keep]) ** 2) / e[keep]).sum())
    dof = len(keep) - 1
    if dof:
        assert chi2 < CHI2_P001[dof], f"{kwargs}: chi2={chi2:.1f} ({dof} dof), counts={counts}"
