"""Node parameters map to the runtime's config by one pure function (no ROS)."""

import math
import os

import pytest
import yaml

from edgellm_ros.runtime.resources import share_dir
from edgellm_ros.runtime.config import EagleConfig, EagleLimits, EngineConfig, SamplingConfig
from edgellm_ros.errors import ConfigError, InvalidRequest
from edgellm_ros.ros.params import (CONFIGURE_TIME, DEFAULTS, PARAMETERS,
                                    settings_from_parameters)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_defaults_give_the_runtime_defaults():
    s = settings_from_parameters({})
    # the runtime's defaults, plus the shipped demo adapter resolved in the share folder
    assert s.engine == EngineConfig(lora_adapters=("radiology:adapters/radiology",),
                                    lora_base_dir=share_dir())
    assert s.lora == "" and s.eagle == EagleConfig()
    assert s.defaults.sampling == SamplingConfig(seed=None)
    assert s.defaults.system_prompt is None
    assert (s.defaults.max_new_tokens, s.defaults.queue_size) == (256, 8)


def test_yaml_defaults_equal_the_declared_defaults():
    with open(os.path.join(REPO, "config", "edgellm.yaml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    assert list(doc) == ["/**"], "the file must apply to the node whatever its name"
    assert _flatten(doc["/**"]["ros__parameters"]) == DEFAULTS


def test_configure_time_parameters_are_the_engine_ones():
    assert CONFIGURE_TIME == {"model", "engine_dir", "backend", "max_seq_len", "num_threads",
                              "prompt_cache_bytes", "lora_adapters", "max_lora_rank",
                              "eagle.draft", "eagle.max_top_k", "eagle.max_step",
                              "eagle.max_tree", "image_compressed", "split_images",
                              "quantization", "int4_compute", "fused_ops", "remote.url", "remote.model",
                              "remote.api_key_env", "remote.timeout_s", "remote.max_retries",
                              "remote.lora_models", "remote.image_max_side", "remote.grammar_field",
                              "remote.schema_format", "vocab_reduction"}


def test_every_parameter_has_a_description_and_a_range_holding_its_default():
    for p in PARAMETERS:
        assert len(p.description) > 20, p.name
        if p.range is not None:
            lo, hi = p.range
            assert lo <= p.default <= hi, p.name
            # the top of the range is valid (EAGLE tree settings within the largest tree)
            limits = {"eagle.max_top_k": 64, "eagle.max_step": 32, "eagle.max_tree": 512}
            settings_from_parameters({**limits, p.name: hi})


def test_values_map_to_typed_config():
    s = settings_from_parameters({
        "model": "/models/x.gguf", "allowed_roots": ["/models"], "backend": "onnxruntime",
        "max_seq_len": 64,
        "system_prompt": "Be brief.", "sampling.temperature": 0.7, "sampling.top_k": 40,
        "sampling.top_p": 0.9, "sampling.seed": 7, "max_new_tokens": 12, "queue_size": 0,
        "unknown.parameter": "ignored"})
    assert s.engine.model == "/models/x.gguf" and s.engine.backend == "onnxruntime"
    assert s.engine.max_seq_len == 64 and s.engine.prefill_chunk == 64  # capped by the cache
    assert s.defaults.system_prompt == "Be brief."
    assert s.defaults.sampling == SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, seed=7)
    assert (s.defaults.max_new_tokens, s.defaults.queue_size) == (12, 0)
    assert settings_from_parameters({"sampling.seed": 0}).defaults.sampling.seed == 0
    assert settings_from_parameters({"sampling.seed": -1}).defaults.sampling.seed is None


@pytest.mark.parametrize("name, value, error, words", [
    ("backend", "cuda", ConfigError, "'cuda'"),
    ("max_seq_len", 8, ConfigError, "8"),
    ("num_threads", -1, ConfigError, "-1"),
    ("sampling.temperature", -0.5, InvalidRequest, "-0.5"),
    ("sampling.temperature", math.nan, InvalidRequest, "nan"),
    ("sampling.top_p", 0.0, InvalidRequest, "0.0"),
    ("sampling.top_k", -3, InvalidRequest, "-3"),
    ("sampling.seed", -2, ConfigError, "-2"),
    ("max_new_tokens", 0, InvalidRequest, "0"),
    ("queue_size", 100000, ConfigError, "100000"),
    ("model", 3, ConfigError, "model must be of type str"),
    ("max_seq_len", 2048.0, ConfigError, "max_seq_len must be of type int"),
    ("queue_size", True, ConfigError, "True"),
])
def test_invalid_values_raise_naming_the_value(name, value, error, words):
    with pytest.raises(error) as info:
        settings_from_parameters({name: value})
    assert words in str(info.value)


def test_lora_and_eagle_parameters_are_validated_with_the_reason():
    import pytest
    from edgellm_ros.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown LoRA adapter 'nope'.*radiology"):
        settings_from_parameters({"lora": "nope"})
    with pytest.raises(ConfigError, match="not 'name:path'"):
        settings_from_parameters({"lora_adapters": ["radiology"]})
    with pytest.raises(ConfigError, match="eagle.drafting_top_k must be in \\[1, 8\\]"):
        settings_from_parameters({"eagle.drafting_top_k": 9})
    s = settings_from_parameters({"eagle.max_top_k": 16, "eagle.drafting_top_k": 9,
                                  "eagle.enabled": True, "lora": "radiology"})
    assert s.eagle == EagleConfig(True, 9, 4, 8, 0.2) and s.lora == "radiology"
    assert s.engine.eagle_limits == EagleLimits(16, 8, 64)   # eagle.max_* nest in EngineConfig
    assert settings_from_parameters({"eagle.confidence_threshold": 0.35}).eagle.confidence_threshold == 0.35
    with pytest.raises(ConfigError, match="eagle.confidence_threshold must be in \\[0, 1\\], got 1.5"):
        settings_from_parameters({"eagle.confidence_threshold": 1.5})
    assert settings_from_parameters({"model": "/m.gguf", "allowed_roots": ["/"]}
                                    ).engine.lora_adapters == ()


def test_vocab_reduction_maps_to_the_config_inside_allowed_roots(tmp_path):
    """'shipped' and paths pass through (relative ones resolve against the share folder); a
    path outside allowed_roots is refused naming the parameter; remote refuses any."""
    assert settings_from_parameters({}).engine.vocab_reduction == ""
    assert settings_from_parameters({"vocab_reduction": "shipped"}).engine.vocab_reduction == "shipped"
    rel = settings_from_parameters({"vocab_reduction": "vocab/smollm2-135m-instruct.json"})
    assert rel.engine.vocab_reduction == os.path.join(share_dir(), "vocab", "smollm2-135m-instruct.json")
    mine = str(tmp_path / "ids.json")
    s = settings_from_parameters({"vocab_reduction": mine, "allowed_roots": ["default", str(tmp_path)]})
    assert s.engine.vocab_reduction == mine
    with pytest.raises(ConfigError, match="vocab_reduction .*outside allowed_roots"):
        settings_from_parameters({"vocab_reduction": mine, "allowed_roots": ["default"]})
    with pytest.raises(ConfigError, match="vocab_reduction: backend remote"):
        settings_from_parameters({"backend": "remote", "remote.url": "http://h:1/v1",
                                  "vocab_reduction": "shipped"})
