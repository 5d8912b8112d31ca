"""model, engine_dir, lora_adapters and eagle.draft must resolve inside allowed_roots (issue
22: any participant of the domain could point them anywhere, and engine_dir made the node
write into any empty folder). allowed_roots is read-only after start; the refusals name the
parameter, the path and what it resolves to; the node keeps serving."""

import os
import tempfile

import pytest

from edgellm_ros.errors import ConfigError

ALLOWED = tempfile.mkdtemp(prefix="edgellm_allowed_")
OUTSIDE = tempfile.mkdtemp(prefix="edgellm_outside_")
os.symlink(OUTSIDE, os.path.join(ALLOWED, "link_out"))
NODE_PARAMETERS = {"max_seq_len": 256, "allowed_roots": ["default", ALLOWED]}


@pytest.mark.parametrize("name, value, words", [
    ("model", os.path.join(OUTSIDE, "m.gguf"), "model '%s' is outside allowed_roots"),
    ("model", "/etc/passwd", "model '/etc/passwd' is outside allowed_roots"),
    ("engine_dir", os.path.join(OUTSIDE, "engine"), "engine_dir '%s' is outside"),
    # a symlink inside an allowed root, and "..", are resolved first
    ("engine_dir", os.path.join(ALLOWED, "link_out", "engine"),
     "(resolves to %s/engine) is outside" % OUTSIDE),
    ("model", os.path.join(ALLOWED, "..", os.path.basename(OUTSIDE)), "is outside allowed_roots"),
    ("lora_adapters", ["mine:" + OUTSIDE], "lora_adapters entry 'mine': '%s' is outside"),
    ("eagle.draft", OUTSIDE, "eagle.draft '%s' is outside allowed_roots"),
])
def test_a_path_outside_the_allowed_roots_is_refused(ros_graph, name, value, words):
    c = ros_graph.client
    before = c.get_parameters(name)
    (result,) = c.set_parameters(**{name.replace(".", "__"): value})
    assert not result.successful
    shown = value if isinstance(value, str) else OUTSIDE
    assert (words % shown if "%s" in words else words) in result.reason, result.reason
    assert ALLOWED in result.reason and "allowed_roots naming its folder" in result.reason
    assert c.get_parameters(name) == before and c.state() == "unconfigured"


def test_paths_inside_the_allowed_roots_and_the_shipped_files_are_taken(ros_graph):
    c = ros_graph.client
    for name, value in (("engine_dir", os.path.join(ALLOWED, "engine")),
                        ("model", os.path.join(ALLOWED, "sub", "m.gguf")),
                        ("lora_adapters", ["radiology:adapters/radiology"]),   # package share
                        ("model", ""), ("engine_dir", "")):
        (result,) = c.set_parameters(**{name: value})
        assert result.successful, (name, value, result.reason)


def test_allowed_roots_is_read_only_after_start(ros_graph):
    c = ros_graph.client
    (d,) = c.describe_parameters("allowed_roots")
    assert d.read_only
    (result,) = c.set_parameters(allowed_roots=["/"])
    assert not result.successful and "read-only" in result.reason
    assert c.get_parameters("allowed_roots") == [["default", ALLOWED]]
    (result,) = c.set_parameters(model="/etc/passwd")
    assert not result.successful


def test_a_node_started_with_a_path_outside_fails_configure_with_the_reason(tmp_path):
    """Start-time values (command line, params file) are checked at configure too."""
    from edgellm_ros.ros.params import settings_from_parameters

    with pytest.raises(ConfigError, match="engine_dir '/var/tmp/x' is outside allowed_roots"):
        settings_from_parameters({"engine_dir": "/var/tmp/x"})
    with pytest.raises(ConfigError, match="allowed_roots entries must be absolute folders or "
                                          "'default', got 'models'"):
        settings_from_parameters({"allowed_roots": ["models"]})
    settings_from_parameters({"engine_dir": str(tmp_path), "allowed_roots": [str(tmp_path)]})
