"""Each configuration rule is written once: one from_dict, ranges in the dataclasses."""

import pytest

from edgellm_ros.errors import ModelLoadError
from edgellm_ros.loaders.vlm import ImageProcessorConfig
from edgellm_ros.models.siglip import VisionConfig
from edgellm_ros.models.spec import ModelConfig

MODEL = dict(architecture="llama", num_layers=2, hidden_size=64, intermediate_size=128,
             num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=256)
VISION = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=64,
              patch_size=16, scale_factor=2, text_hidden_size=64)


@pytest.mark.parametrize("cls, d", [
    (ModelConfig, MODEL), (VisionConfig, VISION),
    (ImageProcessorConfig, dict(tile_size=64, image_seq_len=4, longest_edge=256, image_token_id=5)),
])
def test_from_dict_ignores_unknown_keys_and_round_trips(cls, d):
    cfg = cls.from_dict({**d, "not_a_field": 1, "model_type": "x"})
    assert cls.from_dict(cfg.to_dict()) == cfg


def test_image_processor_lists_become_float_tuples_or_fail_with_the_value():
    d = dict(tile_size=64, image_seq_len=4, longest_edge=256, image_token_id=5)
    cfg = ImageProcessorConfig.from_dict({**d, "image_mean": [0, 1, 0.5]})
    assert cfg.image_mean == (0.0, 1.0, 0.5)
    with pytest.raises(ModelLoadError, match="image_std must be 3 numbers, got \\['a', 1, 1\\]"):
        ImageProcessorConfig.from_dict({**d, "image_std": ["a", 1, 1]})


def test_models_raise_the_error_family_with_the_value():
    import numpy as np

    from edgellm_ros.errors import ConfigError, UnsupportedModelError
    from edgellm_ros.models.llama import rope_inv_freq
    from edgellm_ros.models.quant import quantize_symmetric

    with pytest.raises(UnsupportedModelError, match="in_features 40"):
        quantize_symmetric(np.zeros((2, 40), np.float32), 4)
    with pytest.raises(ConfigError, match="bits must be 4 or 8, got 3"):
        quantize_symmetric(np.zeros((2, 64), np.float32), 3)
    with pytest.raises(UnsupportedModelError, match="rope_scaling type 'yarn'"):
        rope_inv_freq(ModelConfig(**MODEL, rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def _outside(value, step):
    return value + step if isinstance(value, int) else value + step * 1e-6


def test_every_descriptor_range_is_the_real_limit():
    """Both ends of a declared range are accepted, just outside them refused."""
    from edgellm_ros.ros.params import PARAMETERS, settings_from_parameters

    # the largest EAGLE limits with the smallest tree: the tree settings' limits depend on them
    widest = {"eagle.max_top_k": 64, "eagle.max_step": 32, "eagle.max_tree": 512,
              "eagle.drafting_top_k": 1, "eagle.drafting_step": 1, "eagle.verify_tree_size": 1}
    for p in PARAMETERS:
        if p.range is None:
            continue
        lo, hi = p.range
        settings_from_parameters({**widest, p.name: hi})
        with pytest.raises(ValueError):
            settings_from_parameters({**widest, p.name: _outside(hi, 1)})
        with pytest.raises(ValueError):
            settings_from_parameters({**widest, p.name: _outside(lo, -1)})
        settings_from_parameters({**widest, p.name: lo})


def test_a_limit_that_depends_on_another_parameter_says_so():
    from edgellm_ros.errors import ConfigError
    from edgellm_ros.ros.params import SPECS, settings_from_parameters

    for name, limit in (("eagle.drafting_top_k", "eagle.max_top_k"),
                        ("eagle.drafting_step", "eagle.max_step"),
                        ("eagle.verify_tree_size", "eagle.max_tree")):
        assert limit in SPECS[name].description and SPECS[name].range[1] == SPECS[limit].range[1]
        with pytest.raises(ConfigError, match=rf"{name} must be in \[1, {SPECS[limit].default}\]"):
            settings_from_parameters({name: SPECS[limit].default + 1})


def test_adapter_names_are_checked_by_the_config_once():
    from edgellm_ros.errors import ConfigError
    from edgellm_ros.runtime.config import EngineConfig, check_adapter_name, parse_adapter_spec

    assert check_adapter_name("radiology-v1.2_x") == "radiology-v1.2_x"
    with pytest.raises(ConfigError, match="adapter name 'a b' may use letters"):
        parse_adapter_spec("a b:/x")
    with pytest.raises(ConfigError, match="'radiology' is not 'name:path'"):
        EngineConfig(lora_adapters=("radiology",))
    with pytest.raises(ConfigError, match="entries must be strings, got 3"):
        EngineConfig(lora_adapters=(3,))
    with pytest.raises(ConfigError, match="adapter name 'a' is used twice"):
        EngineConfig(lora_adapters=("a:/x", "a:/y"))
    with pytest.raises(ConfigError, match="unknown LoRA adapter 'b'; lora_adapters names: a"):
        EngineConfig(lora_adapters=("a:/x",), lora="b")
    assert EngineConfig(lora_adapters=("a:/x", " b : y"), lora="b").adapter_names == ("a", "b")
