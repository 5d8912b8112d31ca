"""/ask with use_image and an inline image answers about the inline image, not the camera frame.

The tiny VLM answers differently about different images (checked first, so
the test can tell them apart): with frame A on the camera topic, an inline B
must give exactly the answer the node gives when B itself is the camera
frame, and not A's answer.
"""

from __future__ import annotations

import os
import tempfile
import time

_PARENT = tempfile.mkdtemp(prefix="edgellm_vlm_inline_")
QUESTION = "What do you see?"
ASK = dict(use_image=True, max_new_tokens=12, top_k=1)


def _vlm_folder() -> str:
    from edgellm_ros.runtime.engine_dir import ensure_engine
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once
    return write_tiny_vlm_once(_PARENT, ensure_engine("", "", log=lambda m: None))


NODE_PARAMETERS = {"allowed_roots": ["default", _PARENT], "model": _vlm_folder(),
                   "engine_dir": os.path.join(_PARENT, "engine"),
                   "max_seq_len": 256, "max_image_age": 600.0}  # not about age: a loaded CI machine


def _image_msg(seed: int, stamp=None):
    """A 48 x 64 rgb8 frame; every seed gives other pixels but the same token layout."""
    from sensor_msgs.msg import Image

    from edgellm_ros.synthetic.tiny_vlm import synthetic_image
    img = synthetic_image(seed, 48, 64)
    msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=img.tobytes())
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def _show_camera(graph, seed: int, timeout: float = 60.0) -> None:
    """Publish frame ``seed`` until the node holds it as its latest frame."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    msg = _image_msg(seed, stamp=graph.client_node.get_clock().now().to_msg())
    pub = graph.client_node.create_publisher(Image, "image", qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub.publish(msg)
            time.sleep(0.1)
            latest = graph.node._camera._latest
            if latest is not None and bytes(latest[0].data) == bytes(msg.data):
                return
        raise AssertionError(f"the node did not receive frame {seed}")
    finally:
        graph.client_node.destroy_publisher(pub)


def _answer(client, **fields):
    res = client.ask(QUESTION, **ASK, **fields)
    assert res.success, res.message
    return res.text


def test_inline_image_is_answered_instead_of_the_camera_frame(ros_graph):
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    try:
        _show_camera(ros_graph, 2)
        about_b = _answer(c)
        _show_camera(ros_graph, 1)
        about_a = _answer(c)
        assert about_a != about_b, "frames 1 and 2 must give different answers for this test"
        inline_b = _answer(c, image=_image_msg(2))
        assert inline_b == about_b, (f"with frame 1 on the camera, inline image 2 was answered "
                                     f"{inline_b!r}: image 2's answer is {about_b!r}, frame 1's "
                                     f"{about_a!r}")
        # the camera frame is still there and still used without an inline image
        assert _answer(c) == about_a
    finally:
        assert c.transition("deactivate") and c.transition("cleanup")
