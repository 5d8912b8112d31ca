"""ROS image encodings convert to RGB uint8 without rclpy; anything else is a clear InvalidRequest.

Inputs are made with OpenCV from one RGB image, laid out as sensor_msgs/Image
would carry them (row padding in ``step`` included).
"""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.synthetic.tiny_vlm import synthetic_image
from edgellm_ros.runtime.vision import SUPPORTED_ENCODINGS, image_from_compressed, image_from_raw

RGB = synthetic_image(5, 24, 32)                                          # [H, W, 3]
H, W = RGB.shape[:2]


def packed(img: np.ndarray, pad: int = 0) -> tuple:
    """(step, bytes) of an image with ``pad`` bytes after each row."""
    rows = img.reshape(img.shape[0], -1)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 7, np.uint8)], axis=1)
    return rows.shape[1], rows.tobytes()


@pytest.mark.parametrize("encoding,source", [
    ("rgb8", RGB),
    ("bgr8", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR)),
    ("rgba8", cv2.cvtColor(RGB, cv2.COLOR_RGB2RGBA)),
    ("bgra8", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGRA)),
])
@pytest.mark.parametrize("pad", [0, 8])
def test_colour_encodings_round_trip(encoding, source, pad):
    step, data = packed(source, pad)
    out = image_from_raw(W, H, encoding, step, data)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    assert np.array_equal(out, RGB)


@pytest.mark.parametrize("pad", [0, 4])
def test_mono8_becomes_grey_rgb(pad):
    grey = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
    step, data = packed(grey, pad)
    out = image_from_raw(W, H, "mono8", step, data)
    assert np.array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_is_scaled_to_8_bit(bigendian):
    grey16 = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257 + 3    # 0..65535 range
    grey16[0, 0], grey16[0, 1] = 0, 65535
    raw = grey16.astype(">u2" if bigendian else "<u2")
    out = image_from_raw(W, H, "mono16", W * 2, raw.tobytes(), is_bigendian=bigendian)
    want = cv2.convertScaleAbs(grey16, alpha=255.0 / 65535.0)             # cv_bridge's scaling
    assert np.array_equal(out[:, :, 0], want) and np.array_equal(out[:, :, 2], want)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


@pytest.mark.parametrize("encoding,to_yuv,from_yuv", [
    ("yuv422", cv2.COLOR_RGB2YUV_UYVY, cv2.COLOR_YUV2RGB_UYVY),
    ("uyvy", cv2.COLOR_RGB2YUV_UYVY, cv2.COLOR_YUV2RGB_UYVY),
    ("yuv422_yuy2", cv2.COLOR_RGB2YUV_YUY2, cv2.COLOR_YUV2RGB_YUY2),
    ("yuyv", cv2.COLOR_RGB2YUV_YUY2, cv2.COLOR_YUV2RGB_YUY2),
])
def test_yuv422_decodes_like_opencv(encoding, to_yuv, from_yuv):
    pairs = np.repeat(RGB[:, ::2], 2, axis=1)     # one colour per pixel pair: chroma survives 4:2:2
    yuv = cv2.cvtColor(pairs, to_yuv)                                     # [H, W, 2]
    step, data = packed(yuv, pad=6)
    out = image_from_raw(W, H, encoding, step, data)
    assert np.array_equal(out, cv2.cvtColor(yuv, from_yuv))
    assert np.abs(out.astype(int) - pairs).max() <= 1


def test_buffer_types_from_rclpy_are_accepted():
    step, data = packed(RGB)
    for buf in (data, bytearray(data), memoryview(data), array.array("B", data)):
        assert np.array_equal(image_from_raw(W, H, "rgb8", step, buf), RGB)


def test_result_does_not_alias_the_message_data():
    step, data = packed(RGB)
    buf = bytearray(data)
    out = image_from_raw(W, H, "rgb8", step, buf)
    buf[0] ^= 0xFF
    assert out[0, 0, 0] == RGB[0, 0, 0]


@pytest.mark.parametrize("encoding", ["16UC1", "bayer_rggb8", "rgb16", "32FC1", "jpeg", ""])
def test_unknown_encoding_is_named(encoding):
    step, data = packed(RGB)
    with pytest.raises(InvalidRequest, match=f"encoding '{encoding}' is not supported") as err:
        image_from_raw(W, H, encoding, step, data)
    assert all(e in str(err.value) for e in SUPPORTED_ENCODINGS)


def test_bad_step_and_length_are_named():
    step, data = packed(RGB)
    with pytest.raises(InvalidRequest, match=f"step {step - 1} is shorter than a row"):
        image_from_raw(W, H, "rgb8", step - 1, data)
    with pytest.raises(InvalidRequest, match=rf"{len(data) - 3} bytes, expected step \* height = "
                                             rf"{step} \* {H} = {step * H}"):
        image_from_raw(W, H, "rgb8", step, data[:-3])
    with pytest.raises(InvalidRequest, match="bytes, expected step"):
        image_from_raw(W, H, "rgb8", step + 4, data)
    with pytest.raises(InvalidRequest, match="width must be a positive integer, got 0"):
        image_from_raw(0, H, "rgb8", step, data)
    with pytest.raises(InvalidRequest, match="even width"):
        image_from_raw(W - 1, H, "yuv422", step, data)
    with pytest.raises(InvalidRequest, match="not a byte buffer"):
        image_from_raw(W, H, "rgb8", step, [1, 2, 3])


def test_compressed_images_decode_and_garbage_is_named():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    assert np.array_equal(image_from_compressed(png.tobytes(), "png"), RGB)
    with pytest.raises(InvalidRequest, match=r"image \(jpeg, 5 bytes\) cannot be decoded"):
        image_from_compressed(b"12345", "jpeg")
