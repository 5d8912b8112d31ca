"""An Engine whose prefill chunks cut through an image's token run gives transformers' logits.

Each chunk must continue the image embedding rows where the previous chunk
stopped; restarting at row 0 in every chunk repeats the first rows and moves
the logits. The whole path of a request runs here: the engine's own chat
prompt, image preprocessing, vision.onnx, the chunked merge and decoder.onnx,
on the seeded tiny VLM. Expected values: test/data/reference_tiny_vlm.json
(transformers' Idefics3 on the same images).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.runtime.config import EagleLimits, EngineConfig, GenerationRequest
from edgellm_ros.synthetic.tiny_vlm import IMAGE_TOKEN_ID, synthetic_image, unpack_u8
from support import load_json

REF = load_json("reference_tiny_vlm.json")
CHUNK = 20          # image tokens start at id 4: chunk borders at 20, 40, 60... fall inside the runs
IMAGES = {"image_a": [0], "image_b": [1], "two_images": [0, 1]}


@pytest.fixture(scope="module")
def chunked_vlm(tiny_vlm, tmp_path_factory):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(model=tiny_vlm, engine_dir=str(tmp_path_factory.mktemp("vlm_chunks")),
                                   max_seq_len=256, prefill_chunk=CHUNK, split_images=True,
                                   # the chunk must hold 1 + max_tree rows
                                   quantization="none", eagle_limits=EagleLimits(max_tree=CHUNK - 1)),
                      log=lambda m: None)
    yield eng
    eng.close()


def _request(case, max_new_tokens=1):
    images = tuple(synthetic_image(*REF["test_images"][i]) for i in IMAGES[case])
    return GenerationRequest(prompt=REF["question"], images=images, max_new_tokens=max_new_tokens)


def _pixels(case, vision):
    """The processor's own pixel values of a case (json), normalised by the engine's pipeline."""
    if case == "two_images":
        return np.concatenate([_pixels("image_a", vision), _pixels("image_b", vision)])
    return vision.normalise(unpack_u8(REF["cases"][case]["pixel_u8"]))


def _check(row, case, tol):
    last = REF["cases"][case]["logits_last"]
    row = np.asarray(row, np.float64)
    diff = float(np.abs(row[last["top10_ids"]] - np.array(last["top10"])).max())
    strided = float(np.abs(row[::last["stride"]] - np.array(last["strided"])).max())
    assert int(row.argmax()) == last["argmax"] and max(diff, strided) < tol, \
        (f"argmax {int(row.argmax())} (want {last['argmax']}), max logit difference "
         f"{diff:.3g} (top 10), {strided:.3g} (every {last['stride']}th)")


@pytest.mark.parametrize("case", list(IMAGES))
def test_chunked_prefill_of_an_image_prompt_gives_transformers_last_logits(chunked_vlm, case):
    """The engine's prompt, chunking and merge on the processor's exact pixel values."""
    want = REF["cases"][case]
    gen = chunked_vlm.generator
    assert gen.decoder.max_chunk == CHUNK
    ids, prefix = gen.build_prompt(_request(case))
    assert ids == want["input_ids"]
    image_at = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
    cut = [b for b in range(CHUNK, len(ids), CHUNK) if image_at[0] < b <= image_at[-1]]
    assert len(cut) >= 2, "chunk borders must fall inside the image tokens"
    # build_prompt encoded the engine's own resize of the images (a few levels from PIL's);
    # the processor's pixels instead make the comparison exact to float32 rounding.
    gen._image_rows = chunked_vlm.vision.encode(_pixels(case, chunked_vlm.vision))
    row, _ = gen.prefill(ids, prefix)
    _check(row, case, 1e-3)


@pytest.mark.parametrize("case", list(IMAGES))
def test_generate_from_the_raw_images_answers_as_transformers(chunked_vlm, case):
    """Engine.generate end to end: the engine's resize differs from PIL's by a few levels,
    which moves these logits by up to 0.015."""
    res = chunked_vlm.generate(_request(case))
    assert res.prompt_tokens == len(REF["cases"][case]["input_ids"])
    assert res.token_ids == [REF["cases"][case]["logits_last"]["argmax"]]
    gen = chunked_vlm.generator
    ids, prefix = gen.build_prompt(_request(case))
    _check(gen.prefill(ids, prefix)[0], case, 0.05)
