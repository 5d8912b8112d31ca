"""~/status (msg/Status) and /diagnostics (diagnostic_msgs) report the node once a
second in every state, with the same values."""

import threading
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

NODE_PARAMETERS = {"max_seq_len": 512, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def diagnostics(ros_graph):
    """Every DiagnosticStatus of this module's node seen on /diagnostics: (time, status)."""
    seen, name = [], f"edgellm_ros: {ros_graph.namespace}/edgellm"

    def on_array(msg):
        seen.extend((time.monotonic(), s) for s in msg.status if s.name == name)
    sub = ros_graph.client_node.create_subscription(DiagnosticArray, "/diagnostics", on_array, 10)
    yield seen
    ros_graph.client_node.destroy_subscription(sub)


def latest(seen, since, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [s for t, s in seen if t > since]
        if fresh:
            return fresh[-1], {kv.key: kv.value for kv in fresh[-1].values}
        time.sleep(0.05)
    raise AssertionError("no /diagnostics message of the node")


def test_an_unconfigured_node_reports_itself(ros_graph, diagnostics):
    status = ros_graph.client.status(until=lambda s: s.state == "unconfigured")
    assert status.model == "" and status.queue_depth == 0 and status.requests_served == 0
    diag, values = latest(diagnostics, 0.0)
    assert diag.level == DiagnosticStatus.WARN and diag.message.startswith("unconfigured")
    assert values["state"] == "unconfigured" and values["requests served"] == "0"


def test_status_and_diagnostics_carry_state_model_queue_speed_and_counts(ros_graph, diagnostics):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    try:
        c.wait_for_token_publisher()
        res = c.ask("Name three colors.", max_new_tokens=12)
        assert res.success, res.message
        assert not c.ask("hi", top_p=2.0).success
        status = c.status(until=lambda s: s.state == "active" and s.requests_failed == 1)
        assert (status.model, status.backend) == ("(embedded default)", "onnxruntime")
        assert status.requests_served == 1 and status.queue_depth == 0
        assert status.queue_size == 8 and status.max_seq_len == 512
        assert status.kv_rows_in_use == res.prompt_tokens + res.generated_tokens
        assert status.last_tokens_per_second == pytest.approx(res.tokens_per_second)
        assert status.lora == "" and list(status.lora_adapters) == ["radiology"]
        assert not status.vision and not status.eagle_enabled
        assert status.eagle_verify_tree_size > 0 and status.eagle_drafts == 0
        # the queue depth while a generation runs
        started = threading.Event()
        c.on_token = lambda m: started.set()
        # long enough to outlast a status period (the default node decodes ~170 tokens/s here)
        running = c.ask_async("Tell me a long story about a robot.", max_new_tokens=400)
        assert started.wait(60)
        assert c.status(until=lambda s: s.queue_depth == 1).state == "active"
        c.result(running)
        c.on_token = None
        t0 = time.monotonic()
        diag, values = latest(diagnostics, t0)
        assert diag.level == DiagnosticStatus.OK and diag.hardware_id == "onnxruntime"
        assert values["state"] == "active" and values["model"] == "(embedded default)"
        assert values["requests served"] == "2" and values["requests failed"] == "1"
        assert values["queue depth"] == "0" and float(values["last decode tokens/s"]) > 0
        assert int(values["KV rows in use"]) > 0 and values["max_seq_len"] == "512"
        assert {"EAGLE enabled", "EAGLE mean acceptance length", "backend",
                "queue size"} <= set(values)
        # once a second
        time.sleep(3.2)
        times = [t for t, _ in diagnostics if t > t0]
        assert 2 <= len(times) <= 5, times
    finally:
        c.on_token = None
        assert c.transition("deactivate")
        assert c.status(until=lambda s: s.state == "inactive").requests_served == 2
        assert c.transition("cleanup")
