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
