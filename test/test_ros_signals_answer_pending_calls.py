"""SIGINT / SIGTERM to edgellm_node during a generation: every caller is answered
before the node exits, and nothing is published on a dead context.

A real subprocess, as ``ros2 run`` / ``ros2 launch`` start it; an /ask in
flight and a goal waiting behind it when the signal comes.
"""

import signal
import threading
import time

import pytest
from action_msgs.msg import GoalStatus
from support import node_process as start_node
from support import wait_for_line

from edgellm_ros.action import Generate
from edgellm_ros.srv import Ask

STORY = "Tell me a long story about a robot."


@pytest.fixture()
def node_process(tmp_path):
    """edgellm_node in a namespace of its own, its output in a file, and a client of it."""
    log = tmp_path / "node.log"
    with start_node(log, "-p", "max_seq_len:=512", name="signal_test_client") \
            as (proc, client, ns):
        yield proc, client, log, ns


@pytest.mark.parametrize("signum, repeats", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 2)])
def test_a_signal_during_a_generation_answers_every_caller(node_process, signum, repeats):
    """repeats=2: the signal twice, 50 ms apart, as `ros2 launch` without a terminal sends it."""
    proc, client, log, ns = node_process
    # unconfigured, the node says once how to start it, with its real name
    wait_for_line(log, f"ros2 lifecycle set {ns}/edgellm configure")
    assert client.transition("configure") and client.transition("activate")
    client.wait_for_token_publisher()
    wait_for_line(log, f"active: {ns}/ask and {ns}/edgellm/generate take requests")
    started = threading.Event()
    client.on_token = lambda m: started.set()
    call = client.ask_async(STORY, max_new_tokens=400)
    assert started.wait(60), "the generation did not start"
    waiting = client.generate_async("Say hi.", max_new_tokens=4)
    assert waiting.accepted()
    exited = []
    waiter = threading.Thread(target=lambda: exited.append((proc.wait(), time.monotonic())))
    sent = time.monotonic()
    proc.send_signal(signum)
    for _ in range(repeats - 1):
        time.sleep(0.05)
        proc.send_signal(signum)
    waiter.start()

    res = client.result(call, timeout=20)        # the caller is answered
    assert not res.success and res.error_code == Ask.Response.CANCELLED
    assert res.finish_reason == "cancelled" and res.text and res.generated_tokens < 400
    assert f"shutting down ({signum.name})" in res.message
    goal = waiting.result(timeout=20)
    assert waiting.status == GoalStatus.STATUS_ABORTED
    assert goal.error_code == Generate.Result.NOT_ACTIVE and "shutting down" in goal.message
    waiter.join(timeout=30)
    status, at = exited[0]
    assert status == 0 and at - sent < 2.0, f"exit {status} {at - sent:.2f} s after {signum.name}"
    text = log.read_text()
    for bad in ("RCLError", "Failed to publish", "context is invalid", "Traceback"):
        assert bad not in text, text
    assert text.count("ros2 lifecycle set") == 2       # the hint came once (two commands)
    assert text.count("text-only model") == 1


def test_the_shutdown_transition_answers_the_running_call_before_exiting(node_process):
    proc, client, log, ns = node_process
    assert client.transition("configure") and client.transition("activate")
    client.wait_for_token_publisher()
    started = threading.Event()
    client.on_token = lambda m: started.set()
    call = client.ask_async(STORY, max_new_tokens=400)
    assert started.wait(60)
    assert client.transition("shutdown")
    res = client.result(call, timeout=20)
    assert res.error_code == Ask.Response.CANCELLED and res.text
    assert proc.wait(timeout=30) == 0
    assert "RCLError" not in log.read_text()
