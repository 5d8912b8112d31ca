"""Greedy EAGLE answers with exactly plain greedy's tokens on every graph the node runs.

ONNX Runtime's kernels round a one-row step differently from a many-row one
(MLAS's one-row paths), and with int8 activations the difference grows to
~1 logit: EAGLE's verify rows and plain decoding's steps then part at
near-ties. An engine with a draft runs one-token steps padded to two rows
and verifies greedy requests along the tree's best chain, so every token's
row is computed bit for bit alike (docs/EAGLE.md). Held-out prompts (the
draft was not trained on them), the quantized and float graphs, fused and
plain ops, with a LoRA adapter, with the prompt cache and with the shipped
vocabulary reduction (whose draft never proposes a token outside the set).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from support import REPO

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.speculative import EagleConfig, Tree

ADAPTER = "radiology:" + os.path.join(REPO, "adapters", "radiology")
TOKENS = 40


def held_out_prompts(n: int):
    with open(os.path.join(REPO, "tools", "data", "eagle_prompts.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["prompt"] for r in rows if r.get("split") == "eval"][4:4 + n]


def _load(**kw):
    from edgellm_ros.runtime.engine import Engine
    kw.setdefault("eagle_draft", "default")   # the shipped draft unless the test says
    return Engine.load(EngineConfig(max_seq_len=512, prefill_chunk=64, **kw), log=lambda m: None)


def test_greedy_verifies_the_trees_best_chain():
    """The chain follows, from the root, the child whose subtree promises most accepted tokens."""
    lp = np.log
    # root -> a (0.5) -> c (0.45); root -> b (0.4) -> d (0.39) -> e (0.38)
    tree = Tree(tokens=np.array([10, 11, 12, 13, 14]), parents=np.array([-1, -1, 0, 1, 3]),
                depths=np.array([1, 1, 2, 2, 3]), scores=lp(np.array([0.5, 0.4, 0.45, 0.39, 0.38])))
    chain = tree.best_chain()
    assert chain.tokens.tolist() == [11, 13, 14]          # 0.4+0.39+0.38 > 0.5+0.45
    assert chain.parents.tolist() == [-1, 0, 1] and chain.depths.tolist() == [1, 2, 3]
    assert np.allclose(np.exp(chain.scores), [0.4, 0.39, 0.38])
    assert len(Tree(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                    np.zeros(0)).best_chain().tokens) == 0


GRAPHS = [dict(quantization="int4"), dict(quantization="int4-sym"), dict(quantization="int8"),
          dict(quantization="none"), dict(quantization="int4", fused_ops=False)]


@pytest.mark.parametrize("kw", GRAPHS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_a_token_row_gets_the_same_bits_in_one_and_many_row_steps(default_engine_dir, kw):
    """With the draft loaded (row padding on), a prompt run as one chunk and token by token
    gives bit-identical hidden states and logits (the whole 8-bit head) on each graph;
    unpadded, the int8-compute graphs part (what broke EAGLE's exactness)."""
    eng = _load(**kw)
    ids = eng.tokenizer.encode("A robot arm picks up the red cube and puts it in the box.")
    try:
        dec = eng.decoder
        dec.set_fast_head(False)
        diffs = {}
        for padded in (True, False):
            dec.set_row_padding(padded)
            chunk = dec.forward(0, ids, logits_rows="all").copy()
            hidden = dec.hidden[:len(ids)].copy()
            steps, rows = [], []
            for i, t in enumerate(ids):
                steps.append(dec.forward(i, [t])[0].copy())
                rows.append(dec.hidden[0].copy())
            diffs[padded] = float(np.abs(chunk - np.array(steps)).max())
            if padded:
                assert np.array_equal(hidden, np.array(rows)), "hidden states differ"
                assert np.array_equal(chunk, np.array(steps)), f"logits differ by {diffs[padded]}"
        if kw["quantization"] != "none":
            assert diffs[False] > 1e-3, diffs    # the rounding the padding removes
    finally:
        eng.close()


CASES = [dict(quantization="int4"), dict(quantization="int4-sym"), dict(quantization="int8"),
         dict(quantization="none"), dict(quantization="int4", fused_ops=False),
         dict(quantization="int4", lora_adapters=(ADAPTER,), lora="radiology"),
         dict(quantization="int4-sym", vocab_reduction="shipped")]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(
    str(v) for k, v in kw.items() if k != "lora_adapters"))
def test_eagle_greedy_tokens_equal_plain_greedy_tokens(default_engine_dir, kw):
    """Plain and EAGLE greedy token ids are identical over held-out prompts, with the default
    tree and a wider one without the threshold; the second request of each prompt restores
    the shared system prompt from the prompt cache."""
    eng = _load(prompt_cache_bytes=64 << 20, **kw)
    system = "You are the assistant of a warehouse robot. Answer in plain sentences."
    reqs = [GenerationRequest(prompt=p, system_prompt=system, max_new_tokens=TOKENS, ignore_eos=True)
            for p in held_out_prompts(2)]
    try:
        assert eng.drafter is not None and eng.adapter == kw.get("lora", "")
        plain = [eng.generate(r).token_ids for r in reqs]
        for ec in (EagleConfig(True), EagleConfig(True, 4, 5, 16, confidence_threshold=0.0)):
            eng.set_eagle(ec)
            spec = [eng.generate(r) for r in reqs]
            for r, want, got in zip(reqs, plain, spec):
                same = next((i for i, (a, b) in enumerate(zip(want, got.token_ids)) if a != b),
                            len(want))
                assert got.token_ids == want, f"{ec}: {r.prompt!r} parts at token {same}"
            assert sum(r.eagle.accepted_tokens for r in spec) > 0
            assert all(r.cached_tokens > 0 for r in spec[1:])     # the shared system prompt
    finally:
        eng.close()
