"""A client killed (SIGKILL) in the middle of its answer does not keep the node generating
to max_new_tokens (issue 22): once the caller has left the graph and nobody reads
~/tokens, its generation stops.

The node runs here with its own Context; the caller is a separate process (plain rclpy,
no ~/tokens subscription) whose DDS participant announces a 2 s lease
(test/data/fastdds_short_lease.xml), so its death shows in the graph after 2 s (20 s with
Fast DDS's default lease). The answer is forced to be long by a grammar.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from support import DATA

LENGTH = 1500               # the grammar's answer: LENGTH words, about as many tokens
GRAMMAR = "/(robot ){%d}/" % LENGTH
CALLER = r"""
import sys, rclpy
from rclpy.action import ActionClient
from edgellm_ros.action import Generate
from edgellm_ros.srv import Ask
kind, ns, grammar, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rclpy.init()
node = rclpy.create_node("doomed_caller", namespace=ns)
fields = dict(prompt="Say robot.", grammar=grammar, max_new_tokens=n)
if kind == "ask":
    client = node.create_client(Ask, "ask")
    client.wait_for_service()
    client.call_async(Ask.Request(**fields))
else:
    client = ActionClient(node, Generate, "edgellm/generate")
    client.wait_for_server()
    client.send_goal_async(Generate.Goal(**fields))
print("sent", flush=True)
while True:
    rclpy.spin_once(node, timeout_sec=0.1)
"""


@pytest.fixture()
def lone_node():
    """An active edgellm node on a domain of its own, with nobody else in the graph."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from edgellm_ros.ros.node import EdgeLLMNode

    domain = random.randint(1, 101)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    ns = f"/gone{os.getpid()}_{random.randint(0, 9999)}"
    node = EdgeLLMNode(context=context, namespace=ns, parameter_overrides=[
        Parameter("max_seq_len", value=LENGTH + 100), Parameter("lora_adapters", value=[""]),
        Parameter("eagle.draft", value="")])
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        yield node, domain, ns
    finally:
        executor.shutdown()
        spinner.join(timeout=30)
        node.destroy_node()
        rclpy.shutdown(context=context)


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["ask", "goal"])
def test_a_killed_caller_stops_its_generation(lone_node, kind):
    node, domain, ns = lone_node
    profile = os.path.join(DATA, "fastdds_short_lease.xml")
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), FASTDDS_DEFAULT_PROFILES_FILE=profile,
               FASTRTPS_DEFAULT_PROFILES_FILE=profile)
    caller = subprocess.Popen([sys.executable, "-c", CALLER, kind, ns, GRAMMAR, str(LENGTH + 50)],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert caller.stdout.readline().strip() == "sent"
        wait_for("the request was not admitted", lambda: node.status().queue_depth == 1, 60)
        time.sleep(1.0)                                     # it generates
        killed = time.monotonic()
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        wait_for("the generation went on after its caller was killed",
                 lambda: node.status().queue_depth == 0, 120)
        took = time.monotonic() - killed
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
    status = node.status()
    assert status.requests_failed == 1 and status.requests_served == 0
    assert status.kv_rows_in_use < LENGTH, "the whole answer was generated"
    # 2 s of lease, a look at the graph every 0.5 s, the current token
    assert took < 8.0, f"stopped {took:.1f} s after the caller was killed"


def test_a_watch_sees_the_caller_gone_only_when_every_endpoint_and_token_reader_left():
    from edgellm_ros.ros.callers import CallerWatch

    endpoints, readers = {b"a", b"b"}, [0]
    watch = CallerWatch(lambda: frozenset(endpoints), lambda: readers[0])
    assert not watch.gone()
    endpoints.discard(b"a")
    assert not watch.gone()                 # b may be the caller
    endpoints.clear()
    readers[0] = 1
    assert not watch.gone()                 # someone reads ~/tokens
    readers[0] = 0
    assert watch.gone()
    assert not CallerWatch(frozenset, lambda: 0).gone()    # nothing seen: never stopped
