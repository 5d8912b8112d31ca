"""LoRA adapters are validated at configure: finite alpha and scale, a sane rank, finite
tensors (issue 22, defect 3).

Before, ``"lora_alpha": NaN`` or ``1e308``, NaN tensors and the radiology
weights with bytes overwritten were accepted and answered one empty token.
Each is refused here with the adapter's name, the file, the field and the value.
"""

from __future__ import annotations

import os

import pytest

from edgellm_ros.contract import read_manifest
from edgellm_ros.errors import ModelLoadError
from edgellm_ros.models.spec import ModelConfig
from edgellm_ros.runtime.config import EngineConfig
from edgellm_ros.runtime.engine import Engine
from edgellm_ros.runtime.lora import load_adapter
from edgellm_ros.runtime.resources import share_dir
from edgellm_ros.synthetic import hostile

RADIOLOGY = os.path.join(share_dir(), "adapters", "radiology")


@pytest.fixture(scope="module")
def cfg(default_engine_dir):
    return ModelConfig.from_dict(read_manifest(default_engine_dir)["model"])


@pytest.mark.parametrize("config, message", [
    ({"lora_alpha": float("nan")}, "field lora_alpha = nan must be a finite number"),
    ({"lora_alpha": float("inf")}, "field lora_alpha = inf must be a finite number"),
    ({"lora_alpha": 1e308}, "field lora_alpha = 1e+308 gives scale 5e+307"),
    ({"lora_alpha": "16"}, "field lora_alpha = '16' must be a finite number"),
    ({"r": 0}, "field r = 0 is not an integer in [1, max_lora_rank=8]"),
    ({"r": 4.5}, "field r = 4.5 is not an integer"),
    ({"r": "2"}, "field r = '2' is not an integer"),
    ({"use_rslora": "yes"}, "field use_rslora = 'yes' must be true or false"),
])
def test_bad_config_fields_are_named_with_their_value(config, message, tmp_path, cfg):
    folder = hostile.adapter_with_config(str(tmp_path / "bad"), cfg, **config)
    with pytest.raises(ModelLoadError) as info:
        load_adapter("bad", folder, cfg, max_rank=8)
    text = str(info.value)
    assert message in text and "adapter 'bad'" in text and "adapter_config.json" in text, text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensor_values_are_named_with_where_they_are(value, tmp_path, cfg):
    folder = hostile.adapter_with_values(str(tmp_path / "bad"), cfg, value=value, count=3)
    with pytest.raises(ModelLoadError) as info:
        load_adapter("bad", folder, cfg, max_rank=8)
    text = str(info.value)
    assert "adapter 'bad'" in text and "adapter_model.safetensors" in text and "layers.0.q_proj" in text
    assert f"lora_B holds 3 non-finite value(s), the first {value!r} at (0, 0)" in text, text


def test_a_scale_that_overflows_float32_is_refused(tmp_path, cfg):
    folder = hostile.adapter_with_config(str(tmp_path / "big"), cfg, lora_alpha=1e4)   # scale 5000: allowed
    from safetensors.numpy import load_file, save_file
    st = os.path.join(folder, "adapter_model.safetensors")
    t = load_file(st)
    key = next(k for k in t if k.endswith("lora_B.weight"))
    t[key][0, 0] = 1e36   # finite, but x 5000 is not a float32
    save_file(t, st)
    with pytest.raises(ModelLoadError, match="lora_B x scale 5000 holds 1 non-finite"):
        load_adapter("big", folder, cfg, max_rank=8)


def test_the_radiology_adapter_with_overwritten_bytes_is_refused(tmp_path, cfg):
    ok = load_adapter("radiology", RADIOLOGY, cfg, max_rank=8)
    assert ok.rank == 8
    folder = hostile.overwritten_adapter(str(tmp_path / "radiology"), RADIOLOGY)
    with pytest.raises(ModelLoadError, match=r"adapter 'radiology': .*non-finite value"):
        load_adapter("radiology", folder, cfg, max_rank=8)


def test_configure_fails_with_the_adapters_name(tmp_path, default_engine_dir):
    folder = hostile.adapter_with_config(str(tmp_path / "nan"), ModelConfig.from_dict(
        read_manifest(default_engine_dir)["model"]), lora_alpha=float("nan"))
    config = EngineConfig(engine_dir=default_engine_dir, max_seq_len=256, prefill_chunk=128,
                          quantization="none", fused_ops=False, lora_adapters=(f"broken:{folder}",))
    with pytest.raises(ModelLoadError, match="adapter 'broken'.*lora_alpha = nan"):
        Engine.load(config, log=lambda m: None)
