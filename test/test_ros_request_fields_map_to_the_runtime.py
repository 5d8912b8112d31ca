"""Ask / Generate fields -> GenerationRequest: messages, json_schema, grammar.

ROS-free (edgellm_ros.ros.ask works on anything with the request's fields).
The checks of the ROS layer (roles, image indices, one of prompt/messages, at
most one constraint), then the fields as the runtime's GenerationRequest gets them.
"""

from types import SimpleNamespace

import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.ros.ask import generation_request
from edgellm_ros.ros.params import RequestDefaults
from edgellm_ros.runtime import config as runtime_config
SCHEMA = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'


def msg(role, content, images=()):
    return SimpleNamespace(role=role, content=content, image_indices=list(images))


def ask(prompt="", **fields):
    base = dict(prompt=prompt, system_prompt="", use_image=False, max_new_tokens=0,
                temperature=0.0, top_k=0, top_p=0.0, seed=0, stop=[], lora="", messages=[],
                json_schema="", grammar="")
    base.update(fields)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("fields, n_images, words", [
    (dict(messages=[msg("robot", "hi")]), 0,
     "messages[0].role must be system, user or assistant, got 'robot'"),
    (dict(messages=[msg("user", "what is this?", [0])]), 0,
     "messages[0].image_indices [0] need use_image: true"),
    (dict(messages=[msg("user", "a"), msg("user", "b", [0, 2])], use_image=True), 2,
     "messages[1].image_indices: 2 is out of range (the request has 2 image(s))"),
    (dict(prompt="hi", messages=[msg("user", "hi")]), 0, "prompt and messages: give one"),
    (dict(prompt="hi", json_schema=SCHEMA, grammar="start: /yes|no/"), 0,
     "json_schema and grammar: give at most one"),
])
def test_bad_conversation_and_constraint_fields_are_refused_with_the_reason(
        fields, n_images, words):
    with pytest.raises(InvalidRequest) as err:
        generation_request(ask(**fields), RequestDefaults(), images=tuple(range(n_images)))
    assert words in str(err.value)


def test_requests_without_the_new_fields_map_as_before():
    req = generation_request(ask("Say hi.", max_new_tokens=5), RequestDefaults())
    assert req.prompt == "Say hi." and req.max_new_tokens == 5
    for name in ("messages", "json_schema", "grammar"):
        assert getattr(req, name, None) in (None, "", ())


def test_messages_json_schema_and_grammar_reach_the_generation_request():
    import numpy as np
    images = (np.zeros((4, 4, 3), np.uint8),)
    conv = [msg("system", "Be terse."), msg("user", "What is this?", [0]),
            msg("assistant", "A box."), msg("user", "Is it open?")]
    req = generation_request(ask(messages=conv, json_schema=SCHEMA, use_image=True),
                             RequestDefaults(), images=images)
    chat = runtime_config.ChatMessage
    assert req.messages == (chat("system", "Be terse."), chat("user", "What is this?", (0,)),
                            chat("assistant", "A box."), chat("user", "Is it open?"))
    assert req.json_schema == SCHEMA and req.images == images
    req = generation_request(ask("yes or no?", grammar="start: /yes|no/"), RequestDefaults())
    assert req.grammar == "start: /yes|no/"
