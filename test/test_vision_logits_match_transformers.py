"""The tiny VLM's text model with image embeddings merged over the image tokens gives
transformers' logits: NumPy reference (whole prompt) and the exported graphs (vision.onnx and
decoder.onnx sharing one weights file, prefill in chunks that cut through image-token runs).

Expected values: test/data/reference_tiny_vlm.json (tools/reference/make_tiny_vlm_reference.py),
computed from the processor's own pixel values, which the json keeps.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.export.decoder import export_decoder
from edgellm_ros.export.graph import WeightFile
from edgellm_ros.export.vision import export_vision
from edgellm_ros.loaders.vlm import save_vision_json
from edgellm_ros.models.llama import LlamaReference
from edgellm_ros.synthetic.tiny_vlm import synthetic_image, unpack_u8
from edgellm_ros.runtime.tokenizer import Tokenizer
from edgellm_ros.runtime.vision import VisionPipeline
from support import load_json

REF = load_json("reference_tiny_vlm.json")
CASES = ("image_a", "image_b", "two_images")


@pytest.fixture(scope="module")
def engine_like(tiny_vlm_loaded, tmp_path_factory):
    """decoder.onnx + vision.onnx in one weights file, vision.json: what an engine folder holds."""
    weights, vision, proc = tiny_vlm_loaded
    d = str(tmp_path_factory.mktemp("vlm_engine"))
    wf = WeightFile(os.path.join(d, "weights.data"))
    try:
        export_decoder(weights, d, wf)
        export_vision(vision, d, wf)
    finally:
        wf.close()
    save_vision_json(d, vision.config, proc)
    return d


def pixels(case: str, pipe: VisionPipeline) -> np.ndarray:
    """The processor's pixel_values of a case (two_images: image_a's tiles then image_b's)."""
    if case == "two_images":
        return np.concatenate([pixels("image_a", pipe), pixels("image_b", pipe)])
    u8 = unpack_u8(REF["cases"][case]["pixel_u8"])
    return pipe.normalise(u8)


def check_last_logits(row: np.ndarray, want: dict) -> None:
    assert int(row.argmax()) == want["argmax"]
    assert np.abs(row[want["top10_ids"]] - np.array(want["top10"])).max() < 1e-4
    assert np.abs(row[::want["stride"]] - np.array(want["strided"])).max() < 1e-4
    m = row.max()
    assert abs(float(m + np.log(np.exp(row - m).sum())) - want["logsumexp"]) < 1e-4


@pytest.mark.parametrize("case", CASES)
def test_numpy_forward_with_merged_images_matches_transformers(tiny_vlm, tiny_vlm_loaded, case):
    weights, _, _ = tiny_vlm_loaded
    pipe = VisionPipeline.from_folder(tiny_vlm)
    assert pipe.backend == "numpy"
    c = REF["cases"][case]
    ids = c["input_ids"]
    ref = LlamaReference(weights)
    embeds = ref.embed(ids).copy()                                       # [T, H]
    pipe.merge(embeds, ids, pipe.encode(pixels(case, pipe)))
    logits, _, _ = ref.forward(embeds, np.arange(len(ids)), [])
    check_last_logits(logits[-1], c["logits_last"])
    assert logits.argmax(-1).tolist() == c["argmax_all"]


def prefill(dec, pipe: VisionPipeline, ids, image_embeds: np.ndarray, chunk: int) -> np.ndarray:
    """Chunked prefill as the generator runs it, image rows merged chunk by chunk."""
    table = dec.embeddings
    row = p = 0
    logits = None
    while p < len(ids):
        n = min(chunk, len(ids) - p)
        buf = dec.embeds_buffer(n)                                       # [n, H]
        np.take(table, ids[p:p + n], axis=0, out=buf)
        row = pipe.merge_chunk(buf, ids[p:p + n], image_embeds, row)
        logits = dec.forward(p, num_tokens=n)
        p += n
    assert row == image_embeds.shape[0] * image_embeds.shape[1]
    return logits[0].copy()


@pytest.fixture(scope="module")
def ort(tiny_vlm_loaded, engine_like):
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    weights = tiny_vlm_loaded[0]
    dec = OrtDecoder(os.path.join(engine_like, "decoder.onnx"), weights.config,
                     weights.tensors["embed_tokens.weight"], max_seq_len=512, max_chunk=48)
    yield dec, VisionPipeline.from_folder(engine_like)
    dec.close()


@pytest.mark.parametrize("case", CASES)
def test_exported_graphs_with_chunked_merge_match_transformers(ort, case):
    dec, pipe = ort
    assert pipe.backend == "onnxruntime"
    c = REF["cases"][case]
    row = prefill(dec, pipe, c["input_ids"], pipe.encode(pixels(case, pipe)), chunk=48)
    check_last_logits(row, c["logits_last"])


def test_same_image_same_logits_different_image_different_logits(tiny_vlm, ort):
    dec, pipe = ort
    tok = Tokenizer.from_hf_folder(tiny_vlm)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": pipe.user_content("What is it?", 1)}])
    runs = []
    for seed in (12, 12, 21):                     # 64 x 64 images: the same token layout
        ids, image_embeds = pipe.prepare(prompt, [synthetic_image(seed, 64, 64)], tok)
        runs.append((ids, prefill(dec, pipe, ids, image_embeds.reshape(1, -1, 64), chunk=48)))
    assert runs[0][0] == runs[1][0] == runs[2][0]
    assert np.array_equal(runs[0][1], runs[1][1])
    assert np.abs(runs[0][1] - runs[2][1]).max() > 0.1


def test_prompt_too_long_for_max_seq_len_is_refused_before_encoding(tiny_vlm):
    from edgellm_ros.errors import ContextFull
    pipe = VisionPipeline.from_folder(tiny_vlm)
    tok = Tokenizer.from_hf_folder(tiny_vlm)
    pipe.encode = None                             # must not be reached
    with pytest.raises(ContextFull, match=r"48 of them for 1 image\(s\) in 3 tiles: more than "
                                          r"max_seq_len 40"):
        pipe.prepare("<image>hi", [synthetic_image(11, 50, 120)], tok, max_tokens=40)


def test_merge_rejects_count_mismatch(tiny_vlm):
    pipe = VisionPipeline.from_folder(tiny_vlm)
    tid = pipe.image_token_id
    embeds = np.zeros((5, 64), np.float32)
    with pytest.raises(InvalidRequest, match=rf"2 image tokens \(id {tid}\) but the images give 3"):
        pipe.merge(embeds, [1, tid, tid, 2, 3], np.ones((3, 64), np.float32))
    with pytest.raises(InvalidRequest, match="more image tokens"):
        pipe.merge_chunk(embeds, [tid] * 5, np.ones((1, 4, 64), np.float32), first_row=0)
    with pytest.raises(InvalidRequest, match="do not fit"):
        pipe.merge(embeds, [1, 2, 3], np.ones((0, 64), np.float32))
    pipe.merge(embeds, [1, tid, 2, tid, 3], np.arange(128, dtype=np.float32).reshape(1, 2, 64))
    assert embeds[1].tolist() == list(range(64)) and embeds[3].tolist() == list(range(64, 128))
    assert not embeds[[0, 2, 4]].any()
