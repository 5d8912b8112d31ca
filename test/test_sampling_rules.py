"""Sampling filters keep the right candidates and draw from the right distribution."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.runtime.config import GenerationRequest, SamplingConfig
from edgellm_ros.errors import InvalidRequest
from edgellm_ros.runtime.sampling import make_sampler, softmax, top_k, top_p

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))


def test_greedy_is_argmax():
    row = np.array([0.1, 3.0, -2.0, 2.9], np.float32)
    assert make_sampler(SamplingConfig())(row) == 1
    assert make_sampler(SamplingConfig(temperature=0.8, top_k=1))(row) == 1


def test_top_k_keeps_the_k_largest():
    ids, lg = top_k(np.arange(5), LOGITS, 2)
    assert sorted(ids.tolist()) == [0, 1]


def test_top_p_keeps_the_smallest_set_reaching_p():
    ids, _ = top_p(np.arange(5), LOGITS, 0.7)     # 0.5 + 0.2 reaches 0.7
    assert sorted(ids.tolist()) == [0, 1]
    ids, _ = top_p(np.arange(5), LOGITS, 0.71)
    assert sorted(ids.tolist()) == [0, 1, 2]
    ids, _ = top_p(np.arange(5), LOGITS, 0.01)    # the top token always survives
    assert ids.tolist() == [0]


def test_seeded_sampling_is_reproducible():
    cfg = SamplingConfig(temperature=1.0, seed=42)
    a = [make_sampler(cfg)(LOGITS) for _ in range(1)]
    s1, s2 = make_sampler(cfg), make_sampler(cfg)
    assert [s1(LOGITS) for _ in range(50)] == [s2(LOGITS) for _ in range(50)]
    assert a[0] in range(5)


def test_sampling_follows_the_filtered_distribution():
    n = 20000
    s = make_sampler(SamplingConfig(temperature=1.0, top_k=3, seed=7))
    counts = np.bincount([s(LOGITS) for _ in range(n)], minlength=5)
    want = np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85
    assert counts[3] == counts[4] == 0
    # 5 standard deviations of a binomial count: fails if the draw were biased
    sd = np.sqrt(n * want * (1 - want))
    assert np.all(np.abs(counts - n * want) <= 5 * sd + 1)


def test_temperature_sharpens():
    s = make_sampler(SamplingConfig(temperature=0.25, seed=3))
    counts = np.bincount([s(LOGITS) for _ in range(4000)], minlength=5)
    p = softmax(LOGITS / 0.25)
    assert abs(counts[0] / 4000 - p[0]) < 0.03


@pytest.mark.parametrize("kwargs, word", [
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"seed": -5}, "seed"),
])
def test_bad_sampling_values_are_rejected_with_the_value(kwargs, word):
    with pytest.raises(InvalidRequest, match=word):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("kwargs, word", [
    ({"prompt": ""}, "prompt"), ({"prompt": "   \n"}, "prompt"),
    ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "hi", "stop": ("",)}, "stop"),
])
def test_bad_requests_are_rejected_with_the_value(kwargs, word):
    with pytest.raises(InvalidRequest, match=word):
        GenerationRequest(**kwargs)
