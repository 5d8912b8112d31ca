"""backend remote through the real node: the same ROS interface, answered by a real server.

llama.cpp's OpenAI-compatible server (llama-cpp-python, test-only) on the
embedded GGUF, behind the proxy of test/remote_support.py on a port fixed
before the node is made. Configure fails while nothing listens there and
succeeds once the server is up; /ask, the Token topic, the generate action
with cancel, inline images, json_schema, lora and ~/status work unchanged;
EAGLE is refused with the reason; a server that dies mid-stream ends the
request with BACKEND_ERROR and the partial text, and the node answers again
once the server is back.
"""

import base64
import json
import threading
import time

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from rcl_interfaces.msg import Log
from remote_support import LORA_MODEL, MODEL, FaultProxy, free_port
from sensor_msgs.msg import Image

from edgellm_ros.action import Generate
from edgellm_ros.srv import Ask

PORT = free_port()
NODE_PARAMETERS = {"backend": "remote", "remote.url": f"http://127.0.0.1:{PORT}/v1",
                   "remote.model": MODEL, "remote.lora_models": ["radiology:" + LORA_MODEL],
                   "remote.timeout_s": 20.0, "remote.max_retries": 1, "max_new_tokens": 24,
                   "remote.image_max_side": 32, "remote.schema_format": "json_object"}
STORY = "Tell me a long story about a robot."


@pytest.fixture(scope="module")
def proxy(llama_server):
    p = FaultProxy(("127.0.0.1", llama_server.port), port=PORT)
    yield p
    p.close()


def rosout(graph):
    """The node's log lines from /rosout, collected from now on."""
    lines = []
    name = graph.node.get_logger().name
    graph.client_node.create_subscription(Log, "/rosout",
                                          lambda m: m.name == name and lines.append(m.msg), 100)
    return lines


def streaming_goal(client, proxy):
    """A goal of a long answer, paced by the proxy, once three pieces have arrived as feedback."""
    proxy.reset()
    proxy.pace_s = 0.1
    pieces = threading.Semaphore(0)
    run = client.generate_async(STORY, max_new_tokens=200, on_feedback=lambda f: pieces.release())
    assert run.accepted()
    for _ in range(3):
        assert pieces.acquire(timeout=60), "no feedback"
    return run


def test_configure_fails_with_the_reason_while_the_server_is_down_then_succeeds(ros_graph, llama_server):
    c = ros_graph.client
    lines = rosout(ros_graph)
    time.sleep(0.5)
    assert not c.transition("configure")
    deadline = time.monotonic() + 10
    while not any(f"127.0.0.1:{PORT}" in x and "cannot connect" in x for x in lines) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("configure failed" in x and "cannot connect" in x for x in lines), lines
    assert c.state() == "unconfigured"


def test_the_node_answers_through_the_server(ros_graph, proxy):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    c.wait_for_token_publisher()
    res = c.ask("Name three colors.", top_k=1)
    assert res.success, res.message
    assert proxy.bodies[-1]["model"] == MODEL and proxy.bodies[-1]["temperature"] == 0.0
    tokens = c.tokens(res.request_id)
    assert "".join(t.text for t in tokens) == res.text and res.text
    assert [t.index for t in tokens] == list(range(len(tokens))) and tokens[-1].done
    assert res.generated_tokens > 1 and res.time_to_first_token > 0 and res.tokens_per_second > 0
    status = c.status()
    assert status.backend == "remote" and MODEL in status.model and status.lora_adapters == ["radiology"]
    assert status.requests_served >= 1


def test_lora_json_schema_and_an_inline_image_reach_the_server(ros_graph, proxy):
    c = ros_graph.client
    res = c.ask("Say hi.", lora="radiology", max_new_tokens=4)
    assert res.success and proxy.bodies[-1]["model"] == LORA_MODEL
    bad = c.ask("Say hi.", lora="nope")
    assert bad.error_code == Ask.Response.UNKNOWN_ADAPTER and "radiology" in bad.message
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    res = c.ask("Is the sky blue?", json_schema=json.dumps(schema), top_k=1)
    assert res.success and proxy.bodies[-1]["response_format"] == {"type": "json_object", "schema": schema}
    assert isinstance(json.loads(res.text)["ok"], bool)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (255, 0, 0)
    c.ask("What color is this?", use_image=True, max_new_tokens=4,
          image=Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=img.tobytes()))
    url = proxy.bodies[-1]["messages"][-1]["content"][0]["image_url"]["url"]
    import cv2
    sent = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert sent.shape == (24, 32, 3)                            # remote.image_max_side = 32
    assert sent[:, :12, 2].mean() > 200 and sent[:, 20:].mean() < 40   # red left half (BGR)


def test_eagle_is_refused_with_the_reason(ros_graph, proxy):
    (r,) = ros_graph.client.set_parameters(eagle__enabled=True)
    assert not r.successful and "backend remote" in r.reason and "speculative" in r.reason


def test_cancel_mid_stream_closes_it_with_the_partial_text(ros_graph, proxy):
    c = ros_graph.client
    run = streaming_goal(c, proxy)
    run.cancel()
    res = run.result(timeout=30)
    proxy.reset()
    assert run.status == GoalStatus.STATUS_CANCELED and res.error_code == Generate.Result.CANCELLED
    assert res.finish_reason == "cancelled" and res.text
    assert proxy.client_closed.wait(5.0) or proxy.events_sent < 100
    assert "".join(t.text for t in c.tokens(res.request_id)) == res.text


def test_server_down_mid_stream_is_a_backend_error_with_the_partial_text_then_the_node_recovers(
        ros_graph, proxy, llama_server):
    c = ros_graph.client
    run = streaming_goal(c, proxy)
    llama_server.stop()                      # the server goes away while it streams
    try:
        res = run.result(timeout=60)
        proxy.reset()
        assert run.status == GoalStatus.STATUS_ABORTED
        assert not res.success and res.error_code == Generate.Result.BACKEND_ERROR, res.message
        assert "broke off" in res.message and res.text and res.finish_reason == "error"
        tokens = c.tokens(res.request_id)
        assert "".join(t.text for t in tokens) == res.text and tokens[-1].finish_reason == "error"
        assert c.state() == "active"
        down = c.ask("Say hi.", max_new_tokens=4)
        assert down.error_code == Ask.Response.BACKEND_ERROR and "502" in down.message
    finally:
        llama_server.start()                 # back on the same port
    again = c.ask("Say hi.", max_new_tokens=4)
    assert again.success, again.message
