"""EAGLE speculative decoding: exact under greedy, lossless under sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest, SamplingConfig
from edgellm_ros.errors import ConfigError
from edgellm_ros.runtime.speculative import EagleConfig, Tree, accept_sampling
from edgellm_ros.synthetic.tiny_models import write_random_draft

PROMPTS = ["What is the capital of France?", "Write a haiku about a robot.",
           "List three uses of a lidar.", "How do I boil an egg?",
           "Explain what a PID controller does."]


def _engine(draft_dir, **kw):
    from edgellm_ros.runtime.engine import Engine
    # float weights (fused CPU graph): bit-exact verify vs decode steps (int8 INT4 compute is
    # not, test_quantized_and_fused_graphs.py says why)
    return Engine.load(EngineConfig(max_seq_len=512, prefill_chunk=128, eagle_draft=str(draft_dir),
                                    quantization="none", **kw), log=lambda m: None)


@pytest.fixture(scope="module", params=["eagle3", "eagle1"])
def random_draft_engine(request, tmp_path_factory, default_weights, default_engine_dir):
    folder = write_random_draft(str(tmp_path_factory.mktemp(request.param)), default_weights.config,
                                request.param, seed=3, draft_vocab=2048)
    eng = _engine(folder)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain_answers(default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(max_seq_len=512, prefill_chunk=128, eagle_draft="",
                                   quantization="none"), log=lambda m: None)
    out = {p: eng.generate(GenerationRequest(prompt=p, max_new_tokens=32)).token_ids for p in PROMPTS}
    eng.close()
    return out


GRID = [(k, d, n) for k, d, n in itertools.product((1, 2, 4), (1, 3, 5), (1, 16))]


def test_random_drafts_load_and_greedy_output_is_exact_over_a_grid(random_draft_engine, plain_answers):
    eng = random_draft_engine
    for i, (k, d, n) in enumerate(GRID):
        # no confidence threshold: a random draft doubts every token, and the trees are the point
        eng.set_eagle(EagleConfig(True, k, d, n, confidence_threshold=0.0))
        prompt = PROMPTS[i % len(PROMPTS)]
        res = eng.generate(GenerationRequest(prompt=prompt, max_new_tokens=32))
        assert res.token_ids == plain_answers[prompt], (k, d, n)
        assert res.eagle is not None and res.eagle.drafts > 0
        assert res.eagle.drafted_tokens <= res.eagle.drafts * n


def test_a_round_whose_draft_passes_no_threshold_is_a_one_row_step(random_draft_engine, plain_answers):
    eng = random_draft_engine
    eng.set_eagle(EagleConfig(True, 4, 5, 16, confidence_threshold=1.0))
    for prompt in PROMPTS[:2]:
        res = eng.generate(GenerationRequest(prompt=prompt, max_new_tokens=32))
        assert res.token_ids == plain_answers[prompt]
        st = res.eagle
        assert st.drafts == res.generated_tokens - 1 and st.drafted_tokens == st.accepted_tokens == 0
        assert st.mean_acceptance_length == 1.0


def test_eagle_settings_are_validated_against_the_configured_tree(random_draft_engine):
    eng = random_draft_engine
    with pytest.raises(ConfigError, match="drafting_top_k must be in \\[1, 8\\].*got 9"):
        eng.set_eagle(EagleConfig(True, 9, 4, 16))
    with pytest.raises(ConfigError, match="verify_tree_size must be in \\[1, 64\\].*got 0"):
        eng.set_eagle(EagleConfig(True, 4, 4, 0))
    with pytest.raises(ConfigError, match="drafting_step"):
        eng.set_eagle(EagleConfig(True, 4, 99, 16))
    for bad in (-0.1, 1.5, float("nan"), "0.2", True):
        with pytest.raises(ConfigError, match="confidence_threshold must be in \\[0, 1\\]"):
            eng.set_eagle(EagleConfig(True, 4, 4, 16, bad))


def test_eagle_off_takes_effect_at_the_next_request(random_draft_engine):
    eng = random_draft_engine
    eng.set_eagle(EagleConfig(True, 2, 2, 4))
    assert eng.generate(GenerationRequest(prompt="hi", max_new_tokens=4)).eagle is not None
    eng.set_eagle(EagleConfig(False))
    assert eng.generate(GenerationRequest(prompt="hi", max_new_tokens=4)).eagle is None


def test_eagle_with_prompt_cache_and_context_limit_stays_exact(random_draft_engine, plain_answers):
    eng = random_draft_engine
    eng.set_eagle(EagleConfig(True, 4, 4, 16))
    req = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=32)
    eng.prompt_cache.clear()
    a, b = eng.generate(req), eng.generate(req)
    assert b.cached_tokens > 0
    assert a.token_ids == b.token_ids == plain_answers[PROMPTS[0]]


def test_sampling_with_eagle_is_seed_reproducible(random_draft_engine):
    eng = random_draft_engine
    eng.set_eagle(EagleConfig(True, 4, 3, 8))
    req = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=24,
                            sampling=SamplingConfig(temperature=0.8, top_p=0.9, seed=11))
    assert eng.generate(req).token_ids == eng.generate(req).token_ids


def _chain_tree(tokens_per_level):
    """A tree whose root has the given children (ordered by score)."""
    toks = np.array(tokens_per_level, np.int64)
    return Tree(tokens=toks, parents=np.full(len(toks), -1, np.int64),
                depths=np.ones(len(toks), np.int64), scores=-np.arange(len(toks), dtype=float))


@pytest.mark.parametrize("children", [[0], [2, 0], [4, 3, 1], []])
def test_acceptance_rule_preserves_the_base_distribution(children):
    """Emitted first token ~ p, whatever the candidates (chi-square at p < 1e-6)."""
    p = np.array([0.05, 0.4, 0.25, 0.2, 0.1])
    rng = np.random.default_rng(0)
    tree = _chain_tree(children)
    logits = np.log(np.tile(p, (len(children) + 1, 1)))
    n = 40000
    counts = np.zeros(5)
    for _ in range(n):
        rows, bonus = accept_sampling(tree, logits, lambda r: np.exp(r) / np.exp(r).sum(), rng)
        first = int(tree.tokens[rows[0] - 1]) if rows else bonus
        counts[first] += 1
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert chi2 < 33.0, f"chi2={chi2:.1f} (4 dof), counts={counts}"


def test_acceptance_rule_detects_a_biased_rule():
    """The same statistic fails for a rule that always takes the first candidate."""
    p = np.array([0.05, 0.4, 0.25, 0.2, 0.1])
    n = 40000
    counts = np.zeros(5)
    counts[2] = n  # a lossy rule: always emit the draft's candidate 2
    assert float((((counts - n * p) ** 2) / (n * p)).sum()) > 33.0
