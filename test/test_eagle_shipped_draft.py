"""The shipped EAGLE-3 draft of the default model (eagle.draft "default"): exact, and
accepted well above one token per verify step on the shipped held-out prompts."""

from __future__ import annotations

import json
import os

import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.speculative import EagleConfig, SpecStats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def eval_prompts():
    with open(os.path.join(ROOT, "tools", "data", "eagle_prompts.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["prompt"] for r in rows if r.get("split") == "eval"][:4]


def test_shipped_draft_loads_as_eagle_draft_default_and_accepts_well_above_one(
        default_engine_dir, eval_prompts):
    from edgellm_ros.runtime.engine import Engine
    # float weights: EAGLE's output is bit-exact there (see test_quantized_and_fused_graphs.py)
    eng = Engine.load(EngineConfig(max_seq_len=512, quantization="none", eagle_draft="default"), log=lambda m: None)
    try:
        assert eng.drafter is not None and eng.drafter.cfg.layout == "eagle3"
        plain = [eng.generate(GenerationRequest(prompt=p, max_new_tokens=48)).token_ids
                 for p in eval_prompts]
        eng.set_eagle(EagleConfig(True, 4, 4, 16, confidence_threshold=0.0))
        total = SpecStats()
        for p, want in zip(eval_prompts, plain):
            res = eng.generate(GenerationRequest(prompt=p, max_new_tokens=48))
            assert res.token_ids == want
            total.add(res.eagle)
        # measured 2.67 over 6 prompts x 96 tokens (benchmarks/eagle_bench.py); a random
        # draft gets ~1.0
        assert total.mean_acceptance_length > 1.8, total.as_dict()
        assert eng.eagle_totals.drafts >= total.drafts
    finally:
        eng.close()


def test_confidence_threshold_verifies_only_what_the_draft_trusts_and_stays_exact(
        default_engine_dir, eval_prompts, monkeypatch):
    """Nodes under the threshold are neither verified nor expanded; the greedy text is
    unchanged; the nodes left are accepted more often than the whole tree's."""
    import math

    from edgellm_ros.runtime.engine import Engine
    from edgellm_ros.runtime.speculative import Drafter
    trees = []
    build = Drafter.build_tree

    def recording(self, logits, hidden, ec):
        tree = build(self, logits, hidden, ec)
        trees.append((ec.confidence_threshold, tree))
        return tree
    monkeypatch.setattr(Drafter, "build_tree", recording)
    eng = Engine.load(EngineConfig(max_seq_len=512, quantization="none", eagle_draft="default"), log=lambda m: None)
    try:
        plain = [eng.generate(GenerationRequest(prompt=p, max_new_tokens=48)).token_ids
                 for p in eval_prompts]
        stats = {}
        for t in (0.0, 0.2):
            eng.set_eagle(EagleConfig(True, 2, 4, 8, confidence_threshold=t))
            stats[t] = SpecStats()
            for p, want in zip(eval_prompts, plain):
                res = eng.generate(GenerationRequest(prompt=p, max_new_tokens=48))
                assert res.token_ids == want
                stats[t].add(res.eagle)
    finally:
        eng.close()
    pruned = [tree for t, tree in trees if t == 0.2]
    assert len(pruned) == stats[0.2].drafts
    for tree in pruned:
        assert (tree.scores >= math.log(0.2)).all()
        assert all(p < j for j, p in enumerate(tree.parents))   # parents come first
    # some rounds verify the root alone, none verifies the whole tree's 8 nodes every time
    assert any(len(tree.tokens) == 0 for tree in pruned)
    assert stats[0.2].drafted_tokens < stats[0.0].drafted_tokens
    rate = {t: s.accepted_tokens / s.drafted_tokens for t, s in stats.items()}
    assert rate[0.2] > rate[0.0], (rate, stats[0.0].as_dict(), stats[0.2].as_dict())
