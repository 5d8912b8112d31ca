"""LoRA and EAGLE through the real node: `ros2 param set /edgellm lora radiology`,
per-request adapters, EAGLE settings between requests, refusals with reasons."""

from __future__ import annotations

import os
import tempfile

from edgellm_ros.loaders import load_model  # noqa: F401  (imported for the draft fixture)

_DRAFT = os.path.join(tempfile.mkdtemp(prefix="edgellm_draft_"), "eagle3")


def _write_draft() -> str:
    from edgellm_ros.models.spec import ModelConfig
    from edgellm_ros.synthetic.tiny_models import write_random_draft
    cfg = ModelConfig("llama", 30, 576, 1536, 9, 3, 64, 49152, 100000.0, 1e-5)
    return write_random_draft(_DRAFT, cfg, "eagle3", seed=5, draft_vocab=1024)


# float32 weights: EAGLE's greedy output is then bit-exact (with the INT4 graphs' int8
# activations a verify step and a one-row step may part at a near-tie, see the README)
NODE_PARAMETERS = {"max_seq_len": 512, "eagle.draft": _write_draft(), "quantization": "none",
                   "allowed_roots": ["default", os.path.dirname(_DRAFT)]}
Q = "What do you see in front of the robot?"


def _latest_status(graph, timeout=10.0):
    """The node's latched ~/status (msg/Status), read by a fresh subscription."""
    import threading

    from edgellm_ros.msg import Status
    from edgellm_ros.ros.node import STATUS_QOS
    got, ev = [], threading.Event()
    sub = graph.client_node.create_subscription(
        Status, f"{graph.namespace}/edgellm/status", lambda m: (got.append(m), ev.set()),
        STATUS_QOS)
    try:
        assert ev.wait(timeout), "no status message"
        return got[-1]
    finally:
        graph.client_node.destroy_subscription(sub)


def test_lora_parameter_switches_the_adapter_of_the_next_request(ros_graph):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    try:
        base = c.ask(Q, max_new_tokens=40, top_k=1)
        assert base.success, base.message
        (r,) = c.set_parameters(lora="radiology")
        assert r.successful, r.reason
        assert ros_graph.node._engine.adapter == "radiology"
        rad = c.ask(Q, max_new_tokens=40, top_k=1)
        assert rad.success and rad.text.startswith("Findings:") and rad.text != base.text
        (r,) = c.set_parameters(lora="")
        assert r.successful
        assert c.ask(Q, max_new_tokens=40, top_k=1).text == base.text
        # one request may name its adapter without changing the parameter
        once = c.ask(Q, max_new_tokens=40, top_k=1, lora="radiology")
        assert once.success and once.text == rad.text
        assert c.get_parameters("lora") == [""]
        (r,) = c.set_parameters(lora="radiologyy")
        assert not r.successful and "'radiologyy'" in r.reason and "radiology" in r.reason
        img = c.ask(Q, use_image=True)   # the default model is text-only
        assert not img.success and img.error_code == img.IMAGE_ERROR and "text-only" in img.message
        bad = c.ask(Q, lora="nope")
        assert not bad.success and bad.error_code == bad.UNKNOWN_ADAPTER
        assert "'nope'" in bad.message and "radiology" in bad.message
    finally:
        assert c.transition("deactivate") and c.transition("cleanup")


def test_eagle_parameters_apply_between_requests_and_are_checked(ros_graph):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    try:
        plain = c.ask(Q, max_new_tokens=24, top_k=1)
        assert plain.draft_steps == 0
        # a random draft doubts everything: no threshold, so that its trees are verified
        results = c.set_parameters(eagle__enabled=True, eagle__drafting_top_k=2,
                                   eagle__drafting_step=3, eagle__verify_tree_size=6,
                                   eagle__confidence_threshold=0.0)
        assert all(r.successful for r in results), [r.reason for r in results]
        spec = c.ask(Q, max_new_tokens=24, top_k=1)
        assert spec.success and spec.text == plain.text   # greedy: exact
        assert spec.draft_steps > 0 and spec.drafted_tokens <= 6 * spec.draft_steps
        assert spec.mean_acceptance_length >= 1.0
        (r,) = c.set_parameters(eagle__verify_tree_size=65)
        assert not r.successful and "verify_tree_size out of range" in r.reason
        assert "Max: 64" in r.reason                     # the descriptor states eagle.max_tree
        (r,) = c.set_parameters(eagle__confidence_threshold=-0.5)
        assert not r.successful and "confidence_threshold" in r.reason
        (r,) = c.set_parameters(eagle__max_tree=128)
        assert not r.successful and "configure-time" in r.reason
        status = _latest_status(ros_graph)
        assert status.eagle_enabled and status.eagle_drafts >= spec.draft_steps
        assert status.eagle_mean_acceptance_length >= 1.0
        (r,) = c.set_parameters(eagle__enabled=False)
        assert r.successful and c.ask(Q, max_new_tokens=8, top_k=1).draft_steps == 0
    finally:
        assert c.transition("deactivate") and c.transition("cleanup")
