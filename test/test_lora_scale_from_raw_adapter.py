"""A LoRA adapter adds scale * lora_B @ lora_A, with the scale of its adapter_config.

scale = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora`` (PEFT's rule).
The expected values are computed here from the raw safetensors and the raw
adapter_config.json, never from what load_adapter made of them: a loader that
ignored alpha, or used alpha / r for rsLoRA, fails both the graph-input check
and the end-to-end logits of the real default model.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from edgellm_ros.models.llama import LlamaReference
from edgellm_ros.models.spec import ModelConfig, ModelWeights
from edgellm_ros.runtime.lora import load_adapter
from edgellm_ros.synthetic.tiny_models import write_random_adapter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RADIOLOGY = os.path.join(REPO, "adapters", "radiology")
PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
# SmolLM2-135M's shapes (what the shipped adapter was trained on); only shapes matter here.
SMOLLM2 = ModelConfig("llama", num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9,
                      num_kv_heads=3, head_dim=64, vocab_size=49152)
SMALL = ModelConfig("llama", num_layers=3, hidden_size=32, intermediate_size=48, num_heads=4,
                    num_kv_heads=2, head_dim=8, vocab_size=64)


def raw_adapter(folder):
    """(scale from adapter_config.json, {(layer, module): (A [r, in], B [out, r])}) as stored."""
    from safetensors.numpy import load_file
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        conf = json.load(f)
    r, alpha = conf["r"], conf["lora_alpha"]
    scale = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
    pairs = {}
    for key, arr in load_file(os.path.join(folder, "adapter_model.safetensors")).items():
        parts = key.split(".")
        i = parts.index("layers")
        layer, module, ab = int(parts[i + 1]), parts[i + 3], parts[i + 4][-1]
        pairs.setdefault((layer, module), {})[ab] = arr.astype(np.float64)
    return scale, {k: (v["A"], v["B"]) for k, v in pairs.items()}


@pytest.mark.parametrize("r, alpha, rslora, scale", [
    (4, 16, False, 4.0),                # alpha / r
    (4, 16, True, 8.0),                 # alpha / sqrt(r)
    (2, 4, True, 2 * math.sqrt(2)),
    (8, 8, False, 1.0),
])
def test_graph_inputs_are_lora_A_and_scale_times_lora_B(tmp_path, r, alpha, rslora, scale):
    folder = write_random_adapter(str(tmp_path / "ad"), SMALL, (0, 2), ("q_proj", "down_proj", "k_proj"),
                                  r=r, alpha=alpha, seed=r, scale=0.3, use_rslora=rslora)
    want_scale, raw = raw_adapter(folder)
    assert want_scale == pytest.approx(scale)
    ad = load_adapter("ad", folder, SMALL, max_rank=8)
    assert ad.rank == r and set(ad.weights) == set(raw)
    for key, (A, B) in raw.items():
        a, b = ad.weights[key]
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, A.T, rtol=1e-6, err_msg=f"{key}: a must be lora_A^T")
        np.testing.assert_allclose(b, scale * B.T, rtol=1e-6,
                                   err_msg=f"{key}: b must be {scale:.4f} * lora_B^T")
        np.testing.assert_allclose((a @ b).T, scale * B @ A, rtol=1e-5, atol=1e-7)


def test_the_demo_adapter_adds_twice_B_A():
    """adapters/radiology: r=8, lora_alpha=16, so scale 2."""
    scale, raw = raw_adapter(RADIOLOGY)
    assert scale == 2.0
    ad = load_adapter("radiology", RADIOLOGY, SMOLLM2, max_rank=8)
    assert set(ad.weights) == set(raw) and len(raw) == 30 * 7
    for key in ((0, "q_proj"), (14, "v_proj"), (29, "down_proj")):
        A, B = raw[key]
        a, b = ad.weights[key]
        np.testing.assert_allclose((a @ b).T, 2.0 * B @ A, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{key}: the delta must be 2 * B @ A")


def _lora_decoder(folder, weights):
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    slots = [(i, m) for i in range(weights.config.num_layers) for m in
             ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    return OrtDecoder(os.path.join(folder, "decoder_lora.onnx"), weights.config,
                      weights.tensors["embed_tokens.weight"], 64, 32, lora_slots=slots)


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_lora_graph_equals_base_plus_scaled_B_A_from_the_raw_files(tmp_path, default_engine_dir,
                                                                   default_weights, rslora):
    c = default_weights.config
    folder = write_random_adapter(str(tmp_path / "ad"), c, (0, 11, 29), ("q_proj", "v_proj", "up_proj"),
                                  r=4, alpha=8, seed=5, scale=0.12, use_rslora=rslora)
    scale, raw = raw_adapter(folder)
    assert scale == (4.0 if rslora else 2.0)
    tensors = dict(default_weights.tensors)
    for (layer, module), (A, B) in raw.items():
        group = "mlp" if module == "up_proj" else "self_attn"
        key = f"layers.{layer}.{group}.{module}.weight"
        tensors[key] = (tensors[key] + scale * (B @ A)).astype(np.float32)
    ref = LlamaReference(ModelWeights(c, tensors, "raw merge"))
    want, _, _ = ref.forward(ref.embed(PROMPT), np.arange(len(PROMPT)), [])
    dec = _lora_decoder(default_engine_dir, default_weights)
    try:
        dec.add_adapter("ad", load_adapter("ad", folder, c, max_rank=8).weights)
        dec.set_adapter("ad")
        got = dec.forward(0, PROMPT, logits_rows="all")
        diff = float(np.abs(got - want).max())
        assert diff < 2e-3, f"max |logits - (W + {scale} * B @ A) reference| = {diff}"
        base, _, _ = LlamaReference(default_weights).forward(ref.embed(PROMPT), np.arange(len(PROMPT)), [])
        assert np.abs(base - want).max() > 0.05, "the adapter must move the logits"
    finally:
        dec.close()
