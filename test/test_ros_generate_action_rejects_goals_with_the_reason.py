"""Goals that cannot be queued are rejected at goal time, and the client learns why
(~/goal_rejections); NOT_ACTIVE says what would make the node take requests."""

import threading

import pytest

from edgellm_ros.action import Generate
from edgellm_ros.msg import ChatMessage
from edgellm_ros.srv import Ask

NODE_PARAMETERS = {"max_seq_len": 512, "max_new_tokens": 24}


def rejected(client, prompt, **fields):
    run = client.generate_async(prompt, **fields)
    assert not run.accepted(), "the goal was accepted"
    return run.result()


def test_not_active_names_the_transitions_that_are_missing(ros_graph):
    c, name = ros_graph.client, f"{ros_graph.namespace}/edgellm"
    assert c.state() == "unconfigured"
    res = rejected(c, "hi")
    assert not res.success and res.error_code == Generate.Result.NOT_ACTIVE
    assert "configure and activate it" in res.message and name in res.message
    ask = c.ask("hi")
    assert ask.error_code == Ask.Response.NOT_ACTIVE and ask.message == res.message
    assert c.transition("configure")
    try:
        res = rejected(c, "hi")
        assert res.error_code == Generate.Result.NOT_ACTIVE
        assert "inactive" in res.message and "activate it" in res.message
        assert "configure" not in res.message
        assert c.ask("hi").message == res.message
    finally:
        assert c.transition("cleanup")


@pytest.fixture()
def active_once(ros_graph):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    c.wait_for_token_publisher()
    yield c
    assert c.transition("deactivate") and c.transition("cleanup")


@pytest.mark.parametrize("fields, code, words", [
    (dict(prompt="hi", top_p=2.0), "INVALID_REQUEST", "top_p must be in [0.001, 1], got 2.0"),
    (dict(prompt="hi", lora="nope"), "UNKNOWN_ADAPTER", "'nope'; loaded adapters: radiology"),
    (dict(prompt="hi", use_image=True), "IMAGE_ERROR", "no vision encoder"),
    (dict(prompt="hi", json_schema="{}", grammar="start: /a/"), "INVALID_REQUEST",
     "json_schema and grammar: give at most one"),
    (dict(prompt="", messages=[ChatMessage(role="robot", content="hi")]), "INVALID_REQUEST",
     "messages[0].role must be system, user or assistant, got 'robot'"),
])
def test_invalid_goals_are_rejected_with_the_code_and_reason(active_once, fields, code, words):
    res = rejected(active_once, fields.pop("prompt"), **fields)
    assert not res.success and res.error_code == getattr(Generate.Result, code)
    assert words in res.message, res.message
    assert active_once.generate("Say hi.", max_new_tokens=2).success   # and the node goes on


def test_a_goal_beyond_the_queue_is_rejected_queue_full(active_once):
    active = active_once
    assert active.set_parameters(queue_size=0)[0].successful
    try:
        started = threading.Event()
        running = active.generate_async("Tell me a long story about a robot.",
                                        max_new_tokens=64, on_feedback=lambda f: started.set())
        assert started.wait(60)
        res = rejected(active, "Say hi.")
        assert res.error_code == Generate.Result.QUEUE_FULL
        assert "queue is full" in res.message and "queue_size=0" in res.message
        full = active.ask("Say hi.")          # /ask shares the queue
        assert full.error_code == Ask.Response.QUEUE_FULL
        assert running.result().success
        status = active.status(until=lambda s: s.requests_failed >= 2 and s.queue_depth == 0)
        assert status.requests_served >= 1
    finally:
        assert active.set_parameters(queue_size=8)[0].successful
