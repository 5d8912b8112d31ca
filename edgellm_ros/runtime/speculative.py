"""EAGLE speculative decoding: dynamic draft tree, one-pass tree verification.

One round, with P tokens committed in the base KV cache and the root token x
(sampled, not yet in the cache):

1. Draft tree (EAGLE-2): the draft's output for x gives ``drafting_top_k``
   depth-1 candidates scored by log-probability; for each further level the
   best ``drafting_top_k`` candidates of the previous level are expanded
   (their children scored by cumulative log-probability), up to
   ``drafting_step`` levels. The best ``verify_tree_size`` candidates of all
   levels form the tree (a child never outscores its parent, so ancestors
   come along). With ``confidence_threshold`` t > 0, a candidate whose path
   probability under the draft (the exp of its score) is below t is neither
   expanded nor verified: drafting stops at the level where no candidate is
   left, and a round with none left is a one-row step (the root alone).
   Each extra verify row costs a CPU about a sixth of a one-row step, so
   rows the draft itself doubts cost more than they bring.
2. Verify: the base runs [x, nodes...] in one forward at positions P + depth
   with the tree attention mask, logits for every row.
3. Accept: walk from x while a child carries the token the base picks.
   Greedy: the base's argmax, so the output is exactly plain greedy decoding.
   Sampling: recursive rejection with deterministic candidates — child c is
   accepted with probability p(c) under the base's (filtered) distribution p;
   on rejection p <- normalise(p with p(c) = 0) and the next child is tried;
   when none is accepted the bonus token is drawn from what is left of p.
   Each level's token is then distributed exactly as p (speculative sampling
   with a point-mass proposal), so sampling is lossless.
4. Commit: the accepted rows of the base KV cache are moved to consecutive
   rows P+1.., the draft catches up on the accepted tokens with the base's
   features of those rows, and the bonus token is the next root.

Mean acceptance length = tokens committed per verify step, bonus included
= (accepted draft tokens + verify steps) / verify steps; 1.0 means no draft
token was ever accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..contract import MASK_VALUE, ArrayFunction
from ..errors import InvalidRequest
from .config import EagleConfig, EagleLimits  # defined in config.py; importers may use either


@dataclass
class SpecStats:
    """Counters of speculative decoding (per request, or cumulative)."""

    drafts: int = 0            # verify steps
    drafted_tokens: int = 0    # tree nodes verified
    accepted_tokens: int = 0   # draft tokens accepted (bonus tokens excluded)

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens committed per verify step, the bonus token included."""
        return (self.accepted_tokens + self.drafts) / self.drafts if self.drafts else 0.0

    def add(self, other: "SpecStats") -> None:
        self.drafts += other.drafts
        self.drafted_tokens += other.drafted_tokens
        self.accepted_tokens += other.accepted_tokens

    def as_dict(self) -> Dict[str, float]:
        return {"drafts": self.drafts, "drafted_tokens": self.drafted_tokens,
                "accepted_tokens": self.accepted_tokens,
                "mean_acceptance_length": round(self.mean_acceptance_length, 4)}


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@dataclass
class Tree:
    """Selected draft nodes, parents before children (row 0 of a verify is the root)."""

    tokens: np.ndarray   # [N] base ids
    parents: np.ndarray  # [N] index into the tree, -1 = the root
    depths: np.ndarray   # [N] 1..drafting_step
    scores: np.ndarray   # [N] cumulative draft log-probability

    def verify_mask(self, n_past: int) -> np.ndarray:
        """Additive mask [1+N, P+1+N]: the prefix, the root, ancestors and self."""
        n = len(self.tokens)
        vis = np.eye(n + 1, dtype=bool)
        vis[:, 0] = True
        for j in range(n):
            vis[j + 1] |= vis[self.parents[j] + 1]
        m = np.zeros((n + 1, n_past + n + 1), np.float32)
        m[:, n_past:] = np.where(vis, 0.0, MASK_VALUE)
        return m

    def best_chain(self) -> "Tree":
        """The tree's path with the most expected accepted tokens, as a chain.

        A node's value is its path probability under the draft plus its best
        child's value; the chain follows the best child from the root. Greedy
        verification keeps only this chain (see speculative_tokens).
        """
        n = len(self.tokens)
        value = np.exp(self.scores.astype(np.float64))
        best = np.full(n + 1, -1)            # best child of each verify row (0 = root)
        for j in range(n - 1, -1, -1):       # children come after their parents
            parent = int(self.parents[j]) + 1
            if best[parent] < 0 or value[j] > value[best[parent] - 1]:
                if parent:
                    value[parent - 1] = np.exp(self.scores[parent - 1]) + value[j]
                best[parent] = j + 1
        path = []
        row = best[0]
        while row > 0:
            path.append(row - 1)
            row = best[row]
        keep = np.array(path, np.int64)
        return Tree(tokens=self.tokens[keep], parents=np.arange(len(keep), dtype=np.int64) - 1,
                    depths=np.arange(1, len(keep) + 1, dtype=np.int64), scores=self.scores[keep])

    def children(self) -> List[List[int]]:
        """Children of each verify row (0 = root, j + 1 = node j), best draft score first."""
        kids: List[List[int]] = [[] for _ in range(len(self.tokens) + 1)]
        for j in np.argsort(-self.scores, kind="stable"):
            kids[self.parents[j] + 1].append(int(j) + 1)
        return kids


def accept_greedy(tree: Tree, logits: np.ndarray, constraint: Optional[Any] = None
                  ) -> Tuple[List[int], int]:
    """(accepted verify rows after the root, bonus token) for argmax decoding.

    With a ``constraint`` (constraints.Constraint) each row the walk reaches is
    masked in place before its argmax and the token taken is committed.
    """
    kids = tree.children()
    rows: List[int] = []
    cur = 0
    while True:
        if constraint is not None:
            constraint.apply(logits[cur])
        target = int(np.argmax(logits[cur]))
        if constraint is not None:
            constraint.commit(target)
        nxt = next((c for c in kids[cur] if tree.tokens[c - 1] == target), None)
        if nxt is None:
            return rows, target
        rows.append(nxt)
        cur = nxt


def accept_sampling(tree: Tree, logits: np.ndarray, dist: Callable[[np.ndarray], np.ndarray],
                    rng: np.random.Generator, constraint: Optional[Any] = None
                    ) -> Tuple[List[int], int]:
    """Lossless recursive rejection over deterministic candidates (see module doc).

    With a ``constraint`` each row the walk reaches is masked before its
    distribution is taken (a forbidden draft token has probability 0: never
    accepted) and every accepted token and the bonus are committed.
    """
    kids = tree.children()
    rows, cur = [], 0
    while True:
        if constraint is not None:
            constraint.apply(logits[cur])
        p = dist(logits[cur])
        for c in kids[cur]:
            tok = int(tree.tokens[c - 1])
            if rng.random() < p[tok]:
                if constraint is not None:
                    constraint.commit(tok)
                rows.append(c)
                cur = c
                break
            p[tok] = 0.0
            p /= p.sum()
        else:
            bonus = int(rng.choice(p.shape[0], p=p))
            if constraint is not None:
                constraint.commit(bonus)
            return rows, bonus


def best_k(lp: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite entries of ``lp`` (fewer when fewer are finite)."""
    top = np.argpartition(-lp, k - 1)[:k] if k < lp.shape[0] else np.arange(lp.shape[0])
    return top[np.isfinite(lp[top])]


class Drafter:
    """An EAGLE draft on a backend: catch-up on committed tokens, tree expansion.

    kept: [V] bool over the base vocabulary when the base's LM head is reduced
    (runtime/vocab.py): draft tokens whose base id is not kept get score -inf,
    so they are never proposed (the base could never pick them).
    """

    def __init__(self, cfg: Any, weights: Dict[str, np.ndarray], draft_step: Any,
                 fc: Optional[ArrayFunction], limits: EagleLimits, kept: Optional[np.ndarray] = None):
        self.cfg = cfg
        self.step = draft_step          # OrtDraft (or another backend's equivalent)
        self.fc = fc                    # EAGLE-3 features [n, F] -> [n, H]; None for EAGLE-1
        self.limits = limits
        self.d2t = weights.get("d2t")   # draft id -> base id offset (EAGLE-3)
        self.done = 0                   # draft KV rows valid (committed positions)
        #: [Vd] draft ids whose base id a reduced base head never gives (None: none)
        self.banned: Optional[np.ndarray] = None
        if kept is not None:
            vd = self.d2t.shape[0] if self.d2t is not None else kept.shape[0]
            self.banned = ~kept[self.to_base(np.arange(vd))]

    def to_base(self, draft_ids: np.ndarray) -> np.ndarray:
        return draft_ids + self.d2t[draft_ids] if self.d2t is not None else draft_ids

    def catch_up(self, start: int, next_tokens: List[int], feats: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """Run pairs (next_tokens[i], feats[i]) at positions start+i.

        Returns the last row's (logits [Vd], hidden_out [H]) as copies.
        """
        st = self.step
        n = len(next_tokens)
        if not n:
            raise InvalidRequest("the EAGLE draft's catch-up needs at least one token")
        hidden = self.fc(feats) if self.fc is not None else feats
        p = start
        while True:         # n >= 1: at least one chunk
            m = min(st.max_chunk, start + n - p)
            st.hidden_in_buffer(m)[...] = hidden[p - start:p - start + m]
            logits = st.forward(p, next_tokens[p - start:p - start + m])
            p += m
            if p >= start + n:
                break
        self.done = start + n
        return logits[0].copy(), st.hidden[m - 1].copy()

    def build_tree(self, root_logits: np.ndarray, root_hidden: np.ndarray, ec: EagleConfig) -> Tree:
        """EAGLE-2 dynamic tree over the draft KV rows [0, done)."""
        k, steps, n_verify, floor = ec.drafting_top_k, ec.drafting_step, ec.verify_tree_size, ec.min_score
        P = self.done
        lp = log_softmax(root_logits.astype(np.float64))
        if self.banned is not None:
            lp[self.banned] = -np.inf
        top = best_k(lp, k)
        top = top[lp[top] >= floor]
        tok: List[int] = list(self.to_base(top))
        score: List[float] = list(lp[top])
        parent: List[int] = [-1] * len(top)
        depth: List[int] = [1] * len(top)
        row: Dict[int, int] = {}        # candidate -> draft KV row (expanded ones)
        hid: Dict[int, np.ndarray] = {}  # candidate -> its draft output (to feed children)
        level = list(range(len(top)))
        parent_hidden = {c: root_hidden for c in level}
        for d in range(2, steps + 1):
            order = [c for c in sorted(level, key=lambda c: -score[c])[:k] if score[c] >= floor]
            if not order:
                break
            e0 = len(row)
            t = len(order)
            st = self.step
            mask = np.full((t, P + e0 + t), MASK_VALUE, np.float32)
            mask[:, :P] = 0.0
            for i, c in enumerate(order):
                row[c] = P + e0 + i
                a = c
                while a != -1:
                    if a in row:
                        mask[i, row[a]] = 0.0
                    a = parent[a]
                st.hidden_in_buffer(t)[i] = parent_hidden[c]
            logits = st.forward(P + e0, [tok[c] for c in order],
                                positions=np.array([P - 1 + depth[c] for c in order]),
                                mask=mask, logits_rows="all")
            lps = log_softmax(logits.astype(np.float64))
            if self.banned is not None:
                lps[:, self.banned] = -np.inf
            level = []
            for i, c in enumerate(order):
                hid[c] = st.hidden[i].copy()
                kids = best_k(lps[i], k)
                for dk, bk in zip(kids, self.to_base(kids)):
                    tok.append(int(bk))
                    score.append(score[c] + float(lps[i, dk]))
                    parent.append(c)
                    depth.append(d)
                    parent_hidden[len(tok) - 1] = hid[c]
                    level.append(len(tok) - 1)
        chosen = sorted((c for c in range(len(tok)) if score[c] >= floor),
                        key=lambda c: (-score[c], depth[c], c))[:n_verify]
        keep = set(chosen)
        chosen = [c for c in chosen if parent[c] == -1 or parent[c] in keep]
        chosen.sort(key=lambda c: (depth[c], -score[c]))
        index = {c: i for i, c in enumerate(chosen)}
        return Tree(tokens=np.array([tok[c] for c in chosen], np.int64),
                    parents=np.array([index[parent[c]] if parent[c] != -1 else -1 for c in chosen],
                                     np.int64),
                    depths=np.array([depth[c] for c in chosen], np.int64),
                    scores=np.array([score[c] for c in chosen]))


def speculative_tokens(decoder: Any, drafter: Drafter, ec: EagleConfig, root: int, P: int,
                       draft_logits: np.ndarray, draft_hidden: np.ndarray,
                       accept: Callable[[Tree, np.ndarray], Tuple[List[int], int]],
                       stats: SpecStats, chain: bool = False) -> Iterator[int]:
    """Yield committed tokens after ``root`` round by round, until the context is full.

    On entry the base cache holds P rows, the draft cache P rows (the last
    pair being (root, feature P-1)), and draft_logits / draft_hidden are the
    draft's outputs for that last pair.

    chain (greedy requests): verify only the tree's best chain
    (Tree.best_chain). A verify row computes bit for bit what a one-token step
    of that token computes only when it attends to consecutive rows, the
    prefix and then its ancestors, as a chain's rows do: a node after a
    sibling sees a gap in its columns, and ONNX Runtime's softmax and
    probabilities x V then add the same numbers in another order (1e-5 in
    float32, ~1 logit once int8 activations round them). Its token could still
    be taken, but neither its logits nor its KV rows could, so it would bring
    nothing the bonus token does not. Sampling keeps the tree.
    """
    limit = decoder.max_seq_len
    while True:
        room = limit - P - 1                            # rows left for tree nodes
        if room < 0:
            return
        if room == 0 or drafter.done + drafter.limits.max_expanded > drafter.step.max_seq_len:
            row = decoder.forward(P, [root])[0]         # last row: plain step
            yield accept(Tree(np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros(0, np.int64), np.zeros(0)), row[None])[1]
            return
        tree = drafter.build_tree(draft_logits, draft_hidden,
                                  replace(ec, verify_tree_size=min(ec.verify_tree_size, room)))
        if chain:
            tree = tree.best_chain()
        n = len(tree.tokens)
        logits = decoder.forward(P, [root] + tree.tokens.tolist(), positions=P + np.concatenate(
            [[0], tree.depths]), mask=tree.verify_mask(P), logits_rows="all")
        rows, bonus = accept(tree, logits)
        stats.drafts += 1
        stats.drafted_tokens += n
        stats.accepted_tokens += len(rows)
        feats = decoder.hidden[[0] + rows].copy()       # base features of committed rows
        if rows:
            decoder.kv.move_rows(P + np.array(rows), P + 1)
        accepted = [int(tree.tokens[r - 1]) for r in rows]
        for t in accepted:
            yield t
        yield bonus
        draft_logits, draft_hidden = drafter.catch_up(P, accepted + [bonus], feats)
        P += len(rows) + 1
        root = bonus
