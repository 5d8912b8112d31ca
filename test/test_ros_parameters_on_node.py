"""Parameters through the node's real parameter services.

Descriptors carry descriptions and ranges; valid changes apply, invalid ones
are refused with the reason; configure-time parameters change only while the
node is unconfigured.
"""

from rcl_interfaces.msg import ParameterType

from edgellm_ros.ros.node import LIMITED_BY
from edgellm_ros.ros.params import CONFIGURE_TIME, PARAMETERS, SPECS
from edgellm_ros.runtime.config import EagleLimits

NODE_PARAMETERS = {"max_seq_len": 256}


def test_every_parameter_is_declared_with_its_descriptor(ros_graph):
    c = ros_graph.client
    names = [p.name for p in PARAMETERS]
    for spec, d in zip(PARAMETERS, c.describe_parameters(*names)):
        assert d.name == spec.name and d.description == spec.description
        assert d.read_only == (spec.name == "allowed_roots") and not d.dynamic_typing
        assert ("configure-time" in d.additional_constraints) == (spec.name in CONFIGURE_TIME)
        if spec.range is None:
            assert not d.integer_range and not d.floating_point_range
        elif d.type == ParameterType.PARAMETER_DOUBLE:
            r = d.floating_point_range[0]
            assert (r.from_value, r.to_value) == spec.range
        else:       # the EAGLE tree's ranges end at the eagle.max_* in force
            r = d.integer_range[0]
            lo, hi = spec.range
            if spec.name in LIMITED_BY:
                hi = getattr(EagleLimits(), LIMITED_BY[spec.name])
            assert (r.from_value, r.to_value) == (lo, hi)
    assert c.get_parameters("max_seq_len", "sampling.temperature") == [256, 0.0]


def test_valid_runtime_changes_apply(ros_graph):
    c = ros_graph.client
    results = c.set_parameters(sampling__temperature=0.7, sampling__top_k=40,
                               system_prompt="Answer in one sentence.", queue_size=2)
    assert all(r.successful for r in results), [r.reason for r in results]
    assert c.get_parameters("sampling.temperature", "sampling.top_k", "queue_size") == \
        [0.7, 40, 2]
    assert ros_graph.node._defaults.sampling.top_k == 40
    assert ros_graph.node._defaults.system_prompt == "Answer in one sentence."


def test_invalid_changes_are_refused_with_the_reason(ros_graph):
    c = ros_graph.client
    cases = [
        ("sampling.temperature", -1.0, "out of range"),    # the descriptor's range (rclpy)
        ("sampling.top_p", 0.0, "out of range"),
        ("max_image_age", 0.0, "out of range"),
        ("backend", "cuda", "backend must be one of"),
        ("max_new_tokens", 0, "out of range"),
        # wrong types name both types (rclpy's own reason: "expected '2' got '4'")
        ("queue_size", "many", "queue_size must be integer, got string 'many'"),
        ("sampling.temperature", 1, "sampling.temperature must be double, got integer 1 "
                                    "(write 1.0, not 1)"),
        ("eagle.enabled", "yes", "eagle.enabled must be bool, got string 'yes'"),
        ("lora_adapters", "a:/x", "lora_adapters must be string array, got string 'a:/x'"),
    ]
    for name, value, words in cases:
        before = c.get_parameters(name)
        (result,) = c.set_parameters(**{name.replace(".", "__"): value})
        assert not result.successful, name
        assert words in result.reason, (name, result.reason)
        assert c.get_parameters(name) == before


def test_configure_time_parameters_change_only_while_unconfigured(ros_graph):
    c = ros_graph.client
    assert c.set_parameters(max_seq_len=320)[0].successful        # unconfigured: fine
    assert c.transition("configure")
    try:
        (result,) = c.set_parameters(max_seq_len=1024)
        assert not result.successful
        assert "max_seq_len: configure-time parameter" in result.reason
        assert "inactive" in result.reason and "clean up" in result.reason
        assert c.get_parameters("max_seq_len") == [320]
        assert c.set_parameters(max_seq_len=320)[0].successful    # unchanged value: fine
        assert c.set_parameters(max_new_tokens=5)[0].successful   # runtime: fine
    finally:
        assert c.transition("cleanup")
    assert c.set_parameters(max_seq_len=1024)[0].successful


def test_both_ends_of_every_descriptor_range_are_accepted(ros_graph):
    """The range a descriptor states is what the node accepts: no end of it is refused
    (issue 22: sampling.top_p and max_image_age allowed 0, which the node refused)."""
    c = ros_graph.client
    tree = {name: SPECS[name].default for name in LIMITED_BY}
    # the smallest tree, so that eagle.max_* may go down to 1
    assert all(r.successful for r in c.set_parameters(**{n.replace(".", "__"): 1 for n in tree}))
    ranged = [s for s in PARAMETERS if s.range is not None]
    for spec, d in zip(ranged, c.describe_parameters(*(s.name for s in ranged))):
        r = (d.floating_point_range or d.integer_range)[0]
        for end in (r.from_value, r.to_value):
            (result,) = c.set_parameters(**{spec.name.replace(".", "__"): end})
            assert result.successful, (spec.name, end, result.reason)
        assert c.set_parameters(**{spec.name.replace(".", "__"): spec.default})[0].successful
    assert all(r.successful for r in c.set_parameters(
        **{n.replace(".", "__"): v for n, v in tree.items()}))
