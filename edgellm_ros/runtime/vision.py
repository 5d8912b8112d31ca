r"""Images into the prompt: conversion, SmolVLM preprocessing, encoding and the embedding merge.

No rclpy here: the ROS layer hands over the fields of a ``sensor_msgs/Image``
(:func:`image_from_raw`) or a ``CompressedImage`` (:func:`image_from_compressed`)
and gets an RGB ``uint8 [H, W, 3]`` array.

:class:`VisionPipeline` does what transformers' ``Idefics3Processor`` does, with
OpenCV for the resizes:

1. resize so the longest edge is ``longest_edge`` (aspect kept, even short side);
2. with splitting, resize up to multiples of the tile size, cut ``rows x cols``
   tiles row by row, then append the whole image squashed to one tile (the
   global image); without, squash it to one tile;
3. rescale and normalise (``cv2.LUT``, one table per channel: inputs are uint8);
4. expand each ``<image>`` of the prompt into
   ``<fake_token_around_image><row_r_col_c><image>*Q`` per tile (a newline
   after each row), then ``\n<fake_token_around_image><global-img><image>*Q
   <fake_token_around_image>`` (only the last part when the image was not split).

The model was trained on PIL's LANCZOS resampling; OpenCV has none with the
same kernel, so enlarging uses INTER_LANCZOS4 and shrinking INTER_AREA (the
closest of its filters to an antialiased Lanczos; a few grey levels off at
sharp edges, see test_vision_preprocessing_matches_transformers.py).

The tiles go through the vision graph (``vision.onnx``, export/vision.py) and
:meth:`VisionPipeline.merge` writes the resulting rows over the rows of the
prompt's embeddings whose id is the image token, in order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import ArrayFunction, Backend
from ..errors import BackendUnavailable, ContextFull, InvalidRequest, ModelLoadError
from ..loaders.vlm import ImageProcessorConfig, is_vlm_folder, load_vision, read_vision_json
from ..models.siglip import SiglipReference, VisionConfig

#: Largest side transformers lets an image have after the first resize.
MAX_IMAGE_SIZE = 4096

#: ROS encoding -> (bytes per pixel, OpenCV conversion to RGB or None).
_ENCODINGS: Dict[str, Tuple[int, Optional[str]]] = {
    "rgb8": (3, None), "bgr8": (3, "COLOR_BGR2RGB"), "rgba8": (4, "COLOR_RGBA2RGB"),
    "bgra8": (4, "COLOR_BGRA2RGB"), "mono8": (1, "COLOR_GRAY2RGB"), "mono16": (2, "COLOR_GRAY2RGB"),
    "yuv422": (2, "COLOR_YUV2RGB_UYVY"), "uyvy": (2, "COLOR_YUV2RGB_UYVY"),
    "yuv422_yuy2": (2, "COLOR_YUV2RGB_YUY2"), "yuyv": (2, "COLOR_YUV2RGB_YUY2"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailable(
            f"OpenCV cannot be imported ({exc}): pip install opencv-python-headless") from exc
    return cv2


# -- conversion -----------------------------------------------------------------------------

def image_from_raw(width: int, height: int, encoding: str, step: int, data: Any,
                   is_bigendian: bool = False) -> np.ndarray:
    """The fields of a sensor_msgs/Image -> a new RGB uint8 [height, width, 3] array.

    rgb8, bgr8, rgba8, bgra8, mono8, mono16 (scaled to 8 bit as cv_bridge does,
    by 255/65535) and yuv422 / uyvy, yuv422_yuy2 / yuyv. Any other encoding, a
    step shorter than a row or data of a length other than step * height is an
    InvalidRequest naming the value.
    """
    if encoding not in _ENCODINGS:
        raise InvalidRequest(f"image encoding {encoding!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    bpp, conversion = _ENCODINGS[encoding]
    for name, value in (("width", width), ("height", height), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InvalidRequest(f"image {name} must be a positive integer, got {value!r}")
    if step < width * bpp:
        raise InvalidRequest(f"image step {step} is shorter than a row of {width} {encoding} "
                             f"pixels ({width * bpp} bytes)")
    if bpp == 2 and conversion and "YUV" in conversion and width % 2:
        raise InvalidRequest(f"{encoding} images need an even width, got {width}")
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"image data is not a byte buffer ({type(data).__name__})") from exc
    if buf.size != step * height:
        raise InvalidRequest(f"image data has {buf.size} bytes, expected step * height = "
                             f"{step} * {height} = {step * height}")
    rows = buf.reshape(height, step)[:, :width * bpp]                      # drop row padding
    if encoding == "mono16":
        px = rows.copy().view(">u2" if is_bigendian else "<u2").reshape(height, width)
        img = np.rint(px.astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.uint8)
    else:
        img = rows.reshape(height, width, bpp) if bpp > 1 else rows.reshape(height, width)
    if conversion is None:
        return np.array(img, dtype=np.uint8, order="C", copy=True)
    cv2 = _cv2()
    try:
        return cv2.cvtColor(np.ascontiguousarray(img), getattr(cv2, conversion))
    except cv2.error as exc:
        raise InvalidRequest(f"cannot convert a {encoding} image: {exc}") from exc


def image_from_compressed(data: Any, fmt: str = "") -> np.ndarray:
    """The data of a sensor_msgs/CompressedImage (jpeg, png, ...) -> RGB uint8 [H, W, 3]."""
    cv2 = _cv2()
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except (TypeError, ValueError, cv2.error) as exc:
        raise InvalidRequest(f"compressed image ({fmt or 'unknown format'}) cannot be decoded: "
                             f"{exc}") from exc
    if img is None:
        raise InvalidRequest(f"compressed image ({fmt or 'unknown format'}, {buf.size} bytes) "
                             "cannot be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# -- sizes, as transformers' Idefics3 image processor computes them ----------------------------

def resize_to_longest_edge(height: int, width: int, longest: int) -> Tuple[int, int]:
    """Longest edge -> ``longest``, aspect kept, the other side rounded up to even, then <= 4096."""
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def resize_to_tiles(height: int, width: int, tile: int) -> Tuple[int, int]:
    """Both sides up to multiples of ``tile`` (transformers' resize_for_vision_encoder)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def _flag(cv2: Any, shrink: bool, resample: int) -> int:
    """The OpenCV interpolation standing in for PIL filter ``resample`` when shrinking or enlarging."""
    if resample == 0:
        return cv2.INTER_NEAREST
    if shrink:
        return cv2.INTER_AREA
    return {1: cv2.INTER_LANCZOS4, 3: cv2.INTER_CUBIC}.get(resample, cv2.INTER_LINEAR)


def resize(img: np.ndarray, height: int, width: int, resample: int = 1) -> np.ndarray:
    """Resize ``img`` [h, w, C] to [height, width, C].

    Axis by axis when one grows and the other shrinks.
    """
    cv2 = _cv2()
    h0, w0 = img.shape[:2]
    if (h0, w0) == (height, width):
        return img
    if (width - w0) * (height - h0) < 0:
        img = cv2.resize(img, (width, h0), interpolation=_flag(cv2, width < w0, resample))
        return cv2.resize(img, (width, height), interpolation=_flag(cv2, height < h0, resample))
    flag = _flag(cv2, width < w0 or height < h0, resample)
    return cv2.resize(img, (width, height), interpolation=flag)


@dataclass(frozen=True)
class ImageLayout:
    """How the images of one request became tiles (what expand_prompt needs)."""

    # (rows, cols) of each image's split, in request order; (0, 0) = one global tile only.
    grids: Tuple[Tuple[int, int], ...]
    # Image tokens per tile.
    image_seq_len: int

    def tiles(self, i: int) -> int:
        rows, cols = self.grids[i]
        return rows * cols + 1 if rows else 1

    @property
    def num_tiles(self) -> int:
        return sum(self.tiles(i) for i in range(len(self.grids)))

    @property
    def num_image_tokens(self) -> int:
        """Rows of image embeddings the request adds (tiles * image_seq_len)."""
        return self.num_tiles * self.image_seq_len


class VisionPipeline:
    """SmolVLM / Idefics3 images -> tiles -> image embeddings merged into a prompt."""

    def __init__(self, vcfg: VisionConfig, proc: ImageProcessorConfig, encoder: Optional[ArrayFunction] = None,
                 reference: Optional[SiglipReference] = None, max_tiles_per_run: int = 8,
                 backend: str = "numpy"):
        if reference is None and encoder is None:
            raise ModelLoadError("a VisionPipeline needs a backend's encoder or a NumPy reference")
        self.vcfg, self.proc = vcfg, proc
        self.reference = reference
        #: pixel_values [n, 3, S, S] -> [n, Q, H] on a backend (contract.ArrayFunction), or None
        self.encoder = encoder
        self.max_tiles_per_run = max(1, int(max_tiles_per_run))
        #: "tensorrt", "onnxruntime" or "numpy": what encode() runs.
        self.backend = backend if encoder is not None else "numpy"
        #: Seconds spent by the last preprocess() and encode() calls.
        self.last_timings: Dict[str, float] = {}
        # rescale + normalise as a lookup table per RGB channel: [3, 256]
        v = np.arange(256, dtype=np.float64)
        if proc.do_rescale:
            v = v * proc.rescale_factor
        lut = np.stack([v] * 3)
        if proc.do_normalize:
            lut = (lut - np.array(proc.image_mean)[:, None]) / np.array(proc.image_std)[:, None]
        self._lut = lut.astype(np.float32)                                      # [3, 256]
        self._cv_lut = np.ascontiguousarray(self._lut.T.reshape(1, 256, 3))     # cv2.LUT's layout

    @classmethod
    def from_folder(cls, folder: str, max_tiles_per_run: int = 8, split_images: Optional[bool] = None,
                    backend: Optional[Backend] = None) -> "VisionPipeline":
        """The pipeline of an engine folder or of a SmolVLM / Idefics3 Hugging Face folder.

        An engine folder: vision.json + vision.onnx, opened on ``backend`` (None =
        ONNX Runtime on the CPU). A Hugging Face folder: the NumPy reference
        encoder (for tests and tools).

        ``split_images`` overrides the model's ``do_image_splitting`` (None keeps it):
        a split 640 x 480 frame is 13 tiles for SmolVLM-256M, unsplit it is one.
        """
        folder = os.fspath(folder)
        configs = read_vision_json(folder)
        reference: Optional[SiglipReference] = None
        encoder: Optional[ArrayFunction] = None
        name = "numpy"
        if configs is not None:
            vcfg, proc = configs
            if backend is None:
                from ..backends import open_backend
                backend = open_backend("onnxruntime")
            encoder, name = backend.open_vision(folder, vcfg, max_tiles_per_run), backend.name
        elif is_vlm_folder(folder):
            vweights, proc = load_vision(folder)
            vcfg, reference = vweights.config, SiglipReference(vweights)
        else:
            raise ModelLoadError(
                f"{folder} holds no vision model (no vision.json, not a SmolVLM folder)")
        if split_images is not None:
            proc = dataclasses.replace(proc, do_image_splitting=bool(split_images))
        return cls(vcfg, proc, encoder=encoder, reference=reference,
                   max_tiles_per_run=max_tiles_per_run, backend=name)

    def close(self) -> None:
        """Free the backend's encoder."""
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None

    # -- tokens -------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return self.proc.image_token_id

    @property
    def image_token(self) -> str:
        """The placeholder the chat template writes for each image (``<image>``)."""
        return self.proc.image_token

    @staticmethod
    def user_content(text: str, num_images: int) -> List[Dict[str, str]]:
        """Content parts of a user message for SmolVLM's chat template (images first).

        SmolVLM's template iterates over content parts: given a plain string it
        renders no text at all, so text-only turns need parts too.
        """
        return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]

    # -- images -> tiles ------------------------------------------------------------------
    def _tiles(self, img: np.ndarray) -> Tuple[List[np.ndarray], Tuple[int, int]]:
        p, tile = self.proc, self.proc.tile_size
        if p.longest_edge:
            img = resize(img, *resize_to_longest_edge(img.shape[0], img.shape[1], p.longest_edge),
                         resample=p.resample)
        if not p.do_image_splitting:
            return [resize(img, tile, tile, p.resample)], (0, 0)
        h, w = resize_to_tiles(img.shape[0], img.shape[1], tile)
        img = resize(img, h, w, p.resample)
        if h <= tile and w <= tile:
            return [img], (0, 0)
        rows, cols = h // tile, w // tile
        tiles = [img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                 for r in range(rows) for c in range(cols)]
        return tiles + [resize(img, tile, tile, p.resample)], (rows, cols)

    def preprocess(self, images: Sequence[np.ndarray]) -> Tuple[np.ndarray, ImageLayout]:
        """RGB uint8 [H, W, 3] images -> (pixel_values float32 [N, 3, S, S], layout)."""
        if not isinstance(images, (list, tuple)) or not images:
            raise InvalidRequest("images must be a non-empty list of RGB uint8 arrays")
        t0 = time.perf_counter()
        cv2 = _cv2()
        tiles: List[np.ndarray] = []
        grids = []
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
                    or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
                desc = (f"{img.dtype} {list(img.shape)}" if isinstance(img, np.ndarray)
                        else type(img).__name__)
                raise InvalidRequest(f"image {i} must be an RGB uint8 [H, W, 3] array, got {desc}")
            try:
                t, grid = self._tiles(np.ascontiguousarray(img))
            except cv2.error as exc:
                raise InvalidRequest(
                    f"image {i} ({list(img.shape)}) cannot be resized: {exc}") from exc
            tiles += t
            grids.append(grid)
        S = self.proc.tile_size
        out = np.empty((len(tiles), 3, S, S), np.float32)                       # [N, 3, S, S]
        for n, tile in enumerate(tiles):
            out[n] = cv2.LUT(np.ascontiguousarray(tile), self._cv_lut).transpose(2, 0, 1)
        self.last_timings["preprocess_s"] = time.perf_counter() - t0
        return out, ImageLayout(tuple(grids), self.proc.image_seq_len)

    def normalise(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 tiles [N, 3, S, S] -> float32 pixel_values (rescale + normalise by lookup)."""
        out = np.empty(tiles.shape, np.float32)
        for c in range(3):
            out[:, c] = self._lut[c][tiles[:, c]]
        return out

    def expand_prompt(self, text: str, layout: ImageLayout) -> str:
        """Replace the i-th ``<image>`` of ``text`` with image i's token sequence."""
        p = self.proc
        parts = text.split(p.image_token)
        if len(parts) - 1 != len(layout.grids):
            raise InvalidRequest(f"the prompt has {len(parts) - 1} {p.image_token} placeholders "
                                 f"for {len(layout.grids)} images")
        run = p.image_token * layout.image_seq_len
        global_part = f"{p.fake_image_token}{p.global_image_token}{run}{p.fake_image_token}"
        out = [parts[0]]
        for (rows, cols), rest in zip(layout.grids, parts[1:]):
            if rows == 0:
                out.append(global_part)
            else:
                for r in range(rows):
                    out += [f"{p.fake_image_token}<row_{r + 1}_col_{c + 1}>{run}"
                            for c in range(cols)]
                    out.append("\n")
                out += ["\n", global_part]
            out.append(rest)
        return "".join(out)

    # -- tiles -> embeddings -> prompt ---------------------------------------------------------
    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values [N, 3, S, S] -> image embeddings [N, Q, H] float32."""
        c = self.vcfg
        px = np.ascontiguousarray(pixel_values, dtype=np.float32)
        want = (c.num_channels, c.image_size, c.image_size)
        if px.ndim != 4 or px.shape[1:] != want or not px.shape[0]:
            raise InvalidRequest(f"pixel_values must be [N, {', '.join(map(str, want))}] with "
                                 f"N >= 1, got {list(px.shape)}")
        t0 = time.perf_counter()
        out = np.empty((px.shape[0], c.image_seq_len, c.text_hidden_size), np.float32)  # [N, Q, H]
        for a in range(0, px.shape[0], self.max_tiles_per_run):
            b = min(a + self.max_tiles_per_run, px.shape[0])
            if self.encoder is not None:
                out[a:b] = self.encoder(px[a:b])
            elif self.reference is not None:
                out[a:b] = self.reference.forward(px[a:b])
            else:
                raise BackendUnavailable("the VisionPipeline is closed: it has no encoder left")
        self.last_timings["encode_s"] = time.perf_counter() - t0
        return out

    def check_image_tokens(self, ids: Sequence[int], image_embeds: np.ndarray) -> int:
        """The number of image tokens in ``ids``, which must be one per embedding row.

        Raises InvalidRequest otherwise.
        """
        n = int(np.count_nonzero(np.asarray(ids) == self.image_token_id))
        rows = int(np.prod(image_embeds.shape[:-1])) if image_embeds.ndim > 1 else 0
        if n != rows:
            raise InvalidRequest(f"the prompt holds {n} image tokens (id {self.image_token_id}) "
                                 f"but the images give {rows} embedding rows")
        return n

    def merge_chunk(self, embeds: np.ndarray, ids: Sequence[int], image_embeds: np.ndarray,
                    first_row: int = 0) -> int:
        """Write image rows first_row.. over the rows of ``embeds`` [T, H] whose id is the image token.

        Returns the next first_row (for prefill in chunks).
        """
        rows = image_embeds.reshape(-1, image_embeds.shape[-1])                 # [M, H]
        id_array = np.asarray(ids)
        if embeds.ndim != 2 or embeds.shape[0] != id_array.shape[0] or embeds.shape[1] != rows.shape[1]:
            raise InvalidRequest(f"embeds {list(embeds.shape)} do not fit {id_array.shape[0]} ids and "
                                 f"image rows of width {rows.shape[1]}")
        where = np.flatnonzero(id_array == self.image_token_id)
        if first_row + where.size > rows.shape[0]:
            raise InvalidRequest(f"the prompt holds more image tokens ({first_row + where.size}) "
                                 f"than the images give embedding rows ({rows.shape[0]})")
        embeds[where] = rows[first_row:first_row + where.size]
        return first_row + int(where.size)

    def merge(self, embeds: np.ndarray, ids: Sequence[int], image_embeds: np.ndarray) -> None:
        """Write all image rows over the image-token rows of a whole prompt's ``embeds`` [T, H]."""
        self.check_image_tokens(ids, image_embeds)
        self.merge_chunk(embeds, ids, image_embeds, 0)

    def prepare(self, text: str, images: Sequence[np.ndarray], tokenizer: Any,
                max_tokens: int = 0) -> Tuple[List[int], np.ndarray]:
        """Preprocess + expand_prompt + tokenize + encode: (ids, image embeddings [N*Q, H]).

        With ``max_tokens``, a prompt longer than that raises ContextFull before
        the (costly) encoder runs.
        """
        ids, image_embeds, _ = self.prepare_with_layout(text, images, tokenizer, max_tokens)
        return ids, image_embeds

    def prepare_with_layout(self, text: str, images: Sequence[np.ndarray], tokenizer: Any,
                            max_tokens: int = 0) -> Tuple[List[int], np.ndarray, ImageLayout]:
        """:meth:`prepare`, with the images' layout (to expand a prefix of ``text`` the same way)."""
        pixel_values, layout = self.preprocess(images)
        ids = tokenizer.encode(self.expand_prompt(text, layout))
        if max_tokens and len(ids) > max_tokens:
            raise ContextFull(
                f"the prompt is {len(ids)} tokens, {layout.num_image_tokens} of them for "
                f"{len(layout.grids)} image(s) in {layout.num_tiles} tiles: more than "
                f"max_seq_len {max_tokens}")
        image_embeds = self.encode(pixel_values).reshape(-1, self.vcfg.text_hidden_size)
        self.check_image_tokens(ids, image_embeds)
        return ids, image_embeds, layout
