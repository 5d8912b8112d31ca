"""Preprocessing gives transformers' Idefics3 processor output: the same tiles, split grid and
prompt ids exactly, pixel values within a few grey levels (OpenCV resampling, not PIL's).

Expected values: test/data/reference_tiny_vlm.json (tools/reference/make_tiny_vlm_reference.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.synthetic.tiny_vlm import (TEST_IMAGES, synthetic_image, unpack_u8,
                                            write_tiny_vlm_once)
from edgellm_ros.runtime.tokenizer import Tokenizer
from edgellm_ros.runtime.vision import (ImageLayout, VisionPipeline, resize_to_longest_edge,
                                        resize_to_tiles)
from support import load_json

REF = load_json("reference_tiny_vlm.json")
# Measured on the reference images: mean 0.5-2.3 grey levels, max 11-26 (at the box's edges).
MEAN_LEVELS, MAX_LEVELS = 3.0, 32


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory, default_engine_dir):
    return write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), default_engine_dir)


@pytest.fixture(scope="module")
def pipe(tiny_vlm):
    return VisionPipeline.from_folder(tiny_vlm)


@pytest.fixture(scope="module")
def tok(tiny_vlm):
    return Tokenizer.from_hf_folder(tiny_vlm)


def grey_levels(pipe: VisionPipeline, pixel_values: np.ndarray) -> np.ndarray:
    """Undo normalise + rescale: [N, 3, S, S] in 0..255 units."""
    p = pipe.proc
    mean = np.array(p.image_mean)[None, :, None, None]
    std = np.array(p.image_std)[None, :, None, None]
    return (pixel_values * std + mean) / p.rescale_factor


def cases():
    out = [(k, c["spec"], c["do_image_splitting"], (c["rows"], c["cols"]), c["pixel_u8"])
           for k, c in REF["preprocess"].items()]
    for i, name in enumerate(("image_a", "image_b")):
        c = REF["cases"][name]
        out.append((name, TEST_IMAGES[i], True, (c["rows"][0], c["cols"][0]), c["pixel_u8"]))
    return out


@pytest.mark.parametrize("name,spec,split,grid,packed", cases(), ids=[c[0] for c in cases()])
def test_tiles_match_transformers(pipe, name, spec, split, grid, packed):
    p = pipe if split else VisionPipeline(
        pipe.vcfg, dataclasses.replace(pipe.proc, do_image_splitting=False),
        reference=pipe.reference)
    pixel_values, layout = p.preprocess([synthetic_image(*spec)])
    want = unpack_u8(packed).astype(np.float64)                          # [N, 3, S, S]
    assert layout.grids == (tuple(grid),)
    assert pixel_values.shape == want.shape and pixel_values.dtype == np.float32
    diff = np.abs(grey_levels(p, pixel_values) - want)
    assert diff.mean() < MEAN_LEVELS and diff.max() < MAX_LEVELS, (diff.mean(), diff.max())


def test_split_images_override(tiny_vlm):
    img = synthetic_image(*TEST_IMAGES[0])
    whole = VisionPipeline.from_folder(tiny_vlm, split_images=False)
    pixel_values, layout = whole.preprocess([img])
    assert layout.grids == ((0, 0),) and pixel_values.shape[0] == 1
    assert VisionPipeline.from_folder(tiny_vlm, split_images=True).preprocess([img])[1].grids == \
        ((1, 2),)


def test_crops_of_an_exact_size_image_are_exact(pipe):
    """A 128 x 64 image needs no resize before the split: its two tiles are plain crops."""
    img = synthetic_image(3, 64, 128)
    pixel_values, layout = pipe.preprocess([img])
    assert layout.grids == ((1, 2),) and pixel_values.shape[0] == 3
    levels = np.rint(grey_levels(pipe, pixel_values[:2])).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(levels[0], img[:, :64]) and np.array_equal(levels[1], img[:, 64:])


def test_sizes_follow_transformers_rules():
    assert resize_to_longest_edge(50, 120, 128) == (54, 128)      # 53.3 -> 53 -> even 54
    assert resize_to_longest_edge(90, 40, 128) == (128, 56)
    assert resize_to_longest_edge(480, 640, 2048) == (1536, 2048)
    assert resize_to_longest_edge(10, 9000, 9000) == (4, 4096)    # capped at 4096
    assert resize_to_tiles(54, 128, 64) == (64, 128)
    assert resize_to_tiles(1536, 2048, 512) == (1536, 2048)
    assert resize_to_tiles(128, 56, 64) == (128, 64)


@pytest.mark.parametrize("case", ["image_a", "image_b", "two_images"])
def test_prompt_and_ids_equal_transformers(pipe, tok, case):
    c = REF["cases"][case]
    images = [synthetic_image(*TEST_IMAGES[0])] if case == "image_a" else \
        [synthetic_image(*TEST_IMAGES[1])] if case == "image_b" else \
        [synthetic_image(*spec) for spec in TEST_IMAGES]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": pipe.user_content(REF["question"], len(images))}])
    assert prompt == c["prompt"]
    pixel_values, layout = pipe.preprocess(images)
    assert [list(g) for g in layout.grids] == [list(x) for x in zip(c["rows"], c["cols"])]
    assert list(pixel_values.shape) == c["pixel_values_shape"]
    text = pipe.expand_prompt(prompt, layout)
    ids = tok.encode(text)
    assert ids == c["input_ids"]
    assert tok.decode(ids) == text
    assert ids.count(pipe.image_token_id) == layout.num_image_tokens


def test_expanded_prompt_layout(pipe):
    layout = ImageLayout(((1, 2), (0, 0)), 2)
    text = pipe.expand_prompt("A<image>B<image>C", layout)
    f, g, im = "<fake_token_around_image>", "<global-img>", "<image>"
    assert text == (f"A{f}<row_1_col_1>{im}{im}{f}<row_1_col_2>{im}{im}\n\n{f}{g}{im}{im}{f}"
                    f"B{f}{g}{im}{im}{f}C")
    assert layout.num_tiles == 4 and layout.num_image_tokens == 8


def test_placeholder_count_must_match_images(pipe):
    _, layout = pipe.preprocess([synthetic_image(*TEST_IMAGES[1])])
    with pytest.raises(InvalidRequest, match="0 <image> placeholders for 1 images"):
        pipe.expand_prompt("no image here", layout)
    with pytest.raises(InvalidRequest, match="2 <image> placeholders"):
        pipe.expand_prompt("<image><image>", layout)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((8, 8, 3), np.float32), "float32"),
    (np.zeros((8, 8), np.uint8), r"\[8, 8\]"),
    (np.zeros((8, 8, 4), np.uint8), r"\[8, 8, 4\]"),
    (np.zeros((0, 8, 3), np.uint8), r"\[0, 8, 3\]"),
    ("not an image", "str"),
])
def test_bad_images_are_invalid_requests(pipe, bad, match):
    with pytest.raises(InvalidRequest, match=match):
        pipe.preprocess([synthetic_image(*TEST_IMAGES[1]), bad])
    with pytest.raises(InvalidRequest):
        pipe.preprocess([])


def test_chat_template_drops_plain_string_content(tok):
    """SmolVLM's template reads content parts only: why user_content exists."""
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}])
    assert "hello" not in text
    parts = tok.apply_chat_template(
        [{"role": "user", "content": VisionPipeline.user_content("hello", 0)}])
    assert parts == "<|im_start|>User: hello<end_of_utterance>\nAssistant:"
