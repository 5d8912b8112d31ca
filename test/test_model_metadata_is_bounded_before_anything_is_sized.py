"""Every hyper-parameter read from a model or draft file is checked before it sizes or divides
anything (issue 22, defects 5 and 6).

``llama.context_length = 2147483647`` made the export allocate 16 GiB of
rotary tables; ``head_count = 0`` gave ZeroDivisionError; a draft's
``target_layer_ids [2, 15, 99]`` an IndexError. Each now fails with the
file, the field and the value, and the rotary tables follow max_seq_len.
"""

from __future__ import annotations

import os
import time

import pytest

from edgellm_ros.contract import read_manifest
from edgellm_ros.errors import ModelLoadError
from edgellm_ros.export.layers import rope_table_rows
from edgellm_ros.loaders import load_model
from edgellm_ros.models.eagle import load_draft
from edgellm_ros.models.spec import ModelConfig
from edgellm_ros.runtime.config import EngineConfig
from edgellm_ros.runtime.engine import Engine
from edgellm_ros.runtime.engine_dir import ensure_engine, ensure_family, graph_name
from edgellm_ros.synthetic import hostile


@pytest.mark.parametrize("key, value, message", [
    ("context_length", 2147483647, "llama.context_length = 2147483647: max_position_embeddings must be an "
                                   "integer in [1, 16777216]"),
    ("attention.head_count", 0, "llama.attention.head_count = 0: num_heads must be an integer"),
    ("attention.head_count_kv", 0, "llama.attention.head_count_kv = 0: num_kv_heads"),
    ("block_count", 100000, "llama.block_count = 100000: num_layers"),
    ("embedding_length", 2**31, "llama.embedding_length = 2147483648: hidden_size"),
    ("vocab_size", 2**30, "llama.vocab_size = 1073741824: vocab_size"),
    ("rope.freq_base", float("nan"), "llama.rope.freq_base = nan: rope_theta must be a number"),
    ("rope.freq_base", float("inf"), "llama.rope.freq_base = inf"),
    ("attention.layer_norm_rms_epsilon", -1.0, "llama.attention.layer_norm_rms_epsilon = -1.0: rms_norm_eps"),
    ("attention.head_count", "nine", "llama.attention.head_count = 'nine'"),
])
def test_gguf_metadata_values_are_bounded_with_file_key_and_value(key, value, message, tmp_path):
    path = hostile.gguf_metadata_file(str(tmp_path / "m.gguf"), **{key: value})
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert message in str(info.value) and "m.gguf" in str(info.value), str(info.value)


@pytest.mark.parametrize("overrides, message", [
    ({"num_attention_heads": 0}, "config.json: num_attention_heads = 0: num_heads"),
    ({"num_key_value_heads": 3}, "config.json: num_heads 4 is not a multiple of num_kv_heads 3"),
    ({"hidden_size": "64"}, "config.json: hidden_size = '64'"),
    ({"max_position_embeddings": 2147483647}, "max_position_embeddings = 2147483647"),
    ({"rms_norm_eps": None, "rope_theta": -5.0}, "config.json: rope_theta = -5.0"),
    ({"rope_scaling": "yarn"}, "rope_scaling = 'yarn' must be an object or null"),
])
def test_config_json_values_are_bounded_with_file_key_and_value(overrides, message, tmp_path):
    folder = hostile.hf_config_model(str(tmp_path / "m"), **overrides)
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert message in str(info.value), str(info.value)


def test_rotary_tables_follow_max_seq_len_not_the_declared_context(tmp_path, default_engine_dir):
    folder = hostile.huge_context_model(str(tmp_path / "huge"), default_engine_dir, context=1 << 24)
    out = ensure_engine(folder, str(tmp_path / "engine"), log=lambda m: None)
    assert read_manifest(out)["model"]["max_position_embeddings"] == 1 << 24
    t0 = time.monotonic()
    manifest = ensure_family(out, "none", True, log=lambda m: None, rope_rows=1024 + 64)
    entry = manifest["graphs"][graph_name(False, False, "none", True)]
    assert entry["rope_rows"] == rope_table_rows(1024 + 64) == 8192
    weights = os.path.getsize(os.path.join(out, entry["weights_file"]))
    assert weights < 8 * 2**20, f"{weights} bytes of weights: the rotary tables were sized from the context"
    assert time.monotonic() - t0 < 60
    # a longer max_seq_len re-exports the family with enough rows
    manifest = ensure_family(out, "none", True, log=lambda m: None, rope_rows=20000)
    assert manifest["graphs"][graph_name(False, False, "none", True)]["rope_rows"] == 20480


@pytest.fixture(scope="module")
def base_cfg(default_engine_dir):
    return ModelConfig.from_dict(read_manifest(default_engine_dir)["model"])


@pytest.mark.parametrize("layers, config, message", [
    ([2, 15, 99], {}, "target_layer_ids = [2, 15, 99] outside the base model's 30 layers"),
    ([2, 15], {}, "target_layer_ids = [2, 15] must be three layer indices"),
    ([2, "15", 20], {}, "target_layer_ids = [2, '15', 20] must be three layer indices"),
    (None, {"num_attention_heads": 0}, "config.json: num_attention_heads = 0: num_heads"),
    (None, {"num_key_value_heads": 2}, "num_attention_heads = 9 is not a multiple of num_key_value_heads = 2"),
    (None, {"draft_vocab_size": -1}, "config.json: draft_vocab_size = -1"),
    (None, {"rms_norm_eps": float("nan")}, "config.json: rms_norm_eps = nan"),
])
def test_draft_fields_are_checked_with_file_field_and_value(layers, config, message, tmp_path, base_cfg):
    folder = hostile.draft_with_config(str(tmp_path / "draft"), base_cfg, target_layer_ids=layers, **config)
    with pytest.raises(ModelLoadError) as info:
        load_draft(folder, base_cfg)
    assert message in str(info.value) and folder in str(info.value), str(info.value)


def test_a_draft_mapping_outside_the_vocabulary_is_refused(tmp_path, base_cfg):
    from safetensors.numpy import load_file, save_file
    folder = hostile.draft_with_config(str(tmp_path / "draft"), base_cfg)
    st = os.path.join(folder, "model.safetensors")
    t = load_file(st)
    t["d2t"][5] = 10**9
    save_file(t, st)
    with pytest.raises(ModelLoadError, match="d2t maps draft id 5 to base id"):
        load_draft(folder, base_cfg)


def test_configure_with_the_issues_draft_fails_fast_with_the_reason(tmp_path, default_engine_dir, base_cfg):
    folder = hostile.draft_with_config(str(tmp_path / "draft"), base_cfg, target_layer_ids=[2, 15, 99])
    config = EngineConfig(engine_dir=default_engine_dir, max_seq_len=256, prefill_chunk=128,
                          quantization="none", fused_ops=False, eagle_draft=folder)
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        Engine.load(config, log=lambda m: None)
    text = str(info.value)
    assert os.path.join(folder, "config.json") in text and "[2, 15, 99]" in text and "30 layers" in text, text
    assert time.monotonic() - t0 < 20, "the known model's layer count is checked before loading it again"
