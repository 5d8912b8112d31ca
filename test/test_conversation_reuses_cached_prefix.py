"""Conversations: messages rendered by the model's template; turn n reuses the KV rows
of the longest cached prefix (the earlier turns) and stays bit-identical to a cold prefill.

Real ONNX Runtime, real default model (and the seeded tiny VLM for images).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.runtime.config import ChatMessage, GenerationRequest

U, A, S = "user", "assistant", "system"
IMG = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "prompt must be a non-empty string"),
    (dict(prompt="hi", messages=(ChatMessage(U, "hi"),)), "give prompt or messages, not both"),
    (dict(messages=(ChatMessage(U, "hi"),), system_prompt="be brief"), "system_prompt goes with prompt"),
    (dict(messages=(ChatMessage(U, "hi"), ChatMessage(A, "hello"))), "last message must be a user"),
    (dict(messages=(ChatMessage(U, "hi"),), images=(IMG,)), "exactly once, they show indices []"),
    (dict(messages=(ChatMessage(U, "a", (0,)), ChatMessage(A, "b"), ChatMessage(U, "c", (0,))),
          images=(IMG,)), "exactly once, they show indices [0, 0]"),
    (dict(messages=(ChatMessage(U, "a", (1,)),), images=(IMG,)), "message 0 shows image 1, the request has 1"),
    (dict(messages=(ChatMessage(U, "hi"),), raw=True), "raw=True"),
    (dict(prompt="hi", json_schema="{}", grammar="/a/"), "give json_schema or grammar, not both"),
])
def test_request_rules_name_the_offending_value(kwargs, message):
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        GenerationRequest(**kwargs)


def test_chat_message_rules():
    with pytest.raises(InvalidRequest, match="role must be one of .* got 'robot'"):
        ChatMessage("robot", "hi")
    with pytest.raises(InvalidRequest, match="image indices"):
        ChatMessage(U, "hi", ("0",))
    assert ChatMessage(U, "hi", [0, 1]).images == (0, 1)


def _turn(messages, **kw):
    return GenerationRequest(messages=tuple(ChatMessage(*m) for m in messages), max_new_tokens=12, **kw)


def _rendered(tok, messages, generation=False):
    return tok.encode(tok.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                              add_generation_prompt=generation))


def test_turn_3_restores_turns_1_and_2_and_equals_a_cold_prefill(engine):
    gen, tok = engine.generator, engine.tokenizer
    engine.prompt_cache.clear()
    sys_msg = (S, "You are a mobile robot. Answer briefly.")
    u1, u2, u3 = (U, "Where is the charging dock?"), (U, "How far is it?"), (U, "Go there now.")
    r1 = engine.generate(_turn([sys_msg, u1]))
    assert engine.cache_answer()                 # turn 1's answer, for turn 2 (the worker does it)
    r2 = engine.generate(_turn([sys_msg, u1, (A, r1.text), u2]))
    assert engine.cache_answer()
    assert not engine.cache_answer()             # once per answer
    req3 = _turn([sys_msg, u1, (A, r1.text), u2, (A, r2.text), u3])
    ids, cuts = gen.build_prompt(req3)
    warm, cached = gen.prefill(ids, cuts)          # what turn 3 restores, and its logits
    warm = warm.copy()
    r3 = engine.generate(req3)
    # turn 2 reused turn 1 with its answer, turn 3 turns 1 and 2 with theirs
    assert r2.cached_tokens == len(_rendered(tok, (sys_msg, u1, (A, r1.text))))
    assert r3.cached_tokens == cached == len(_rendered(tok, (sys_msg, u1, (A, r1.text), u2, (A, r2.text))))
    # computed: turn 3's own message with its chat markers, and the generation prompt
    assert r3.prompt_tokens - r3.cached_tokens <= len(tok.encode(u3[1])) + 10
    # logits and answer equal a cold prefill's (prompt cache off)
    saved = gen.cache
    gen.cache = None
    try:
        cold, none = gen.prefill(ids, cuts)
        cold = cold.copy()
        r3_cold = engine.generate(req3)
    finally:
        gen.cache = saved
    assert none == 0 and np.array_equal(warm, cold)
    assert r3_cold.cached_tokens == 0 and r3_cold.token_ids == r3.token_ids


def test_an_answer_that_differs_from_the_sent_history_is_not_reused(engine):
    """The client edits the answer it sends back: only the earlier turns are restored."""
    tok = engine.tokenizer
    engine.prompt_cache.clear()
    u1, u2 = (U, "Name a color."), (U, "Another one.")
    r1 = engine.generate(_turn([u1]))
    engine.cache_answer()
    r2 = engine.generate(_turn([u1, (A, r1.text + " Edited."), u2]))
    assert 0 < r2.cached_tokens < len(_rendered(tok, (u1, (A, r1.text))))


def test_a_prompt_request_is_a_one_turn_conversation(engine):
    a = engine.generator.build_prompt(GenerationRequest(prompt="Hi", system_prompt="Be brief."))
    b = engine.generator.build_prompt(_turn([(S, "Be brief."), (U, "Hi")]))
    assert a == b


@pytest.fixture(scope="module")
def vlm_engine(tmp_path_factory, tiny_vlm):
    from edgellm_ros.runtime.config import EngineConfig
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(model=tiny_vlm, engine_dir=str(tmp_path_factory.mktemp("vlm_conv")),
                                   max_seq_len=256, prefill_chunk=32, eagle_draft=""),
                      log=lambda m: None)
    yield eng
    eng.close()


def test_images_go_to_the_message_that_shows_them_and_key_the_cache(vlm_engine):
    from edgellm_ros.synthetic.tiny_vlm import synthetic_image
    gen = vlm_engine.generator
    img1, img2 = synthetic_image(1, 48, 48), synthetic_image(2, 48, 48)
    image_id = vlm_engine.vision.image_token_id

    # the image shown by the second user message comes after the first user message's text
    early, _ = gen.build_prompt(GenerationRequest(messages=(
        ChatMessage(U, "What is this?", (0,)), ChatMessage(A, "A block."),
        ChatMessage(U, "And this?")), images=(img1,)))
    late, _ = gen.build_prompt(GenerationRequest(messages=(
        ChatMessage(U, "What is this?"), ChatMessage(A, "A block."),
        ChatMessage(U, "And this?", (0,))), images=(img1,)))
    assert early.index(image_id) < late.index(image_id)
    # turn 2 restores turn 1 (image included) only when turn 1 showed the same image
    vlm_engine.prompt_cache.clear()
    t1_req = GenerationRequest(messages=(ChatMessage(U, "What is this?", (0,)),), images=(img1,),
                               max_new_tokens=4)
    t1_end = gen.build_prompt(t1_req)[1][-1].pos      # the end of turn 1's user message
    vlm_engine.generate(t1_req)
    same = vlm_engine.generate(GenerationRequest(messages=(
        ChatMessage(U, "What is this?", (0,)), ChatMessage(A, "A block."), ChatMessage(U, "And this?")),
        images=(img1,), max_new_tokens=4))
    other_req = GenerationRequest(messages=(
        ChatMessage(U, "What is this?", (0,)), ChatMessage(A, "A block."), ChatMessage(U, "And this?")),
        images=(img2,), max_new_tokens=4)
    other = vlm_engine.generate(other_req)
    ids, cuts = gen.build_prompt(other_req)
    first_image = ids.index(image_id)
    assert same.cached_tokens == t1_end > first_image
    assert 0 < other.cached_tokens < first_image        # only the system part is shared
    warm, _ = gen.prefill(ids, cuts)
    warm = warm.copy()
    gen.cache, saved = None, gen.cache
    try:
        cold, _ = gen.prefill(ids, cuts)
    finally:
        gen.cache = saved
    assert np.array_equal(warm, cold)


def test_an_answer_is_not_cached_once_other_rows_overwrote_its_prompt(engine):
    """A prefill between an answer and its caching would cache rows of another prompt."""
    gen = engine.generator
    engine.generate(_turn([(U, "Name a tool.")]))
    other, cuts = gen.build_prompt(_turn([(S, "Be brief."), (U, "Something else entirely.")]))
    gen.prefill(other, cuts)
    assert not engine.cache_answer()
