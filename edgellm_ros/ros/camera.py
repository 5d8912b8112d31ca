"""The camera input: keep the latest frame of the image topic, never a queue.

Subscribes to ``image`` (sensor_msgs/Image, remappable) with sensor-data QoS
and, when asked, to ``image/compressed`` (sensor_msgs/CompressedImage). Only
the newest message and when it arrived are kept; nothing runs per frame: the
conversion to RGB happens when a request uses the frame.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Tuple

from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image

from .ask import ImageUnavailable

IMAGE_TOPIC = "image"


class LatestFrame:
    """Holds the newest frame of the camera topic(s)."""

    def __init__(self, node: Any, compressed: bool = False):
        self.node = node
        self._lock = threading.Lock()
        self._latest: Optional[Tuple[Any, Time]] = None
        self.topic = node.resolve_topic_name(IMAGE_TOPIC)
        self._subs = [node.create_subscription(Image, IMAGE_TOPIC, self._on_msg,
                                               qos_profile_sensor_data)]
        if compressed:
            self._subs.append(node.create_subscription(
                CompressedImage, IMAGE_TOPIC + "/compressed", self._on_msg,
                qos_profile_sensor_data))

    def _on_msg(self, msg: Any) -> None:
        now = self.node.get_clock().now()
        with self._lock:
            self._latest = (msg, now)

    def image(self, now: Time, max_age: float) -> Any:
        """The latest frame as RGB uint8; ImageUnavailable when none or older than max_age."""
        from ..runtime.vision import image_from_compressed, image_from_raw
        with self._lock:
            latest = self._latest
        if latest is None:
            raise ImageUnavailable(f"use_image: no frame received on {self.topic} yet")
        msg, received = latest
        stamp = Time.from_msg(msg.header.stamp, clock_type=now.clock_type)
        taken = stamp if stamp.nanoseconds > 0 else received
        age = (now - taken).nanoseconds / 1e9
        if age > max_age:
            raise ImageUnavailable(
                f"use_image: the latest frame on {self.topic} is {age:.2f} s old, "
                f"older than max_image_age={max_age:g} s")
        if isinstance(msg, CompressedImage):
            return image_from_compressed(bytes(msg.data), msg.format)
        return image_from_raw(msg.width, msg.height, msg.encoding, msg.step, msg.data,
                              bool(msg.is_bigendian))

    def destroy(self) -> None:
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = []
