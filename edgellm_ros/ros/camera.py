"""The camera input: keep the latest frame of the image topic, never a queue.

Subscribes to ``image`` (sensor_msgs/Image, remappable) with sensor-data QoS
and, when asked, to ``image/compressed`` (sensor_msgs/CompressedImage). Only
the newest message and when it arrived are kept; nothing runs per frame: the
conversion to RGB happens when a request uses the frame.

A frame's age is the larger of two: now minus its header stamp (the node's
clock, ROS or simulated time), and the time since it arrived on the steady
clock, which no clock jump moves. So a frame stamped in the future, or a ROS
clock set back after it arrived, never makes an old frame young. A stamp more
than :data:`FUTURE_TOLERANCE_S` ahead of the node's clock is refused as an
error: camera and node clocks disagree beyond what synchronised clocks (NTP,
PTP: milliseconds) do.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional, Tuple

from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image

from .ask import ImageUnavailable

IMAGE_TOPIC = "image"
#: Seconds a frame's stamp may lie ahead of the node's clock (clock skew between the
#: camera's computer and this one) before the frame is refused.
FUTURE_TOLERANCE_S = 0.5


class LatestFrame:
    """Holds the newest frame of the camera topic(s)."""

    def __init__(self, node: Any, compressed: bool = False):
        self.node = node
        self._lock = threading.Lock()
        # (message, arrival on the node's clock, arrival on the steady clock)
        self._latest: Optional[Tuple[Any, Time, float]] = None
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
            self._latest = (msg, now, time.monotonic())

    def image(self, now: Time, max_age: float) -> Any:
        """The latest frame as RGB uint8.

        ImageUnavailable when there is none, when it is older than ``max_age`` by its stamp
        or by its arrival (steady clock), or when its stamp is in the future.
        """
        from ..runtime.vision import image_from_compressed, image_from_raw
        with self._lock:
            latest = self._latest
        if latest is None:
            raise ImageUnavailable(f"use_image: no frame received on {self.topic} yet")
        msg, received, arrived = latest
        stamp = Time.from_msg(msg.header.stamp, clock_type=now.clock_type)
        taken = stamp if stamp.nanoseconds > 0 else received
        stamp_age = (now - taken).nanoseconds / 1e9
        if stamp_age < -FUTURE_TOLERANCE_S:
            raise ImageUnavailable(
                f"use_image: the latest frame on {self.topic} is stamped {-stamp_age:.2f} s in "
                f"the future (stamp {stamp.nanoseconds / 1e9:.3f}, node clock "
                f"{now.nanoseconds / 1e9:.3f}; tolerance {FUTURE_TOLERANCE_S:g} s): the camera's "
                "clock and this node's disagree")
        arrival_age = time.monotonic() - arrived
        age = max(stamp_age, arrival_age)
        if age > max_age:
            by = "its stamp" if stamp_age >= arrival_age else "when it arrived (steady clock)"
            raise ImageUnavailable(
                f"use_image: the latest frame on {self.topic} is {age:.2f} s old by {by}, "
                f"older than max_image_age={max_age:g} s")
        if isinstance(msg, CompressedImage):
            return image_from_compressed(bytes(msg.data), msg.format)
        return image_from_raw(msg.width, msg.height, msg.encoding, msg.step, msg.data,
                              bool(msg.is_bigendian))

    def destroy(self) -> None:
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = []
