"""TrtDecoder on a real GPU, with stand-ins for the TensorRT engine (testing/fake_trt.py).

TensorRT cannot run here, so the engine call is replaced: ``OrtEngine`` runs the real
decoder graph with ONNX Runtime (answers must equal OrtDecoder's: device KV cache,
past/present addresses, misaligned present rows through the scratch, LoRA switching,
EAGLE compaction, prompt cache), ``ToyEngine`` is two CUDA kernels (bucketed decode
steps really captured and replayed as CUDA graphs, keyed by bucket and adapter).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from edgellm_ros.backends.tensorrt.decoder import TrtDecoder
from fake_trt import FAKE_TRT, OrtEngine, ToyEngine, toy_logits_reference

pytestmark = pytest.mark.gpu

PROMPTS = ["What is the capital of France?", "List three uses of a lidar.", "hi"]


def _config(**kw):
    from edgellm_ros.runtime.config import EagleLimits, EngineConfig
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    # the plain-op float graph: the one TensorRT builds (fields absent in older configs are skipped)
    family = {k: v for k, v in (("quantization", "none"), ("fused_ops", False)) if k in names}
    return EngineConfig(backend="onnxruntime", max_seq_len=160, prefill_chunk=16,
                        eagle_limits=EagleLimits(4, 4, 12), **family, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_engine_dir):
    from edgellm_ros.contract import read_manifest
    from edgellm_ros.models.spec import ModelConfig
    from edgellm_ros.synthetic.tiny_models import write_random_adapter, write_random_draft
    root = tmp_path_factory.mktemp("gpu_trt")
    manifest = read_manifest(tiny_engine_dir)
    mcfg = ModelConfig.from_dict(manifest["model"])
    adapter = write_random_adapter(str(root / "ad"), mcfg, (0, 1), ("q_proj", "v_proj", "down_proj"),
                                   r=4, alpha=8, seed=1, scale=0.3)
    draft = write_random_draft(str(root / "draft"), mcfg, "eagle3", seed=2, draft_vocab=512)
    cfg = _config(model=manifest["source"], engine_dir=tiny_engine_dir, lora_adapters=(f"ad:{adapter}",),
                  eagle_draft=draft, prompt_cache_bytes=1 << 20)
    return cfg, mcfg


def _swap_in_trt(eng, folder, logs, graphs=True):
    """Replace an ORT engine's decoder by a TrtDecoder over the same graph (OrtEngine stand-in)."""
    from edgellm_ros.runtime.engine_dir import graph_name
    dec = eng.decoder
    graph = graph_name(bool(dec.lora_slots), eng.drafter is not None and eng.drafter.fc is not None)
    trt_dec = TrtDecoder(OrtEngine(os.path.join(folder, graph + ".onnx")), eng.model_config,
                         np.asarray(dec.embeddings), dec.max_seq_len, dec.max_chunk, dec.lora_slots,
                         trt=FAKE_TRT, log=logs.append, cuda_graphs=graphs, graph_bucket=8)
    for ad in eng.adapters.adapters.values():
        trt_dec.add_adapter(ad.name, ad.weights)
    dec.close()
    eng.decoder = trt_dec
    eng.attach_drafter(eng.drafter)
    return trt_dec


@pytest.fixture(scope="module")
def engines(setup, device):
    from edgellm_ros.runtime.engine import Engine
    cfg, _ = setup
    ref = Engine.load(cfg, log=lambda m: None)
    gpu = Engine.load(cfg, log=lambda m: None)
    logs = []
    _swap_in_trt(gpu, gpu.folder, logs)
    yield ref, gpu, logs
    ref.close()
    gpu.close()


def test_steps_match_ort_decoder_logits_and_kv_rows(engines):
    """Prefill chunks (aligned and misaligned present rows), decode steps, a tree verify with
    compaction, on both decoders: logits and every KV row agree."""
    from edgellm_ros.runtime.speculative import Tree
    ref, gpu, _ = engines
    a, b = ref.decoder, gpu.decoder
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 49152, 40).tolist()
    for dec in (a, b):
        dec.set_adapter("ad")
    p = 0
    for n in (5, 16, 3):                      # P = 0, 5, 21: present rows at 128-byte offsets
        la, lb = a.forward(p, ids[p:p + n]), b.forward(p, ids[p:p + n])
        np.testing.assert_allclose(lb, la, atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(b.hidden[:n], a.hidden[:n], atol=2e-4, rtol=1e-4)
        p += n
    for tok in ids[p:p + 4]:                   # decode steps (graph keys, falling back)
        np.testing.assert_allclose(b.forward(p, [tok]), a.forward(p, [tok]), atol=2e-4, rtol=1e-4)
        p += 1
    tree = Tree(tokens=np.array(ids[30:36]), parents=np.array([-1, -1, 0, 0, 2, 3]),
                depths=np.array([1, 1, 2, 2, 3, 3]), scores=np.zeros(6))
    pos = p + np.concatenate([[0], tree.depths])
    outs = []
    for dec in (a, b):
        outs.append(dec.forward(p, [ids[29]] + tree.tokens.tolist(), positions=pos,
                                mask=tree.verify_mask(p), logits_rows="all").copy())
        dec.kv.move_rows(p + np.array([1, 3, 5]), p + 1)      # accepted rows 1, 3, 5 of the tree
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-4, rtol=1e-4)
    keys, values = b.kv.to_host()
    for i in range(len(keys)):
        np.testing.assert_allclose(keys[i][:p + 4], a.kv.keys[i][:p + 4], atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(values[i][:p + 4], a.kv.values[i][:p + 4], atol=2e-4, rtol=1e-4)
    p += 4
    np.testing.assert_allclose(b.forward(p, [ids[39]]), a.forward(p, [ids[39]]), atol=2e-4, rtol=1e-4)


def test_generation_matches_onnxruntime_with_and_without_adapter(engines):
    from edgellm_ros.runtime.config import GenerationRequest
    ref, gpu, logs = engines
    for adapter in ("", "ad", ""):
        for prompt in PROMPTS:
            req = GenerationRequest(prompt=prompt, max_new_tokens=24, adapter=adapter)
            assert gpu.generate(req).token_ids == ref.generate(req).token_ids, (adapter, prompt)
    # OrtEngine synchronizes the host: decode graphs cannot be captured; said once per key
    assert any("CUDA graph capture of" in m and "without a graph" in m for m in logs)


def test_prompt_cache_restores_device_rows(engines):
    from edgellm_ros.runtime.config import GenerationRequest
    ref, gpu, _ = engines
    req = GenerationRequest(prompt="Name a colour.", system_prompt="You are a terse robot.", max_new_tokens=16)
    first, second = gpu.generate(req), gpu.generate(req)
    assert second.cached_tokens > 0 and second.token_ids == first.token_ids == ref.generate(req).token_ids


def test_eagle_greedy_equals_plain_greedy(engines):
    from edgellm_ros.runtime.config import GenerationRequest
    from edgellm_ros.runtime.speculative import EagleConfig
    ref, gpu, _ = engines
    plain = {p: ref.generate(GenerationRequest(prompt=p, max_new_tokens=32)).token_ids for p in PROMPTS}
    gpu.set_eagle(EagleConfig(True, 4, 3, 12, confidence_threshold=0.0))   # random draft: keep its trees
    try:
        for p in PROMPTS:
            res = gpu.generate(GenerationRequest(prompt=p, max_new_tokens=32))
            assert res.token_ids == plain[p] and res.eagle.drafts > 0
    finally:
        gpu.set_eagle(EagleConfig(False))


# ---------------------------------------------------------------- captured decode graphs

@pytest.fixture()
def toy(setup, device):
    from edgellm_ros.contract import module_shapes
    _, mcfg = setup
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((mcfg.vocab_size, mcfg.hidden_size)).astype(np.float32)
    logs = []
    made = []

    def make(graphs=True, lora=False):
        slots = [(i, m) for i in range(mcfg.num_layers) for m in ("q_proj",)] if lora else []
        dec = TrtDecoder(ToyEngine(mcfg, ("q_proj",) if lora else ()), mcfg, emb, 64, 8, slots,
                         trt=FAKE_TRT, log=logs.append, cuda_graphs=graphs, graph_bucket=4)
        made.append(dec)
        return dec

    yield make, emb, mcfg, logs, module_shapes(mcfg)
    for d in made:
        d.close()


def test_decode_graphs_are_captured_per_bucket_and_replayed(toy):
    make, emb, mcfg, logs, _ = toy
    W = mcfg.num_kv_heads * mcfg.head_dim
    tokens = np.random.default_rng(8).integers(0, mcfg.vocab_size, 21).tolist()
    want = toy_logits_reference(emb, tokens, W)
    for graphs in (True, False):
        dec = make(graphs)
        for p, tok in enumerate(tokens):
            np.testing.assert_allclose(dec.forward(p, [tok])[0], want[p], rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(dec.hidden[0], emb[tok])
        keys, values = dec.kv.to_host()
        rows = np.stack([emb[t][:W] for t in tokens])
        np.testing.assert_allclose(keys[1][:21].reshape(21, W), rows * 2 + np.arange(21)[:, None], rtol=1e-6)
        np.testing.assert_allclose(values[0][:21].reshape(21, W), -rows)
        if graphs:
            # buckets 0, 4, ..., 20: the first step of each runs plainly, the second is captured
            assert dec.graphs.captures == 5 and dec.graphs.replays == 21 - 6
            assert not dec.graphs.failed and not logs
        else:
            assert dec.graphs.captures == 0
        # a second request over the same cache: rows [P, Pb) of each bucket now hold the first
        # request's keys, which the decode mask must hide
        again = tokens[::-1][:14]
        want2 = toy_logits_reference(emb, again, W)
        for p, tok in enumerate(again):
            np.testing.assert_allclose(dec.forward(p, [tok])[0], want2[p], rtol=1e-5, atol=1e-4)
    # a prefill chunk after graph steps: the main context's plain path agrees with the reference
    dec = make(True)
    for p, tok in enumerate(tokens[:9]):
        dec.forward(p, [tok])
    np.testing.assert_allclose(dec.forward(9, tokens[9:15])[0], want[14], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dec.forward(15, [tokens[15]])[0], want[15], rtol=1e-5, atol=1e-4)


def test_adapter_switch_rebinds_and_keys_graphs_by_adapter(toy):
    make, emb, mcfg, _, shapes = toy
    W = mcfg.num_kv_heads * mcfg.head_dim
    dec = make(True, lora=True)
    n_in, n_out = shapes["q_proj"]
    a = np.zeros((n_in, 3), np.float32)
    a[0, 0] = 0.5
    dec.add_adapter("x", {(0, "q_proj"): (a, np.zeros((3, n_out), np.float32))})
    tokens = np.random.default_rng(9).integers(0, mcfg.vocab_size, 12).tolist()
    want = toy_logits_reference(emb, tokens, W)
    for p, tok in enumerate(tokens):
        name = "x" if p % 4 < 2 else ""
        dec.set_adapter(name)
        got = dec.forward(p, [tok])[0]
        np.testing.assert_allclose(got, want[p] + (0.5 if name else 0.0), rtol=1e-5, atol=1e-4)
    assert {k[1] for k in dec.graphs.graphs} == {"", "x"}
    dec.set_adapter("x")
    np.testing.assert_allclose(dec.forward(12, tokens[:3])[0], toy_logits_reference(
        emb, tokens + tokens[:3], W)[14] + 0.5, rtol=1e-5, atol=1e-4)
