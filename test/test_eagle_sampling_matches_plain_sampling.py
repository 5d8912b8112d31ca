"""EAGLE's sampling acceptance emits tokens distributed exactly as plain sampling.

The base model here is a trigram table Q (next-token distribution given the
last two tokens, a different one per pair), so every verify row of a draft
tree has its own distribution, and it depends on the node's path: row 0 is
Q[prev, root], the row of a node is Q[its parent's token, its token].
Rounds of the real ``accept_sampling`` over trees three levels deep are run
until two tokens are emitted; the joint distribution of those two tokens
must be plain sampling's, d(Q[prev, root])[t1] * d(Q[root, t1])[t2] with d
the request's filtered distribution (chi-square at p = 0.001). A rule that
read the root row at every level, walked the wrong children, or skipped a
level's renormalisation, fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgellm_ros.runtime.config import SamplingConfig
from edgellm_ros.runtime.sampling import make_distribution
from edgellm_ros.runtime.speculative import Tree, accept_sampling

V = 6
PREV = 5                                                          # the token before the root
LOGQ = np.log(np.random.default_rng(7).dirichlet(np.full(V, 0.8), size=(V, V)))  # [t-2, t-1] -> row


def tree_for(root: int) -> Tree:
    """Five nodes over three levels; candidates picked from the root token, as a draft would."""
    return Tree(tokens=np.array([(root + 1) % V, (root + 2) % V, (root + 3) % V, root,
                                 (root + 1) % V, (root + 4) % V], np.int64),
                parents=np.array([-1, -1, 0, 0, 1, 2], np.int64),
                depths=np.array([1, 1, 2, 2, 2, 3], np.int64),
                scores=np.array([-0.1, -0.5, -0.3, -0.9, -0.7, -1.0]))


def verify_logits(prev: int, root: int, tree: Tree) -> np.ndarray:
    """What the trigram base gives for [root, nodes...]: each row conditioned on its path's
    last two tokens (a node's parent token, the root for depth 1)."""
    before = [root if p < 0 else int(tree.tokens[p]) for p in tree.parents]
    return np.concatenate([LOGQ[prev, root][None], LOGQ[before, tree.tokens]]).astype(np.float32)


def first_two_tokens(root: int, dist, rng) -> tuple:
    out, prev = [], PREV
    while len(out) < 2:
        tree = tree_for(root)
        rows, bonus = accept_sampling(tree, verify_logits(prev, root, tree), dist, rng)
        seq = [root] + [int(tree.tokens[r - 1]) for r in rows] + [bonus]
        out += seq[1:]
        prev, root = seq[-2], bonus
    return out[0], out[1]


def chi2_critical_p001(dof: int) -> float:
    """Wilson-Hilferty's chi-square quantile at p = 0.001 (within 1% for dof >= 5)."""
    z = 3.090232
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("root", [0, 3])
@pytest.mark.parametrize("settings", [dict(temperature=1.0),
                                      dict(temperature=0.8, top_k=4, top_p=0.9)],
                         ids=["plain", "top_k_top_p"])
def test_joint_distribution_of_the_first_two_tokens_is_plain_sampling(settings, root):
    dist = make_distribution(SamplingConfig(**settings))
    first = dist(LOGQ[PREV, root].astype(np.float32))
    want = first[:, None] * np.stack([dist(LOGQ[root, t].astype(np.float32)) for t in range(V)])  # [t1, t2]
    assert want.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(100 + root)
    n = 10000
    counts = np.zeros((V, V))
    for _ in range(n):
        counts[first_two_tokens(root, dist, rng)] += 1
    impossible = counts[want == 0].sum()
    assert impossible == 0, f"{int(impossible)} draws of pairs plain sampling never emits"
    e = n * want[want > 0]
    chi2 = float((((counts[want > 0] - e) ** 2) / e).sum())
    dof = int((want > 0).sum()) - 1
    limit = chi2_critical_p001(dof)
    worst = np.unravel_index(np.argmax(np.abs(counts - n * want)), want.shape)
    assert chi2 < limit, (f"chi2={chi2:.1f} > {limit:.1f} ({dof} dof); worst pair {worst}: "
                          f"{int(counts[worst])} drawn, {n * want[worst]:.0f} expected")


def test_the_trees_reach_the_second_level():
    """The point of the test above: second tokens accepted from depth-2 nodes do occur."""
    dist = make_distribution(SamplingConfig(temperature=1.0))
    rng = np.random.default_rng(5)
    depths = []
    for _ in range(2000):
        tree = tree_for(0)
        rows, _ = accept_sampling(tree, verify_logits(PREV, 0, tree), dist, rng)
        depths.append(len(rows))
    assert max(depths) >= 2 and depths.count(2) > 100, np.bincount(depths)
