"""Hostile model files make configure fail with the reason, never hang the node (issue 22).

Through the real lifecycle services: a model whose model.safetensors is a
symlink to /dev/zero (configure never returned before) and a model whose
chat template loops 10**10 times (the node hung at the first ask) each fail
configure within seconds, the reason is logged, get_state answers, and a
configure with the good default model then succeeds. A template that loops
on one request only answers that request INVALID_REQUEST with the reason and
the node answers the next one.
"""

import tempfile
import time

from support import RosoutWatcher

from edgellm_ros.srv import Ask
from edgellm_ros.synthetic import hostile

NODE_PARAMETERS = {"max_seq_len": 256, "quantization": "none", "fused_ops": False,
                   "allowed_roots": ["default", tempfile.gettempdir()]}   # tmp_path: the hostile files


def _failed_configure(c, log, *words):
    t0 = time.monotonic()
    assert c.transition("configure", timeout=120) is False
    took = time.monotonic() - t0
    assert c.state() == "unconfigured"
    log.wait_for("configure failed", *words)
    return took


def _good_configure_then_cleanup(c):
    assert c.set_parameters(model="", engine_dir="")[0].successful
    assert c.transition("configure") is True and c.state() == "inactive"
    assert c.transition("cleanup") is True and c.state() == "unconfigured"


def test_a_model_symlinked_to_dev_zero_fails_configure_and_the_node_recovers(ros_graph, tmp_path):
    c = ros_graph.client
    log = RosoutWatcher(ros_graph)
    folder = hostile.dev_zero_model(str(tmp_path / "zero"))
    assert c.set_parameters(model=folder)[0].successful
    took = _failed_configure(c, log, "model.safetensors", "/dev/zero", "not a regular file")
    assert took < 30, took
    _good_configure_then_cleanup(c)


def test_a_looping_chat_template_fails_configure_and_the_node_recovers(ros_graph, tmp_path, default_engine_dir):
    c = ros_graph.client
    log = RosoutWatcher(ros_graph)
    folder = hostile.loop_template_model(str(tmp_path / "loop"), default_engine_dir)
    assert c.set_parameters(model=folder, engine_dir=str(tmp_path / "engine"))[0].successful
    took = _failed_configure(c, log, "chat template", "did not finish within")
    assert took < 60, took
    _good_configure_then_cleanup(c)


def test_a_request_whose_template_loops_is_refused_with_the_reason(ros_graph, tmp_path, default_engine_dir):
    c = ros_graph.client
    folder = hostile.engine_with_template(str(tmp_path / "engine"), default_engine_dir,
                                          hostile.LOOP_ON_REQUEST_TEMPLATE)
    assert c.set_parameters(model="", engine_dir=folder)[0].successful
    assert c.transition("configure") and c.transition("activate")
    c.wait_for_token_publisher()
    t0 = time.monotonic()
    res = c.ask("loop", max_new_tokens=4)
    assert not res.success and res.error_code == Ask.Response.INVALID_REQUEST, res
    assert "did not finish within" in res.message and time.monotonic() - t0 < 30, res.message
    assert c.state() == "active"
    res = c.ask("Say hi.", max_new_tokens=4)
    assert res.success, res.message
    assert c.transition("deactivate") and c.transition("cleanup")
