"""Generation on the real default model: golden tokens, streaming and every stop rule."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest, SamplingConfig
from edgellm_ros.errors import ContextFull
from edgellm_ros.runtime.generation import (FINISH_CANCELLED, FINISH_CONTEXT, FINISH_LENGTH, FINISH_STOP,
                                            FINISH_STOP_STRING)
from support import load_json

GOLDEN = load_json("reference_greedy.json")


def _messages_to_request(messages, n):
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    user = next(m["content"] for m in messages if m["role"] == "user")
    return GenerationRequest(prompt=user, system_prompt=system, max_new_tokens=n)


@pytest.mark.parametrize("case", range(len(GOLDEN["cases"])))
def test_greedy_answer_equals_transformers(engine, case):
    ref = GOLDEN["cases"][case]
    req = _messages_to_request(ref["messages"], 32)
    ids, _ = engine.generator.build_prompt(req)
    assert ids == ref["prompt_ids"]
    res = engine.generate(req)
    assert res.token_ids == ref["greedy_ids"]
    assert res.text + "<|im_end|>" == ref["greedy_text"]


@pytest.mark.parametrize("case", range(len(GOLDEN["cases"])))
def test_first_32_greedy_tokens_past_eos_equal_transformers(engine, case):
    """32 argmax steps that do not stop at EOS, as transformers' plain loop made them."""
    ref = GOLDEN["cases"][case]
    dec = engine.decoder
    ids = ref["prompt_ids"]
    row = dec.forward(0, ids)[0]
    out = []
    for pos in range(len(ids), len(ids) + 32):
        out.append(int(row.argmax()))
        row = dec.forward(pos, out[-1:])[0]
    assert out == ref["greedy_ids_ignoring_eos"]


def test_streamed_deltas_concatenate_to_the_answer(engine):
    events = []
    res = engine.generate(GenerationRequest(prompt="Name three colors.", max_new_tokens=40),
                          on_token=events.append)
    assert [e.index for e in events] == list(range(len(events)))
    assert "".join(e.text for e in events) == res.text
    assert res.text.strip()
    assert res.prompt_tokens > 0 and res.generated_tokens == len(res.token_ids)
    assert res.time_to_first_token > 0 and res.tokens_per_second > 0


def test_eos_ends_with_finish_reason_stop(engine):
    res = engine.generate(GenerationRequest(prompt="Say just the word yes.", max_new_tokens=64))
    assert res.finish_reason == FINISH_STOP
    assert res.token_ids[-1] in engine.tokenizer.stop_ids
    assert "<|im_end|>" not in res.text


def test_max_new_tokens_ends_with_finish_reason_length(engine):
    res = engine.generate(GenerationRequest(prompt="Write a long story about a robot.",
                                            max_new_tokens=7))
    assert res.finish_reason == FINISH_LENGTH
    assert res.generated_tokens == 7


def test_stop_string_cuts_the_answer_and_the_stream(engine):
    base = engine.generate(GenerationRequest(prompt="Write a long story about a robot.",
                                             max_new_tokens=60))
    words = base.text.split()
    stop = " " + words[len(words) // 2]
    cut = base.text.index(stop)
    events = []
    res = engine.generate(GenerationRequest(prompt="Write a long story about a robot.",
                                            max_new_tokens=60, stop=(stop,)), on_token=events.append)
    assert res.finish_reason == FINISH_STOP_STRING
    assert res.text == base.text[:cut]
    assert "".join(e.text for e in events) == res.text


def test_full_context_ends_with_finish_reason_context_full(default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(max_seq_len=48, prefill_chunk=16), log=lambda m: None)
    try:
        res = eng.generate(GenerationRequest(prompt="Write a long story about a robot.",
                                             max_new_tokens=500))
        assert res.finish_reason == FINISH_CONTEXT
        # 48 rows hold the prompt and all answer tokens but the last, which is
        # sampled from row 48's logits and never needs a row of its own.
        assert res.prompt_tokens + res.generated_tokens == 48 + 1
        with pytest.raises(ContextFull, match="max_seq_len=48"):
            eng.generate(GenerationRequest(prompt="word " * 60))
    finally:
        eng.close()


def test_cancel_from_another_thread_stops_generation(engine):
    cancel, started = threading.Event(), threading.Event()

    def canceller():
        started.wait(60)
        cancel.set()

    th = threading.Thread(target=canceller)
    th.start()
    res = engine.generate(
        GenerationRequest(prompt="Write a long story about a robot.", max_new_tokens=400),
        on_token=lambda ev: started.set() if ev.index == 3 else None, cancel=cancel)
    th.join()
    assert res.finish_reason == FINISH_CANCELLED
    assert 4 <= res.generated_tokens < 400


class CancelAfterChecks(threading.Event):
    """A cancel event that another thread sets after the generator has checked it ``n`` times."""

    def __init__(self, n):
        super().__init__()
        self.checks = 0
        self.n = n

    def is_set(self):
        self.checks += 1
        if self.checks > self.n:
            self.set()
        return super().is_set()


def test_cancel_during_a_long_prefill_stops_before_the_next_chunk(engine):
    """A cancel does not wait for the whole prompt: the prefill checks it between chunks."""
    gen = engine.generator
    req = GenerationRequest(prompt="Describe the warehouse. " * 170, max_new_tokens=8)  # > 2 chunks
    ids, cuts = gen.build_prompt(req)
    assert len(ids) > 2 * gen.decoder.max_chunk
    engine.cache_answer()                     # an earlier test's answer: not part of this count
    engine.prompt_cache.clear()               # the whole prompt is prefilled, from row 0
    forwards = []
    real_forward = gen.decoder.forward
    gen.decoder.forward = lambda *a, **k: forwards.append(a[0]) or real_forward(*a, **k)
    try:
        # checked once before the prefill and before each chunk: set after the second chunk
        res = engine.generate(req, cancel=CancelAfterChecks(3))
    finally:
        del gen.decoder.forward
    assert res.finish_reason == FINISH_CANCELLED and res.generated_tokens == 0 and res.text == ""
    assert len(forwards) == 2 and forwards[0] == 0
    # nothing half-computed was cached: the same request answers as on a fresh cache
    again = engine.generate(req)
    engine.prompt_cache.clear()
    fresh = engine.generate(req)
    assert again.token_ids == fresh.token_ids and again.finish_reason != FINISH_CANCELLED


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine):
    def run(seed):
        return engine.generate(GenerationRequest(
            prompt="Invent a name for a robot.", max_new_tokens=16,
            sampling=SamplingConfig(temperature=1.0, top_p=0.95, seed=seed))).token_ids
    a, b = run(1), run(1)
    assert a == b
    assert any(run(s) != a for s in (2, 3, 4))


def test_prompt_cache_restore_gives_bit_identical_logits(engine):
    gen = engine.generator
    req = GenerationRequest(prompt="What is a lidar?", system_prompt="You are a robot. Be brief.")
    ids, cuts = gen.build_prompt(req)
    assert 0 < cuts[0].pos < cuts[-1].pos < len(ids)   # the system part, the user message
    engine.prompt_cache.clear()
    cold, cached0 = gen.prefill(ids, cuts)
    cold = cold.copy()
    assert gen.store_prefixes(ids, cuts) == 2
    warm, cached1 = gen.prefill(ids, cuts)
    warm = warm.copy()
    saved = gen.cache
    gen.cache = None
    try:
        plain, _ = gen.prefill(ids, cuts)
    finally:
        gen.cache = saved
    assert (cached0, cached1) == (0, cuts[-1].pos)
    assert np.array_equal(cold, warm) and np.array_equal(plain, warm)


def test_prompt_cache_gives_identical_answers_and_is_used(engine):
    req = GenerationRequest(prompt="What is a lidar?", system_prompt="You are a robot. Be brief.",
                            max_new_tokens=24)
    engine.prompt_cache.clear()
    first = engine.generate(req)
    second = engine.generate(req)
    saved = engine.generator.cache
    engine.generator.cache = None
    try:
        uncached = engine.generate(req)
    finally:
        engine.generator.cache = saved
    assert first.cached_tokens == 0 and second.cached_tokens > 0 and uncached.cached_tokens == 0
    assert first.token_ids == second.token_ids == uncached.token_ids


def test_system_prompt_changes_the_answer(engine):
    a = engine.generate(GenerationRequest(prompt="Who are you?", max_new_tokens=16))
    b = engine.generate(GenerationRequest(prompt="Who are you?", max_new_tokens=16,
                                          system_prompt="You are Robby, a warehouse robot."))
    assert a.token_ids != b.token_ids
