"""Requests larger than the ``limits.*`` parameters are refused INVALID_REQUEST before any
work (issue 22: a 5 MB prompt cost 3-8 s of worker time before CONTEXT_FULL; 100,000 stop
strings made 16 tokens take 3 s), naming the field, its size and the parameter; at the
limit they are taken."""

import pytest
from sensor_msgs.msg import Image

from edgellm_ros.action import Generate
from edgellm_ros.msg import ChatMessage
from edgellm_ros.srv import Ask

NODE_PARAMETERS = {"max_seq_len": 256, "limits.prompt_bytes": 300, "limits.messages": 3,
                   "limits.messages_bytes": 400, "limits.stop_strings": 2, "limits.stop_bytes": 8,
                   "limits.images": 2, "limits.image_bytes": 1000,
                   "limits.constraint_bytes": 200}


def _image(nbytes):
    return Image(height=1, width=nbytes // 3, encoding="rgb8", step=nbytes, data=bytes(nbytes))


def _msgs(*contents):
    return [ChatMessage(role="user", content=c) for c in contents]


@pytest.mark.parametrize("fields, words", [
    (dict(prompt="x" * 301), "prompt is 301 bytes, more than limits.prompt_bytes=300 bytes"),
    (dict(prompt="é" * 151), "prompt is 302 bytes"),       # bytes, not characters
    (dict(prompt="hi", system_prompt="s" * 301), "system_prompt is 301 bytes"),
    (dict(prompt="", messages=_msgs("a", "b", "c", "d")),
     "messages is 4 messages, more than limits.messages=3 messages"),
    (dict(prompt="", messages=_msgs("a" * 200, "b" * 201)),
     "messages (contents together) is 401 bytes, more than limits.messages_bytes=400"),
    (dict(prompt="hi", stop=["a", "b", "c"]), "stop is 3 strings, more than limits.stop_strings=2"),
    (dict(prompt="hi", stop=["a", "123456789"]), "stop[1] is 9 bytes, more than limits.stop_bytes=8"),
    (dict(prompt="hi", grammar="start: /" + "a" * 200 + "/"), "grammar is 209 bytes"),
    (dict(prompt="hi", json_schema=" " * 201), "json_schema is 201 bytes"),
    # the model is text-only: IMAGE_ERROR, were the sizes not checked first
    (dict(prompt="hi", use_image=True, images=[_image(3), _image(3)]),
     "use_image with images is 3 images, more than limits.images=2"),
    (dict(prompt="hi", use_image=True, image=_image(1002)),
     "image.data is 1002 bytes, more than limits.image_bytes=1000 bytes"),
    (dict(prompt="hi", use_image=True, images=[_image(1002)]), "images[0].data is 1002 bytes"),
])
def test_a_request_above_a_limit_is_refused_before_any_work(active, fields, words):
    before = active.status()
    res = active.ask(fields.pop("prompt"), **fields)
    assert not res.success and res.error_code == Ask.Response.INVALID_REQUEST, res.message
    assert words in res.message, res.message
    assert res.request_id == 0            # never queued: no request id, no token published
    after = active.status(until=lambda s: s.requests_failed == before.requests_failed + 1)
    assert after.requests_served == before.requests_served


def test_at_the_limits_a_request_is_taken(active):
    res = active.ask("x" * 300, stop=["12345678", "b"], max_new_tokens=1)
    assert res.success, res.message
    res = active.ask("", messages=_msgs("a" * 200, "b" * 100, "c" * 100), max_new_tokens=1)
    assert res.success, res.message


def test_a_goal_above_a_limit_is_rejected_with_the_reason(active):
    run = active.generate_async("x" * 301)
    assert not run.accepted()
    res = run.result()
    assert res.error_code == Generate.Result.INVALID_REQUEST
    assert "limits.prompt_bytes=300" in res.message


def test_a_five_megabyte_prompt_is_refused_under_the_default_limit(active):
    assert active.set_parameters(limits__prompt_bytes=65536)[0].successful
    try:
        res = active.ask("robot " * 900_000)
        assert res.error_code == Ask.Response.INVALID_REQUEST and res.request_id == 0
        assert "prompt is 5400000 bytes, more than limits.prompt_bytes=65536" in res.message
        assert active.ask("Say hi.", max_new_tokens=2).success
    finally:
        assert active.set_parameters(limits__prompt_bytes=300)[0].successful
