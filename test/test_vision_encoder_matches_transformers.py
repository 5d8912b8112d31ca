"""The SigLIP encoder + Idefics3 connector computes what transformers computes, in NumPy and in
the exported ONNX graph; the same image gives the same embeddings, different images different ones.

Expected values: test/data/reference_tiny_vlm.json, made by
tools/reference/make_tiny_vlm_reference.py with transformers on the seeded
checkpoint this module writes (its sha256 are checked first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import onnx
import pytest

from edgellm_ros.backends.onnxruntime import make_session
from edgellm_ros.export.graph import WeightFile
from edgellm_ros.export.vision import export_vision, vision_io_names
from edgellm_ros.loaders.vlm import save_vision_json, vision_config_from_hf
from edgellm_ros.models.siglip import SiglipReference, VisionWeights, patchify, pixel_shuffle
from edgellm_ros.synthetic.tiny_vlm import (TEST_IMAGES, TINY_VLM, synthetic_image, unpack_u8,
                                            vision_tensors)
from edgellm_ros.runtime.vision import VisionPipeline
from support import load_json

REF = load_json("reference_tiny_vlm.json")
#: ops the graph may use: plain ONNX, opset 17 (what TensorRT 10.3 parses)
PLAIN_OPS = {"Add", "Conv", "Identity", "LayerNormalization", "MatMul", "Mul", "Reshape", "Softmax",
             "Tanh", "Transpose"}


@pytest.fixture(scope="module")
def engine_like(tiny_vlm, tiny_vlm_loaded, tmp_path_factory):
    """A folder with vision.onnx (weights in an external file, as in an engine) and vision.json."""
    _, vision, proc = tiny_vlm_loaded
    d = str(tmp_path_factory.mktemp("vision_engine"))
    wf = WeightFile(os.path.join(d, "weights.data"))
    try:
        export_vision(vision, d, wf)
    finally:
        wf.close()
    save_vision_json(d, vision.config, proc)
    return d


def transformers_pixels(case: str, pipeline: VisionPipeline) -> np.ndarray:
    """The processor's pixel_values of a reference case, rebuilt from its uint8 values."""
    u8 = unpack_u8(REF["cases"][case]["pixel_u8"])                      # [N, 3, S, S]
    return pipeline.normalise(u8)


def test_fixture_writes_the_checkpoint_the_reference_used(tiny_vlm):
    for name, digest in REF["sha256"].items():
        with open(os.path.join(tiny_vlm, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name


def test_encoder_output_matches_transformers(tiny_vlm, tiny_vlm_loaded):
    ref = SiglipReference(tiny_vlm_loaded[1])
    px = transformers_pixels("image_a", VisionPipeline.from_folder(tiny_vlm))
    got = ref.encode(px[:1])[0]                                          # [L, E]
    assert np.abs(got - np.array(REF["cases"]["image_a"]["encoder_tile0"])).max() < 1e-4


@pytest.mark.parametrize("case", ["image_a", "image_b"])
def test_connector_features_match_transformers(tiny_vlm, tiny_vlm_loaded, case):
    ref = SiglipReference(tiny_vlm_loaded[1])
    c = REF["cases"][case]
    px = transformers_pixels(case, VisionPipeline.from_folder(tiny_vlm))
    got = ref.forward(px)[c["image_features_tiles"]]                     # [tiles, Q, H]
    want = np.array(c["image_features"])
    assert got.shape == want.shape == (len(c["image_features_tiles"]), 16, 64)
    assert np.abs(got - want).max() < 1e-4


def test_patchify_and_pixel_shuffle_keep_transformers_order():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    p = patchify(x, 2)                                                   # [2, 4, 12]
    assert p[0, 1].tolist() == x[0, :, 0:2, 2:4].reshape(-1).tolist()   # patch row 0, col 1
    feats = np.arange(1 * 16 * 2, dtype=np.float32).reshape(1, 16, 2)    # 4 x 4 patches, E = 2
    s = pixel_shuffle(feats, 2)                                          # [1, 4, 8]
    grid = feats.reshape(4, 4, 2)
    # token (0, 1) gathers the 2 x 2 block of patch rows 0-1, cols 2-3, row by row
    block = [grid[0, 2], grid[0, 3], grid[1, 2], grid[1, 3]]
    assert s[0, 1].tolist() == np.concatenate(block).tolist()


def test_onnx_graph_matches_numpy_reference(tiny_vlm_loaded, engine_like):
    pipe = VisionPipeline.from_folder(engine_like)
    assert pipe.backend == "onnxruntime"
    px = np.random.default_rng(0).uniform(-2.0, 2.0, (5, 3, 64, 64)).astype(np.float32)
    want = SiglipReference(tiny_vlm_loaded[1]).forward(px)
    assert np.abs(pipe.encode(px) - want).max() < 1e-4
    pipe.max_tiles_per_run = 2                                           # 3 runs of 2, 2, 1 tiles
    assert np.abs(pipe.encode(px) - want).max() < 1e-4
    assert np.abs(pipe.encode(px[3:4]) - want[3:4]).max() < 1e-4


def test_tiles_with_a_pixel_remainder_drop_it_in_numpy_and_onnx(tmp_path):
    """68 px tiles of 8 px patches: 8 a side, 4 px dropped (as SmolVLM-Instruct's 384 / 14)."""
    cfg = {**TINY_VLM, "vision_config": {**TINY_VLM["vision_config"], "image_size": 68}}
    tensors = {k[len("model."):]: v for k, v in vision_tensors(cfg, seed=3).items()}
    vcfg = vision_config_from_hf(cfg, "tiny")
    vision = VisionWeights(vcfg, tensors, source="random")
    assert vcfg.patches_per_side == 8 and vcfg.image_seq_len == 16
    px = np.random.default_rng(1).uniform(-1.0, 1.0, (2, 3, 68, 68)).astype(np.float32)
    ref = SiglipReference(vision).forward(px)
    cropped = SiglipReference(VisionWeights(dataclasses.replace(vcfg, image_size=64), tensors))
    assert np.array_equal(ref, cropped.forward(px[:, :, :64, :64]))
    session = make_session(export_vision(vision, str(tmp_path)))
    assert np.abs(session.run(None, {"pixel_values": px})[0] - ref).max() < 1e-4


def test_onnx_graph_is_plain_opset17_with_external_weights(engine_like):
    model = onnx.load(os.path.join(engine_like, "vision.onnx"), load_external_data=False)
    onnx.checker.check_model(os.path.join(engine_like, "vision.onnx"))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert {n.op_type for n in model.graph.node} <= PLAIN_OPS
    assert [i.name for i in model.graph.input] == vision_io_names()["inputs"]
    assert [o.name for o in model.graph.output] == vision_io_names()["outputs"]
    names = {n.name for n in model.graph.node}
    assert "/vision/layers.0/attn/q_proj/MatMul" in names
    assert "/vision/embeddings/patch_embedding/Conv" in names
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_same_image_gives_identical_embeddings_and_different_images_differ(engine_like):
    pipe = VisionPipeline.from_folder(engine_like)
    a, b = (synthetic_image(*spec) for spec in TEST_IMAGES)
    ea1 = pipe.encode(pipe.preprocess([a])[0])
    ea2 = pipe.encode(pipe.preprocess([a.copy()])[0])
    assert np.array_equal(ea1, ea2)
    pa, _ = pipe.preprocess([a])
    pb, _ = pipe.preprocess([b])
    ea, eb = pipe.encode(pa[-1:]), pipe.encode(pb[-1:])                  # the global tiles
    assert np.linalg.norm(ea - eb) > 0.5 * np.linalg.norm(ea)           # 0.96 measured


def test_our_preprocessing_moves_features_little(engine_like):
    """OpenCV's resampling is not PIL's: the features stay close to transformers' all the same."""
    pipe = VisionPipeline.from_folder(engine_like)
    ours = pipe.encode(pipe.preprocess([synthetic_image(*TEST_IMAGES[0])])[0])   # [3, Q, H]
    theirs = np.array(REF["cases"]["image_a"]["image_features"])
    cos = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cos.min() > 0.995
