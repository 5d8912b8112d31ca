"""Images through the node: a frame on the camera topic, then /ask with use_image;
inline images; old frames and unknown encodings get IMAGE_ERROR while the node serves."""

from __future__ import annotations

import os
import tempfile
import time

_PARENT = tempfile.mkdtemp(prefix="edgellm_vlm_")


def _vlm_folder() -> str:
    from edgellm_ros.runtime.engine_dir import ensure_engine
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once
    return write_tiny_vlm_once(_PARENT, ensure_engine("", "", log=lambda m: None))


NODE_PARAMETERS = {"allowed_roots": ["default", _PARENT], "model": _vlm_folder(),
                   "engine_dir": os.path.join(_PARENT, "engine"),
                   "max_seq_len": 256, "max_image_age": 5.0}


def _image_msg(seed: int, encoding: str = "rgb8", stamp=None):
    from sensor_msgs.msg import Image

    from edgellm_ros.synthetic.tiny_vlm import synthetic_image
    img = synthetic_image(seed, 48, 64)
    msg = Image(height=48, width=64, encoding=encoding, step=64 * 3, data=img.tobytes())
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def _publish_and_wait(graph, msg, timeout=10.0):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    pub = graph.client_node.create_publisher(Image, "image", qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + timeout
        cam = graph.node._camera
        while time.monotonic() < deadline:
            pub.publish(msg)
            time.sleep(0.1)
            latest = cam._latest
            if latest is not None and bytes(latest[0].data) == bytes(msg.data) and \
                    latest[0].header.stamp == msg.header.stamp:
                return
        raise AssertionError("the node did not receive the frame")
    finally:
        graph.client_node.destroy_publisher(pub)


def test_camera_frame_then_ask_with_use_image(ros_graph):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    try:
        now = ros_graph.client_node.get_clock().now().to_msg()
        _publish_and_wait(ros_graph, _image_msg(1, stamp=now))
        r1 = c.ask("What do you see?", use_image=True, max_new_tokens=6, top_k=1)
        assert r1.success, r1.message
        tokens = c.tokens(r1.request_id)
        assert "".join(t.text for t in tokens) == r1.text and tokens[-1].done
        again = c.ask("What do you see?", use_image=True, max_new_tokens=6, top_k=1)
        assert again.text == r1.text and again.prompt_tokens == r1.prompt_tokens
        text_only = c.ask("What do you see?", max_new_tokens=6, top_k=1)
        assert text_only.success and text_only.prompt_tokens < r1.prompt_tokens
        # an inline image is used instead of the topic's frame
        inline = c.ask("What do you see?", use_image=True, image=_image_msg(2),
                       max_new_tokens=6, top_k=1)
        assert inline.success and inline.prompt_tokens == r1.prompt_tokens
        # several inline images in one request
        two = c.ask("Compare them.", use_image=True, image=_image_msg(2), images=[_image_msg(5)],
                    max_new_tokens=6, top_k=1)
        one = c.ask("Compare them.", use_image=True, image=_image_msg(2), max_new_tokens=6, top_k=1)
        assert two.success and one.success and two.prompt_tokens > one.prompt_tokens
        bad = _image_msg(6)
        bad.encoding = "32FC1"
        r = c.ask("Compare them.", use_image=True, image=_image_msg(2), images=[bad])
        assert not r.success and r.error_code == r.IMAGE_ERROR and "images[0]" in r.message
    finally:
        assert c.transition("deactivate") and c.transition("cleanup")


def test_old_frames_and_unknown_encodings_are_refused_while_serving(ros_graph):
    from builtin_interfaces.msg import Time
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    try:
        r = c.ask("See?", use_image=True)
        assert not r.success and r.error_code == r.IMAGE_ERROR and "no frame" in r.message
        _publish_and_wait(ros_graph, _image_msg(3, stamp=Time(sec=1000, nanosec=0)))
        r = c.ask("See?", use_image=True)
        assert not r.success and r.error_code == r.IMAGE_ERROR
        assert "old" in r.message and "max_image_age=5" in r.message
        bad = _image_msg(4)
        bad.encoding = "bayer_rggb8"
        r = c.ask("See?", use_image=True, image=bad)
        assert not r.success and r.error_code == r.IMAGE_ERROR and "bayer_rggb8" in r.message
        ok = c.ask("Still there?", max_new_tokens=4)
        assert ok.success, ok.message
    finally:
        assert c.transition("deactivate") and c.transition("cleanup")


def test_future_stamps_and_clock_jumps_never_make_a_frame_young(ros_graph):
    """Issue 22: a frame stamped an hour ahead was used forever. Now a stamp in the future
    (beyond the 0.5 s tolerance) is an IMAGE_ERROR with the reason, and a frame is as old as
    the time since it arrived (steady clock) even when the node's clock says otherwise."""
    from builtin_interfaces.msg import Time
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    c, node = ros_graph.client, ros_graph.node
    assert c.transition("configure") and c.transition("activate")
    clock_pub = ros_graph.client_node.create_publisher(Clock, "/clock", 10)
    try:
        now = ros_graph.client_node.get_clock().now()
        ahead = Time(sec=now.to_msg().sec + 3600, nanosec=0)
        _publish_and_wait(ros_graph, _image_msg(7, stamp=ahead))
        r = c.ask("See?", use_image=True, max_new_tokens=2)
        assert not r.success and r.error_code == r.IMAGE_ERROR, r.message
        assert "in the future" in r.message and "tolerance 0.5 s" in r.message, r.message
        # within the tolerance (clock skew): used
        near = (now + rclpy_duration(0.3)).to_msg()
        _publish_and_wait(ros_graph, _image_msg(7, stamp=near))
        r = c.ask("See?", use_image=True, max_new_tokens=2)
        assert r.success, r.message

        # the node's clock stops (simulated time paused, or a clock set back): the frame
        # still ages by when it arrived
        node.set_parameters([Parameter("use_sim_time", value=True)])
        assert c.set_parameters(max_image_age=1.0)[0].successful
        deadline = time.monotonic() + 10
        while node.get_clock().now().nanoseconds != 1000 * 10**9:
            assert time.monotonic() < deadline, "the node did not take /clock"
            clock_pub.publish(Clock(clock=Time(sec=1000)))
            time.sleep(0.05)
        _publish_and_wait(ros_graph, _image_msg(8, stamp=Time(sec=1000)))
        r = c.ask("See?", use_image=True, max_new_tokens=2)
        assert r.success, r.message                 # stamp age 0, arrived just now
        time.sleep(1.3)
        r = c.ask("See?", use_image=True, max_new_tokens=2)
        assert not r.success and r.error_code == r.IMAGE_ERROR, r.message
        assert "when it arrived (steady clock)" in r.message and "max_image_age=1" in r.message
    finally:
        node.set_parameters([Parameter("use_sim_time", value=False)])
        c.set_parameters(max_image_age=5.0)
        ros_graph.client_node.destroy_publisher(clock_pub)
        assert c.transition("deactivate") and c.transition("cleanup")


def rclpy_duration(seconds: float):
    from rclpy.duration import Duration
    return Duration(nanoseconds=int(seconds * 1e9))
