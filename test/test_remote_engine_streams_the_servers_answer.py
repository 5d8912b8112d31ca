"""backend remote, without ROS: the answer is the server's, streamed; requests map onto its API.

A real OpenAI-compatible server (llama.cpp's, through llama-cpp-python, on the
embedded GGUF) answers, behind the recording proxy of test/remote_support.py.
"""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import openai
import pytest
from remote_support import LORA_MODEL, MODEL

from edgellm_ros.errors import BackendError, BackendUnavailable, ConfigError, InvalidRequest, UnknownAdapter
from edgellm_ros.runtime.config import (ChatMessage, EagleConfig, EngineConfig, GenerationRequest,
                                        RemoteConfig, SamplingConfig)
from edgellm_ros.runtime.engine import open_engine
from edgellm_ros.runtime.generation import PIECE_ID
from edgellm_ros.runtime.remote import RemoteEngine

GREEDY = SamplingConfig(temperature=0.0)
QUESTION = "Name three colors of traffic lights."


def engine_for(url, **remote):
    return open_engine(EngineConfig(backend="remote", remote=RemoteConfig(url=url, **{"model": MODEL, **remote})))


@pytest.fixture(scope="module")
def engine(fault_proxy):
    eng = engine_for(fault_proxy.url, lora_models=("radiology:" + LORA_MODEL,), image_max_side=64,
                     schema_format="json_object")     # llama-cpp-python's form
    yield eng
    eng.close()


def test_configure_checks_the_server_and_loads_no_local_model(engine, fault_proxy):
    assert isinstance(engine, RemoteEngine) and engine.model == MODEL
    assert engine.adapters.names == ["radiology"] and engine.drafter is None
    assert fault_proxy.url in engine.model_label


def test_a_greedy_answer_is_the_servers_own_streamed_piece_by_piece(engine, fault_proxy):
    events = []
    res = engine.generate(GenerationRequest(prompt=QUESTION, max_new_tokens=24, sampling=GREEDY),
                          on_token=events.append)
    # what the server streamed (the proxy parsed its events): the same text, the same pieces
    assert res.text and res.text == fault_proxy.streamed
    assert res.finish_reason in ("stop", "length")
    assert "".join(e.text for e in events) == res.text
    assert [e.index for e in events] == list(range(len(events))) and len(events) > 3
    # llama-cpp-python streams no usage: the node counts the pieces, one per token
    assert res.generated_tokens == sum(e.token_id == PIECE_ID for e in events) > 3
    assert 0 < res.time_to_first_token < res.total_time and res.tokens_per_second > 0
    # the server's own answer, not streamed: the same start (the rest may part at a near tie:
    # the server reuses its cached prompt rows, computed in other batches)
    direct = openai.OpenAI(base_url=fault_proxy.url, api_key="EMPTY").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0.0)
    assert direct.choices[0].message.content[:20] == res.text[:20]


def test_stop_strings_end_the_answer_before_them(engine):
    full = engine.generate(GenerationRequest(prompt=QUESTION, max_new_tokens=24, sampling=GREEDY))
    words = full.text.split()
    stop = words[len(words) // 2]
    events = []
    res = engine.generate(GenerationRequest(prompt=QUESTION, max_new_tokens=24, sampling=GREEDY,
                                            stop=(stop,)), on_token=events.append)
    assert res.finish_reason == "stop_string"
    assert res.text == full.text[:full.text.index(stop)]
    assert "".join(e.text for e in events) == res.text


def test_fields_map_onto_the_chat_completions_request(engine, fault_proxy):
    msgs = (ChatMessage("system", "You are terse."), ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello."), ChatMessage("user", "Count to three."))
    res = engine.generate(GenerationRequest(messages=msgs, max_new_tokens=8, adapter="radiology",
                                            sampling=SamplingConfig(temperature=0.7, top_k=20,
                                                                    top_p=0.9, seed=5)))
    body = fault_proxy.bodies[-1]
    assert res.text and body["model"] == LORA_MODEL        # lora -> the adapter's served model
    assert [(m["role"], m["content"]) for m in body["messages"]] == [(m.role, m.content) for m in msgs]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"], body["seed"]) == \
        (8, 0.7, 0.9, 20, 5)
    assert body["stream"] is True
    with pytest.raises(UnknownAdapter, match="radiology"):
        engine.generate(GenerationRequest(prompt="hi", adapter="nope"))


def test_an_image_goes_as_a_bounded_jpeg_data_url(engine, fault_proxy):
    colors = np.array([[[230, 30, 30], [30, 200, 40]], [[20, 40, 220], [240, 220, 30]]], np.uint8)
    img = np.kron(colors, np.ones((64, 128, 1), np.uint8))     # [128, 256, 3]: four quadrants
    engine.vision.max_side = 64
    try:
        engine.generate(GenerationRequest(prompt="What is this?", images=(img,), max_new_tokens=4,
                                          sampling=GREEDY))
    except BackendError as exc:     # this text-only model's template fails on image parts: the
        assert "broke off" in str(exc)   # server ends its stream without [DONE], the proxy drops it
    parts = fault_proxy.bodies[-1]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"] and parts[1]["text"] == "What is this?"
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8),
                                     cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert sent.shape == (32, 64, 3)                        # longest side bounded, aspect kept
    for (r, c), color in np.ndenumerate(np.zeros((2, 2))):  # each quadrant's color, in RGB order
        inner = sent[r * 16 + 4:r * 16 + 12, c * 32 + 8:c * 32 + 24].reshape(-1, 3).mean(0)
        assert np.abs(inner - colors[r, c]).max() < 12, (r, c, inner)


def test_json_schema_becomes_response_format_and_the_answer_follows_it(engine, fault_proxy):
    schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green"]}},
              "required": ["color"], "additionalProperties": False}
    res = engine.generate(GenerationRequest(prompt="Which color means go?", json_schema=json.dumps(schema),
                                            max_new_tokens=24, sampling=GREEDY))
    assert fault_proxy.bodies[-1]["response_format"] == {"type": "json_object", "schema": schema}
    assert json.loads(res.text)["color"] in ("red", "green")
    # OpenAI's form (the default), which this server does not take: refused with its reason
    openai_form = engine_for(fault_proxy.url)
    try:
        # llama-cpp-python answers its validation error with HTTP 500 (vLLM and the others 400)
        with pytest.raises(BackendError, match=r"(?s)HTTP 500: .*Input should be 'text' or 'json_object'"):
            openai_form.generate(GenerationRequest(prompt="Which color means go?",
                                                   json_schema=json.dumps(schema)))
        fmt = fault_proxy.bodies[-1]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema
    finally:
        openai_form.close()


def test_a_grammar_goes_in_the_configured_field_or_is_refused(engine, fault_proxy):
    res = engine.generate(GenerationRequest(prompt="Yes or no?", grammar='root ::= "yes" | "no"',
                                            max_new_tokens=4, sampling=GREEDY))
    assert fault_proxy.bodies[-1]["grammar"] == 'root ::= "yes" | "no"'
    assert res.text in ("yes", "no")
    refusing = engine_for(fault_proxy.url, grammar_field="")
    try:
        with pytest.raises(InvalidRequest, match="grammar"):
            refusing.generate(GenerationRequest(prompt="Yes?", grammar='root ::= "yes"'))
    finally:
        refusing.close()


def test_eagle_is_refused_with_the_reason(engine):
    with pytest.raises(ConfigError, match="speculative"):
        engine.set_eagle(EagleConfig(enabled=True))


def test_configure_fails_with_the_reason_when_the_server_is_down_or_lacks_the_model(fault_proxy):
    from remote_support import free_port
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendUnavailable, match=r"GET /models: cannot connect.*gave up after 1 attempt"):
        engine_for(down, max_retries=0)
    with pytest.raises(ConfigError, match=f"does not serve 'no-such-model'.*{MODEL}"):
        engine_for(fault_proxy.url, model="no-such-model")
    with pytest.raises(ConfigError, match="serves 2 models"):
        engine_for(fault_proxy.url, model="")
