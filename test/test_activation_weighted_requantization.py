"""INT4 re-quantization with activation-weighted scales (models.quant, export.calibration).

- each block's searched scale never has a larger channel-weighted error than
  Q4_0's rule, and is smaller where a few input features carry the energy;
- the calibration's mean squares are those of the projections' real inputs
  (checked by hand on the first layer of the tiny model);
- an int4-sym family exported through export_family uses them, and the
  graph equals the reference on those very blocks (test_quantized_and_fused_graphs);
  the quality this buys on the real model is stated in the README and
  checked by test_stated_quality_on_the_shipped_sample.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.models.quant import BLOCK, COARSE_FACTORS, quantize_symmetric


def _weighted_errors(bq, w, cw):
    out, n_in = w.shape
    e = (bq.dequantize() - w).reshape(out, n_in // BLOCK, BLOCK) ** 2
    return (e * cw.reshape(1, -1, BLOCK)).sum(-1)


def test_searched_scales_never_lose_to_the_q4_0_rule():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    w[:, 5] *= 6.0                                      # one wide input feature, as real projections have
    cw = (rng.random(256) ** 6).astype(np.float32)     # a few features carry most of the energy
    cw[5] = 50.0
    plain, searched = quantize_symmetric(w, 4), quantize_symmetric(w, 4, cw)
    assert plain.origin == "rtn int4" and searched.origin == "rtn int4, activation-weighted scales"
    assert searched.q.min() >= -8 and searched.q.max() <= 7 and searched.offset is None
    ep, es = _weighted_errors(plain, w, cw), _weighted_errors(searched, w, cw)
    assert np.all(es <= ep * (1 + 1e-6))
    assert es.sum() < 0.8 * ep.sum(), (es.sum(), ep.sum())
    ratio = searched.scale / plain.scale                # every scale is a tried factor: 0.01 steps
    assert np.allclose(ratio * 100, np.rint(ratio * 100), atol=1e-3) and 0.45 < ratio.min() <= ratio.max() < 1.35
    assert (ratio != 1).mean() > 0.5


def test_uniform_weights_minimise_the_squared_error_and_int8_ignores_them():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    ones = np.ones(64, np.float32)
    bq = quantize_symmetric(w, 4, ones)
    # with equal weights the search lowers the plain squared error, block by block, at least to
    # the best of the coarse grid
    base = quantize_symmetric(w, 4).scale
    for r in range(8):
        for b in range(2):
            x = w[r, 32 * b:32 * (b + 1)]
            coarse = min(float(((np.clip(np.rint(x / s), -8, 7) * s - x) ** 2).sum())
                         for s in base[r, b] * np.append(COARSE_FACTORS, 1.0).astype(np.float32))
            got = float(((bq.dequantize()[r, 32 * b:32 * (b + 1)] - x) ** 2).sum())
            assert got <= coarse * (1 + 1e-5)
    assert np.array_equal(quantize_symmetric(w, 8, ones).q, quantize_symmetric(w, 8).q)
    with pytest.raises(ValueError, match="channel_weight"):
        quantize_symmetric(w, 4, np.ones(32, np.float32))


def test_calibration_measures_the_projections_inputs():
    from edgellm_ros.export.calibration import input_mean_squares
    from edgellm_ros.models.llama import rms_norm
    from edgellm_ros.models.spec import ModelConfig, ModelWeights

    rng = np.random.default_rng(5)
    cfg = ModelConfig(architecture="llama", tie_word_embeddings=True, hidden_size=64, intermediate_size=96,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=50,
                      rms_norm_eps=1e-5, rope_theta=10000.0)
    t = {"embed_tokens.weight": rng.standard_normal((50, 64)).astype(np.float32),
         "norm.weight": np.ones(64, np.float32)}
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
              "self_attn.o_proj": (64, 64), "mlp.gate_proj": (96, 64), "mlp.up_proj": (96, 64),
              "mlp.down_proj": (64, 96)}
    for i in range(2):
        t[f"layers.{i}.input_layernorm.weight"] = (1 + rng.random(64)).astype(np.float32)
        t[f"layers.{i}.post_attention_layernorm.weight"] = (1 + rng.random(64)).astype(np.float32)
        for m, shp in shapes.items():
            t[f"layers.{i}.{m}.weight"] = (0.1 * rng.standard_normal(shp)).astype(np.float32)
    weights = ModelWeights(config=cfg, tensors=t, source="test")
    ids = np.array([4, 9, 9, 31, 2, 17])
    ms = input_mean_squares(weights, ids)
    assert set(ms) == {f"layers.{i}.{m}.weight" for i in range(2) for m in shapes}
    h = rms_norm(t["embed_tokens.weight"][ids], t["layers.0.input_layernorm.weight"], cfg.rms_norm_eps)
    want = (h.astype(np.float64) ** 2).mean(0)
    for m in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_allclose(ms[f"layers.0.self_attn.{m}.weight"], want, rtol=1e-5)
    assert ms["layers.1.mlp.down_proj.weight"].shape == (96,)
    assert all(np.all(v > 0) for v in ms.values())
