"""A SmolVLM / Idefics3 folder loads into our text model, vision tower and processor settings;
broken folders get a ModelLoadError (or UnsupportedModelError) that names the problem."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from edgellm_ros.errors import ModelLoadError, UnsupportedModelError
from edgellm_ros.loaders import load_model
from edgellm_ros.loaders.vlm import (is_vlm_folder, load_vision, load_vlm, read_vision_json,
                                     save_vision_json)
from edgellm_ros.synthetic.tiny_vlm import IMAGE_TOKEN_ID, TINY_VLM, VOCAB_SIZE
from edgellm_ros.runtime.vision import VisionPipeline


@pytest.fixture
def copy(tiny_vlm, tmp_path):
    """A private copy of the tiny VLM folder to break."""
    d = str(tmp_path / "vlm")
    shutil.copytree(tiny_vlm, d)
    return d


def edit_json(path, **changes):
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f)


def test_tiny_vlm_loads_in_our_names(tiny_vlm):
    text, vision, proc = load_vlm(tiny_vlm)
    c = text.config
    assert (c.num_layers, c.hidden_size, c.vocab_size, c.num_kv_heads, c.head_dim) == \
        (2, 64, VOCAB_SIZE, 2, 16)
    assert not c.tie_word_embeddings and text.lm_head().shape == (VOCAB_SIZE, 64)
    assert "layers.1.mlp.down_proj.weight" in text.tensors and "embed_tokens.weight" in text.tensors
    assert not any(k.startswith(("model.", "vision_model", "connector")) for k in text.tensors)
    assert text.tokenizer_source == ("hf", tiny_vlm)
    v = vision.config
    assert (v.hidden_size, v.num_layers, v.image_size, v.patch_size, v.scale_factor) == \
        (32, 2, 64, 8, 2)
    assert v.image_seq_len == proc.image_seq_len == 16 and v.text_hidden_size == 64
    assert all(k.startswith(("vision_model.", "connector.")) for k in vision.tensors)
    assert (proc.tile_size, proc.longest_edge, proc.image_token_id, proc.resample) == \
        (64, 128, IMAGE_TOKEN_ID, 1)
    assert proc.image_mean[0] != proc.image_mean[2]
    assert is_vlm_folder(tiny_vlm) and not is_vlm_folder(os.path.dirname(tiny_vlm))
    vision_only, proc_only = load_vision(tiny_vlm)
    assert proc_only == proc and set(vision_only.tensors) == set(vision.tensors)


def test_vision_json_round_trips(tiny_vlm, tmp_path):
    _, vision, proc = load_vlm(tiny_vlm)
    assert read_vision_json(str(tmp_path)) is None
    save_vision_json(str(tmp_path), vision.config, proc)
    assert read_vision_json(str(tmp_path)) == (vision.config, proc)
    with pytest.raises(ModelLoadError, match="no vision.onnx"):
        VisionPipeline.from_folder(str(tmp_path))


def test_load_model_of_a_vlm_folder_gives_its_text_model(tiny_vlm):
    text = load_model(tiny_vlm)
    assert text.tensors["embed_tokens.weight"].shape[0] == text.config.vocab_size
    assert text.config.num_layers == load_vlm(tiny_vlm)[0].config.num_layers


def test_tied_head_when_the_top_level_flag_says_so(copy):
    edit_json(os.path.join(copy, "config.json"), tie_word_embeddings=True)
    text, _, _ = load_vlm(copy)
    assert text.config.tie_word_embeddings and "lm_head.weight" not in text.tensors


@pytest.mark.parametrize("change,error,match", [
    ({"model_type": "llava"}, UnsupportedModelError, "model_type 'llava'"),
    ({"vision_config": None}, ModelLoadError, "lacks vision_config"),
    ({"image_token_id": 49189}, ModelLoadError,
     "image_token_id 49189 but the tokenizer maps <image> to 49190"),
    ({"scale_factor": 3}, ModelLoadError, "scale_factor 3"),
    ({"vision_config": {**TINY_VLM["vision_config"], "hidden_act": "relu"}}, ModelLoadError,
     "relu"),
    ({"vision_config": {**TINY_VLM["vision_config"], "patch_size": 16}}, ModelLoadError,
     "image_seq_len 16 does not match the encoder"),
])
def test_bad_config_is_named(copy, change, error, match):
    edit_json(os.path.join(copy, "config.json"), **change)
    with pytest.raises(error, match=match):
        load_vlm(copy)


def test_missing_or_mismatched_processor_files_are_named(copy):
    edit_json(os.path.join(copy, "processor_config.json"), image_seq_len=64)
    with pytest.raises(ModelLoadError, match="image_seq_len 64"):
        load_vlm(copy)
    edit_json(os.path.join(copy, "processor_config.json"), image_seq_len=16)
    edit_json(os.path.join(copy, "preprocessor_config.json"), max_image_size={"longest_edge": 32})
    with pytest.raises(UnsupportedModelError, match="tiles of 32 px"):
        load_vlm(copy)
    os.remove(os.path.join(copy, "preprocessor_config.json"))
    with pytest.raises(ModelLoadError, match="no preprocessor_config.json"):
        load_vlm(copy)


def test_transformers5_nested_processor_config_is_read(copy):
    with open(os.path.join(copy, "preprocessor_config.json"), encoding="utf-8") as f:
        pre = json.load(f)
    os.remove(os.path.join(copy, "preprocessor_config.json"))
    edit_json(os.path.join(copy, "processor_config.json"), image_processor=pre)
    assert load_vlm(copy)[2].longest_edge == 128


def test_missing_tensor_and_missing_image_token_are_named(copy):
    from safetensors.numpy import load_file, save_file
    path = os.path.join(copy, "model.safetensors")
    t = load_file(path)
    del t["model.vision_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(t, path)
    with pytest.raises(ModelLoadError,
                       match="tensor vision_model.encoder.layers.1.mlp.fc2.bias is missing"):
        load_vlm(copy)
    t["model.vision_model.encoder.layers.1.mlp.fc2.bias"] = np.zeros(16, np.float32)
    save_file(t, path)
    with pytest.raises(ModelLoadError, match=r"fc2.bias has shape \(16,\), expected \(32,\)"):
        load_vlm(copy)


def test_tokenizer_without_image_tokens_is_named(copy, default_engine_dir):
    shutil.copy(os.path.join(default_engine_dir, "tokenizer.json"),
                os.path.join(copy, "tokenizer.json"))
    with pytest.raises(ModelLoadError, match="lacks the image token '<image>'"):
        load_vlm(copy)


def test_not_a_folder_and_no_weights(tmp_path, copy):
    with pytest.raises(ModelLoadError, match="is not a folder"):
        load_vlm(str(tmp_path / "nope"))
    os.remove(os.path.join(copy, "model.safetensors"))
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_vlm(copy)
