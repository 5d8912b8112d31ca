"""The remote.* parameters map to RemoteConfig; what the remote mode cannot honour is refused.

Pure mappings (no ROS, no server): ros/params.py's settings_from_parameters.
"""

from __future__ import annotations

import pytest

from edgellm_ros.errors import ConfigError
from edgellm_ros.ros.params import DEFAULTS, settings_from_parameters

URL = "http://127.0.0.1:8000/v1"


def remote(**values):
    return settings_from_parameters({"backend": "remote", "remote.url": URL, **values})


def test_the_parameters_become_the_remote_config():
    s = remote(**{"remote.model": "m", "remote.api_key_env": "EDGELLM_KEY", "remote.timeout_s": 5,
                  "remote.max_retries": 0, "remote.lora_models": ["a:served-a", "", "b:served-b"],
                  "remote.image_max_side": 256, "remote.grammar_field": "structured_outputs.grammar",
                  "lora": "b"})
    rc = s.engine.remote
    assert (rc.url, rc.model, rc.api_key_env, rc.timeout_s, rc.max_retries) == (URL, "m", "EDGELLM_KEY", 5.0, 0)
    assert rc.served_adapters == {"a": "served-a", "b": "served-b"}
    assert (rc.image_max_side, rc.grammar_field) == (256, "structured_outputs.grammar")
    assert s.lora == "b" and s.engine.lora_adapters == ()     # the demo adapter is not loaded


@pytest.mark.parametrize("name, value", [
    ("eagle.enabled", True), ("eagle.drafting_top_k", 3), ("eagle.draft", "/some/draft"),
    ("eagle.confidence_threshold", 0.5)])
def test_eagle_parameters_are_refused_in_the_remote_mode(name, value):
    assert DEFAULTS[name] != value
    with pytest.raises(ConfigError, match=rf"{name}: backend remote runs no local EAGLE draft"):
        remote(**{name: value})
    settings_from_parameters({name: value, "allowed_roots": ["default", "/some"]})  # local backends take them


@pytest.mark.parametrize("values, message", [
    ({"remote.url": ""}, "backend remote needs remote.url"),
    ({"remote.url": "gpu-host:8000"}, "remote.url must be an http:// or https:// URL, got 'gpu-host:8000'"),
    ({"remote.timeout_s": 0.0}, r"remote.timeout_s must be in \[0.001, 3600\], got 0.0"),
    ({"remote.max_retries": 11}, r"remote.max_retries must be in \[0, 10\], got 11"),
    ({"remote.lora_models": ["nocolon"]}, "remote.lora_models entry 'nocolon' is not 'name:served_model'"),
    ({"remote.lora_models": ["a:x", "a:y"]}, "adapter name 'a' is used twice"),
    ({"lora": "zz", "remote.lora_models": ["a:x"]}, "unknown LoRA adapter 'zz'; remote.lora_models names: a"),
    ({"lora_adapters": ["mine:/adapters/mine"]}, "lora_adapters: backend remote loads no local adapter"),
    ({"remote.grammar_field": "a b"}, "remote.grammar_field must be a field name"),
])
def test_bad_remote_values_are_refused_naming_them(values, message):
    with pytest.raises(ConfigError, match=message):
        remote(**values)


def test_a_key_given_instead_of_a_variable_name_is_refused_without_echoing_it():
    key = "sk-proj-0123456789abcdef"
    with pytest.raises(ConfigError, match="NAME of an environment variable") as err:
        remote(**{"remote.api_key_env": key})
    assert key[:4] not in str(err.value) and "0123" not in str(err.value)
