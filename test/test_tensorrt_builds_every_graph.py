"""Every exported graph builds into a TensorRT engine, through the code the robot uses.

Runs TensorRT-RTX (``tensorrt-rtx-cu13-bindings``) on the CPU: no GPU is needed to parse
and build; the engines target one compute capability (backends/tensorrt/build.py's default, SM86).
Built: the four decoder variants of a tiny Llama (plain, LoRA, EAGLE-3, EAGLE-3 + LoRA) in
float32, in INT4 (block-wise DequantizeLinear, Q4_1 offsets, INT8 LM head) and in INT8
(block-wise INT8 everywhere), a random
EAGLE-3 draft (draft.onnx + draft_fc.onnx), the tiny VLM's vision.onnx and the real default
model's decoder in float32 and INT4; and a broken graph must fail with its file and node named.
(The fused CPU graphs use ONNX Runtime contrib ops: TensorRT never builds those.)
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgellm_ros.backends.tensorrt.build import (build_engine, decoder_profiles, draft_fc_profiles,
                                                 draft_profiles, import_tensorrt, vision_profiles)
from edgellm_ros.runtime.engine_dir import ensure_engine, ensure_family, graph_name
from edgellm_ros.contract import read_manifest
from edgellm_ros.errors import ModelLoadError
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_random_draft, write_tiny_model

MAX_SEQ_LEN = 256
MAX_CHUNK = 1 + 32       # covers 1 + the largest EAGLE tree and the prefill chunk
MAX_LORA_RANK = 16

trt = import_tensorrt()


def _check(info, path):
    assert info["size"] > 0 and os.path.getsize(path) == info["size"]
    assert info["trt"] in ("tensorrt", "tensorrt_rtx_bindings")
    with open(path, "rb") as f:
        assert len(f.read(64)) == 64


@pytest.fixture(scope="module")
def tokenizer_folder():
    return ensure_engine("", "", log=lambda m: None)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory, tokenizer_folder):
    d = tmp_path_factory.mktemp("tiny")
    model = write_tiny_model(str(d / "m"), TINY_LLAMA, tokenizer_from=tokenizer_folder)
    return ensure_engine(model, str(d / "engine"), log=lambda m: None)


@pytest.mark.parametrize("quantization", ["none", "int4", "int8"])
def test_every_decoder_variant_builds(tiny_engine, tmp_path, quantization):
    manifest = ensure_family(tiny_engine, quantization, False, log=lambda m: None)
    names = [graph_name(lora, eagle3, quantization) for lora in (False, True) for eagle3 in (False, True)]
    assert set(names) <= set(manifest["graphs"])
    if quantization != "none":   # the tiny model is float: its weights were re-quantized
        want = {"rtn int4, activation-weighted scales": 14, "rtn int8": 1} if quantization == "int4" \
            else {"rtn int8": 15}
        assert manifest["graphs"][names[0]]["weight_origins"] == want
        calibrated = "calibration" in manifest["graphs"][names[0]]
        assert calibrated == (quantization == "int4"), "int4 re-quantization records its calibration text"
    for name in names:
        g = manifest["graphs"][name]
        profiles = decoder_profiles(g, manifest["model"], MAX_SEQ_LEN, MAX_CHUNK, MAX_LORA_RANK)
        out = str(tmp_path / f"{name}.plan")
        info = build_engine(os.path.join(tiny_engine, g["file"]), out, profiles, precision="fp16",
                            timing_cache=str(tmp_path / "timing.cache"), log=lambda m: None)
        _check(info, out)


def test_lora_profile_spans_rank_one_to_max(tiny_engine):
    manifest = read_manifest(tiny_engine)
    prof = decoder_profiles(manifest["graphs"]["decoder_lora"], manifest["model"], MAX_SEQ_LEN,
                            MAX_CHUNK, MAX_LORA_RANK)[0]
    H = TINY_LLAMA["hidden_size"]
    assert prof["lora.0.q_proj.a"] == ((H, 1), (H, MAX_LORA_RANK), (H, MAX_LORA_RANK))
    assert prof["past_key.1"][2][1] == MAX_SEQ_LEN and prof["inputs_embeds"][2][1] == MAX_CHUNK
    assert prof["attention_mask"][2] == (1, 1, MAX_CHUNK, MAX_SEQ_LEN + MAX_CHUNK)


def test_eagle3_draft_builds(tiny_engine, tmp_path):
    from edgellm_ros.export.draft import export_draft
    from edgellm_ros.models.eagle import load_draft
    from edgellm_ros.models.spec import ModelConfig

    base = ModelConfig.from_dict(read_manifest(tiny_engine)["model"])
    folder = write_random_draft(str(tmp_path / "ckpt"), base, "eagle3", seed=1, draft_vocab=128)
    cfg, weights = load_draft(folder, base)
    head = np.zeros((base.vocab_size, base.hidden_size), np.float32)
    paths = export_draft(cfg, weights, head, str(tmp_path / "draft"))
    for key, profiles in (("draft", draft_profiles(cfg, MAX_SEQ_LEN + MAX_CHUNK, MAX_CHUNK)),
                          ("fc", draft_fc_profiles(cfg, MAX_CHUNK))):
        out = str(tmp_path / f"{key}.plan")
        _check(build_engine(paths[key], out, profiles, log=lambda m: None), out)


def test_vision_encoder_builds(tmp_path_factory, tokenizer_folder, tmp_path):
    from edgellm_ros.loaders.vlm import read_vision_json
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once

    vlm = write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), tokenizer_folder)
    engine = ensure_engine(vlm, str(tmp_path / "engine"), log=lambda m: None)
    assert "vision" in read_manifest(engine)["graphs"]
    vcfg = read_vision_json(engine)[0]
    out = str(tmp_path / "vision.plan")
    info = build_engine(os.path.join(engine, "vision.onnx"), out, vision_profiles(vcfg, 4), log=lambda m: None)
    _check(info, out)


@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_default_model_decoder_builds(tokenizer_folder, tmp_path, quantization):
    manifest = ensure_family(tokenizer_folder, quantization, False, log=lambda m: None)
    name = graph_name(False, False, quantization)
    g = manifest["graphs"][name]
    out = str(tmp_path / f"{name}.plan")
    info = build_engine(os.path.join(tokenizer_folder, g["file"]), out,
                        decoder_profiles(g, manifest["model"], 2048, 128), log=lambda m: None)
    _check(info, out)
    if quantization == "int4":   # the GGUF's own Q4_1 / Q8_0 blocks, 4-5x smaller than float32
        assert g["weight_origins"] == {"gguf Q4_1": 210, "gguf Q8_0": 1}
        assert info["size"] < 160 * 2**20


def test_parse_failure_names_the_file_and_node(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="/model/broken/NoSuchOp", domain="")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = str(tmp_path / "broken.onnx")
    onnx.save(model, path)
    with pytest.raises(ModelLoadError) as e:
        build_engine(path, str(tmp_path / "b.plan"), [{}], log=lambda m: None)
    assert "broken.onnx" in str(e.value) and "NoSuchOp" in str(e.value)
    assert not os.path.exists(tmp_path / "b.plan")
    with pytest.raises(ModelLoadError, match="missing.onnx"):
        build_engine(str(tmp_path / "missing.onnx"), str(tmp_path / "m.plan"), [{}], log=lambda m: None)


def test_missing_weights_file_is_named(tiny_engine, tmp_path):
    import shutil
    shutil.copy(os.path.join(tiny_engine, "decoder.onnx"), tmp_path / "decoder.onnx")
    with pytest.raises(ModelLoadError, match="weights.data"):
        build_engine(str(tmp_path / "decoder.onnx"), str(tmp_path / "d.plan"), [{}], log=lambda m: None)


def test_import_reports_why():
    from edgellm_ros.errors import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="no_such_trt"):
        import_tensorrt(prefer=("no_such_trt",))


def test_fp32_islands_are_found(tiny_engine):
    """The layers kept float32 in an fp16/bf16 build (full TensorRT) are found by name."""
    from edgellm_ros.backends.tensorrt.build import keep_fp32_layers

    network = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_network(0)
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.ERROR))
    assert parser.parse_from_file(os.path.join(tiny_engine, "decoder.onnx"))
    names = [network.get_layer(i).name for i in keep_fp32_layers(network)]
    layers = TINY_LLAMA["num_hidden_layers"]
    assert sum("input_layernorm/" in n for n in names) >= layers
    assert any("/model/norm/" in n for n in names) and any("/rotary/Cos" in n for n in names)
    assert not any("q_proj" in n or "mlp" in n for n in names)


@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_the_reduced_vocabulary_graph_is_what_tensorrt_builds(tiny_engine, tmp_path, quantization):
    """A vocab_reduction family (ScatterElements into a -inf [L, V] row) parses and builds, and the
    TensorRT backend's configuration resolves to it (the plain-op family of that set)."""
    import json

    from edgellm_ros.runtime.config import EagleLimits, EngineConfig
    from edgellm_ros.runtime.engine import resolve_artifacts
    from edgellm_ros.runtime.tokenizer import Tokenizer
    from edgellm_ros.runtime.vocab import load_vocab_reduction, required_ids

    manifest = read_manifest(tiny_engine)
    vocab = manifest["model"]["vocab_size"]
    tok = Tokenizer.from_hf_folder(tiny_engine)
    ids = sorted(i for i in set(range(0, vocab, 7)) | set(required_ids(tok)) if i < vocab)
    tok.close()
    path = str(tmp_path / "ids.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(ids, f)
    digest = load_vocab_reduction(path, vocab).digest
    config = EngineConfig(model=manifest["source"], engine_dir=tiny_engine, backend="tensorrt",
                          quantization=quantization, eagle_draft="", vocab_reduction=path)
    art = resolve_artifacts(config, "tensorrt", EagleLimits(), log=lambda m: None)
    assert art.graph == graph_name(False, False, quantization, False, digest) and art.vocab.digest == digest
    g = art.manifest["graphs"][art.graph]
    assert g["vocab_reduction"]["kept"] == len(ids) and not g["fused"]
    out = str(tmp_path / "reduced.plan")
    info = build_engine(os.path.join(tiny_engine, g["file"]), out,
                        decoder_profiles(g, art.manifest["model"], MAX_SEQ_LEN, MAX_CHUNK, MAX_LORA_RANK),
                        precision="fp16", log=lambda m: None)
    _check(info, out)
