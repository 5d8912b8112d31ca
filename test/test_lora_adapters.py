"""LoRA adapters: the LoRA graph equals merged weights, "" equals the base model,
switching is a rebinding that gives the same answers as a fresh engine."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.errors import ModelLoadError, UnknownAdapter
from edgellm_ros.runtime.lora import LoraRegistry, load_adapter, merged_weights
from edgellm_ros.models.llama import LlamaReference
from edgellm_ros.models.spec import ModelWeights
from edgellm_ros.synthetic.tiny_models import write_random_adapter

PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
LAYERS, MODULES = (0, 7, 29), ("q_proj", "v_proj", "down_proj", "gate_proj")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, default_weights):
    root = tmp_path_factory.mktemp("adapters")
    c = default_weights.config
    write_random_adapter(str(root / "subset"), c, LAYERS, MODULES, r=4, alpha=16, seed=1, scale=0.15)
    write_random_adapter(str(root / "other"), c, (3, 12), ("k_proj", "o_proj", "up_proj"), r=2,
                         alpha=4, seed=2, scale=0.3, use_rslora=True)
    return root


def _decoder(folder, weights, lora):
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    slots = [(i, m) for i in range(weights.config.num_layers) for m in
             ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")] if lora else []
    return OrtDecoder(os.path.join(folder, "decoder_lora.onnx" if lora else "decoder.onnx"),
                      weights.config, weights.tensors["embed_tokens.weight"], 64, 32, lora_slots=slots)


def test_lora_graph_equals_reference_with_merged_weights(adapters, default_engine_dir, default_weights):
    ad = load_adapter("subset", str(adapters / "subset"), default_weights.config, max_rank=8)
    assert set(ad.weights) == {(i, m) for i in LAYERS for m in MODULES}
    merged = LlamaReference(ModelWeights(default_weights.config,
                                         merged_weights(default_weights.tensors, ad), "merged"))
    want, _, _ = merged.forward(merged.embed(PROMPT), np.arange(len(PROMPT)), [])
    dec = _decoder(default_engine_dir, default_weights, lora=True)
    dec.add_adapter("subset", ad.weights)
    dec.set_adapter("subset")
    got = dec.forward(0, PROMPT, logits_rows="all")
    diff = float(np.abs(got - want).max())
    assert diff < 2e-3, f"max |logits - merged reference| = {diff}"
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    base_ref, _, _ = LlamaReference(default_weights).forward(
        merged.embed(PROMPT), np.arange(len(PROMPT)), [])
    assert np.abs(base_ref - want).max() > 0.05, "the adapter must change the logits"
    dec.close()


def test_empty_adapter_equals_the_base_model_exactly(adapters, default_engine_dir, default_weights):
    ad = load_adapter("subset", str(adapters / "subset"), default_weights.config, max_rank=8)
    lora_dec = _decoder(default_engine_dir, default_weights, lora=True)
    lora_dec.add_adapter("subset", ad.weights)
    lora_dec.set_adapter("subset")
    lora_dec.forward(0, PROMPT)
    lora_dec.set_adapter("")
    got = lora_dec.forward(0, PROMPT, logits_rows="all").copy()
    base = _decoder(default_engine_dir, default_weights, lora=False)
    want = base.forward(0, PROMPT, logits_rows="all")
    assert np.array_equal(got, want)
    lora_dec.close()
    base.close()


@pytest.fixture(scope="module")
def lora_engine(adapters, default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(max_seq_len=256, prefill_chunk=64, lora_adapters=(
        f"subset:{adapters / 'subset'}", "other:other"), lora_base_dir=str(adapters)),
        log=lambda m: None)
    yield eng
    eng.close()


REQ = dict(prompt="Describe a robot in one sentence.", max_new_tokens=12)


def test_switching_gives_the_answers_of_a_fresh_engine(lora_engine, adapters, default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    seen = {}
    for name in ("subset", "", "other", "subset", "", "other"):
        lora_engine.set_adapter(name)
        ids = lora_engine.generate(GenerationRequest(**REQ)).token_ids
        assert seen.setdefault(name, ids) == ids
    assert len({tuple(v) for v in seen.values()}) == 3, "each adapter answers differently"
    for name in ("subset", "other"):
        fresh = Engine.load(EngineConfig(max_seq_len=256, prefill_chunk=64, lora=name,
                                         lora_adapters=(f"{name}:{adapters / name}",)),
                            log=lambda m: None)
        try:
            assert fresh.generate(GenerationRequest(**REQ)).token_ids == seen[name]
        finally:
            fresh.close()
    plain = Engine.load(EngineConfig(max_seq_len=256, prefill_chunk=64), log=lambda m: None)
    try:
        assert plain.generate(GenerationRequest(**REQ)).token_ids == seen[""]
    finally:
        plain.close()


def test_a_request_may_name_its_own_adapter(lora_engine):
    lora_engine.set_adapter("")
    a = lora_engine.generate(GenerationRequest(**REQ, adapter="subset")).token_ids
    assert lora_engine.adapter == ""
    lora_engine.set_adapter("subset")
    assert lora_engine.generate(GenerationRequest(**REQ)).token_ids == a
    with pytest.raises(UnknownAdapter, match="'nope'.*other, subset"):
        lora_engine.generate(GenerationRequest(**REQ, adapter="nope"))


def test_unknown_adapter_name_lists_the_loaded_ones(lora_engine):
    with pytest.raises(UnknownAdapter, match="'radiologyy'; loaded adapters: other, subset"):
        lora_engine.set_adapter("radiologyy")
    assert LoraRegistry().names == []


def test_prompt_cache_keys_include_the_adapter(lora_engine):
    req = dict(prompt="What is a lidar?", system_prompt="You are a robot.", max_new_tokens=8)
    lora_engine.prompt_cache.clear()
    lora_engine.set_adapter("")
    base = lora_engine.generate(GenerationRequest(**req))
    sub = lora_engine.generate(GenerationRequest(**req, adapter="subset"))
    assert base.cached_tokens == 0 and sub.cached_tokens == 0, "another adapter's KV must not be reused"
    again = lora_engine.generate(GenerationRequest(**req, adapter="subset"))
    assert again.cached_tokens > 0 and again.token_ids == sub.token_ids


def test_bad_adapters_fail_with_the_reason(tmp_path, default_weights):
    c = default_weights.config
    big = write_random_adapter(str(tmp_path / "big"), c, (0,), ("q_proj",), r=16)
    with pytest.raises(ModelLoadError, match="field r = 16 is not an integer in \\[1, max_lora_rank=8\\]"):
        load_adapter("big", big, c, max_rank=8)
    with pytest.raises(ModelLoadError, match="adapter_config.json is missing"):
        load_adapter("none", str(tmp_path / "missing"), c, max_rank=8)
    bad = write_random_adapter(str(tmp_path / "bad"), c, (0,), ("q_proj",), r=2)
    from safetensors.numpy import load_file, save_file
    st = os.path.join(bad, "adapter_model.safetensors")
    t = load_file(st)
    key = next(k for k in t if k.endswith("lora_A.weight"))
    t[key] = np.zeros((2, 100), np.float32)
    save_file(t, st)
    with pytest.raises(ModelLoadError, match="do not match"):
        load_adapter("bad", bad, c, max_rank=8)
    far = write_random_adapter(str(tmp_path / "far"), c, (40,), ("q_proj",), r=2)
    with pytest.raises(ModelLoadError, match="30 layers"):
        load_adapter("far", far, c, max_rank=8)
