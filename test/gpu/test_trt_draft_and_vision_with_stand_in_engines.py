"""The EAGLE draft and the vision encoder on the TensorRT backend, on a real GPU, with the
engine call stood in for (testing/fake_trt.py: ONNX Runtime runs the real graph from the
device buffers; TensorRT cannot run here).

TrtDraft's steps (catch-up chunks whose present rows are and are not 256-byte aligned, a
tree step with its mask) give OrtDraft's logits, hidden_out and KV rows; the fc and the
vision encoder called in chunks give ONNX Runtime's rows; Engine.load with backend
tensorrt puts the decoder, the draft and the vision encoder on TensorRT, every shape sent
fits the profiles their plans would be built with, and EAGLE gives the CPU engine's tokens.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from edgellm_ros.backends.tensorrt.cuda_rt import DeviceBuffer
from edgellm_ros.backends.tensorrt.draft import TrtDraft
from edgellm_ros.backends.tensorrt.function import TrtFunction
from fake_trt import FAKE_TRT, OrtEngine, stand_in_tensorrt

pytestmark = pytest.mark.gpu

PROMPTS = ["What is the capital of France?", "List three uses of a lidar.", "hi"]
TOL = {"atol": 2e-4, "rtol": 1e-4}


def _config(**kw):
    from edgellm_ros.runtime.config import EagleLimits, EngineConfig
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    family = {k: v for k, v in (("quantization", "none"), ("fused_ops", False)) if k in names}
    return EngineConfig(max_seq_len=160, prefill_chunk=16, eagle_limits=EagleLimits(4, 4, 12),
                        **family, **kw)


@pytest.fixture(scope="module")
def drafts(tmp_path_factory, tiny_engine_dir):
    """(model config, {layout: (draft folder, draft config, weights, export folder)})."""
    from edgellm_ros.runtime.engine import export_draft_graphs, manifest_head
    from edgellm_ros.contract import read_manifest
    from edgellm_ros.models.eagle import load_draft
    from edgellm_ros.models.spec import ModelConfig
    from edgellm_ros.synthetic.tiny_models import write_random_draft
    root = tmp_path_factory.mktemp("gpu_drafts")
    mcfg = ModelConfig.from_dict(read_manifest(tiny_engine_dir)["model"])
    out = {}
    for layout in ("eagle3", "eagle1"):
        folder = write_random_draft(str(root / layout), mcfg, layout, seed=2, draft_vocab=512)
        cfg, weights = load_draft(folder, mcfg)
        sub = export_draft_graphs(cfg, weights, folder, tiny_engine_dir, manifest_head(tiny_engine_dir, mcfg))
        out[layout] = (folder, cfg, weights, sub)
    return mcfg, out


@pytest.mark.parametrize("layout", ["eagle3", "eagle1"])
def test_draft_steps_match_ort_draft(drafts, tiny_engine_dir, device, layout):
    from edgellm_ros.backends.onnxruntime import OrtDraft
    from edgellm_ros.contract import MASK_VALUE
    mcfg, made = drafts
    _, cfg, _, sub = made[layout]
    emb = np.load(os.path.join(tiny_engine_dir, "embeddings.npy"))
    vocab = cfg.draft_vocab_size if layout == "eagle3" else cfg.vocab_size
    S, T = 64, 8
    a = OrtDraft(os.path.join(sub, "draft.onnx"), cfg, vocab, emb, S, T)
    shared = DeviceBuffer.from_host(emb)
    b = TrtDraft(OrtEngine(os.path.join(sub, "draft.onnx")), cfg, emb, S, T, trt=FAKE_TRT, table=shared)
    assert not b.owns_table and b.embedding_table is shared and b.vocab == vocab
    assert b.kv.row_nbytes == 128           # rows at P = 3, 5, ... are not 256-byte aligned
    rng = np.random.default_rng(3)
    ids = rng.integers(3, mcfg.vocab_size, 40).tolist()
    p = 0
    for n in (3, 8, 1, 5):                   # catch-up chunks at P = 0, 3, 11, 12
        h = rng.standard_normal((n, cfg.hidden_size)).astype(np.float32)
        for d in (a, b):
            d.hidden_in_buffer(n)[...] = h
        la, lb = a.forward(p, ids[p:p + n]), b.forward(p, ids[p:p + n])
        assert lb.shape == (1, vocab)
        np.testing.assert_allclose(lb, la, **TOL)
        np.testing.assert_allclose(b.hidden[:n], a.hidden[:n], **TOL)
        p += n
    snap = b.kv.snapshot(p)
    # a tree step: 4 nodes after P rows, node i sees the prefix and its ancestors
    mask = np.full((4, p + 4), MASK_VALUE, np.float32)
    mask[:, :p] = 0.0
    for i, anc in enumerate(([0], [1], [0, 2], [1, 3])):
        mask[i, [p + j for j in anc]] = 0.0
    h = rng.standard_normal((4, cfg.hidden_size)).astype(np.float32)
    outs = []
    for d in (a, b):
        d.hidden_in_buffer(4)[...] = h
        outs.append(d.forward(p, ids[20:24], positions=np.array([p, p, p + 1, p + 1]), mask=mask,
                              logits_rows="all").copy())
    np.testing.assert_allclose(outs[1], outs[0], **TOL)
    np.testing.assert_allclose(b.hidden[:4], a.hidden[:4], **TOL)
    keys, values = b.kv.to_host()
    np.testing.assert_allclose(keys[0][:p + 4], a.kv.keys[0][:p + 4], **TOL)
    np.testing.assert_allclose(values[0][:p + 4], a.kv.values[0][:p + 4], **TOL)
    # the prompt cache's snapshot brings rows [0, P) back; the tree rows stay as they were
    b.kv.load_host([np.zeros_like(keys[0])], [np.zeros_like(values[0])])
    assert b.kv.restore(snap) == p
    k2, _ = b.kv.to_host()
    np.testing.assert_allclose(k2[0][:p], a.kv.keys[0][:p], **TOL)
    assert not k2[0][p:].any()
    b.close()
    shared.free()


def test_a_table_of_another_dtype_is_not_shared(drafts, tiny_engine_dir, device):
    _, made = drafts
    _, cfg, _, sub = made["eagle3"]
    emb = np.load(os.path.join(tiny_engine_dir, "embeddings.npy"))
    half = DeviceBuffer.from_host(emb.astype(np.float16))
    b = TrtDraft(OrtEngine(os.path.join(sub, "draft.onnx")), cfg, emb, 32, 4, trt=FAKE_TRT, table=half)
    assert b.owns_table and b.embedding_table is not half
    b.close()
    assert half.ptr      # not freed by the draft that did not use it


def test_fc_and_vision_functions_run_in_chunks_like_onnxruntime(drafts, tmp_path_factory, tokenizer_dir, device):
    from edgellm_ros.backends.onnxruntime import make_session
    from edgellm_ros.runtime.engine_dir import ensure_engine
    from edgellm_ros.errors import InvalidRequest
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once
    _, made = drafts
    _, cfg, _, sub = made["eagle3"]
    rng = np.random.default_rng(4)
    path = os.path.join(sub, "draft_fc.onnx")
    fc = TrtFunction(OrtEngine(path), "features", "hidden", 4, axis=1, trt=FAKE_TRT)
    feats = rng.standard_normal((11, cfg.feature_size)).astype(np.float32)    # chunks of 4, 4, 3
    want = make_session(path).run(None, {"features": feats[None]})[0][0]
    np.testing.assert_allclose(fc(feats), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(InvalidRequest, match="features must be"):
        fc(feats[:, :5])
    fc.close()
    vlm = write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), tokenizer_dir)
    folder = ensure_engine(vlm, str(tmp_path_factory.mktemp("vlm_engine")), log=lambda m: None)
    path = os.path.join(folder, "vision.onnx")
    enc = TrtFunction(OrtEngine(path), "pixel_values", "image_embeds", 3, trt=FAKE_TRT)
    px = rng.standard_normal((7, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(enc(px), make_session(path).run(None, {"pixel_values": px})[0], atol=1e-5, rtol=1e-5)
    enc.close()


@pytest.fixture(scope="module")
def trt_engines(tmp_path_factory, drafts, tiny_engine_dir, device):
    """The CPU engine and an Engine.load(backend="tensorrt") on stand-ins, same config."""
    from edgellm_ros.runtime.engine import Engine
    from edgellm_ros.contract import read_manifest
    from edgellm_ros.synthetic.tiny_models import write_random_adapter
    mcfg, made = drafts
    adapter = write_random_adapter(str(tmp_path_factory.mktemp("ad") / "ad"), mcfg, (0, 1), ("q_proj", "v_proj"),
                                   r=4, alpha=8, seed=1, scale=0.3)
    cfg = _config(backend="onnxruntime", model=read_manifest(tiny_engine_dir)["source"], engine_dir=tiny_engine_dir,
                  lora_adapters=(f"ad:{adapter}",), eagle_draft=made["eagle3"][0], prompt_cache_bytes=1 << 20)
    ref = Engine.load(cfg, log=lambda m: None)
    logs = []
    with pytest.MonkeyPatch.context() as mp:
        asked = stand_in_tensorrt(mp)
        gpu = Engine.load(dataclasses.replace(cfg, backend="tensorrt"), log=logs.append)
    yield ref, gpu, asked, logs
    ref.close()
    gpu.close()


def test_engine_load_puts_decoder_and_draft_on_tensorrt(trt_engines, drafts):
    from edgellm_ros.backends.tensorrt.decoder import TrtDecoder
    ref, gpu, asked, logs = trt_engines
    sub = os.path.relpath(drafts[1]["eagle3"][3], gpu.folder)
    assert gpu.backend == "tensorrt" and isinstance(gpu.decoder, TrtDecoder)
    assert isinstance(gpu.drafter.step, TrtDraft) and isinstance(gpu.drafter.fc, TrtFunction)
    assert {"decoder_eagle3_lora", f"{sub}/draft", f"{sub}/draft_fc"} <= set(asked)
    # the draft binds the decoder's device embedding table
    assert gpu.drafter.step.embedding_table is gpu.decoder.embedding_table and not gpu.drafter.step.owns_table
    assert any("EAGLE draft on TensorRT" in m and "sharing" in m for m in logs), logs
    prof = asked[f"{sub}/draft"][0]
    assert prof["past_key"][2][1] == gpu.drafter.step.max_seq_len == 160 + gpu.eagle_limits.max_expanded
    assert prof["hidden_in"][2][1] == gpu.drafter.step.max_chunk


def test_eagle_on_tensorrt_gives_the_cpu_engines_tokens(trt_engines):
    from edgellm_ros.runtime.config import GenerationRequest
    from edgellm_ros.runtime.speculative import EagleConfig
    ref, gpu, asked, _ = trt_engines
    eagle = EagleConfig(True, 4, 3, 12, confidence_threshold=0.0)   # random draft: keep its trees
    for adapter in ("", "ad"):
        for p in PROMPTS:
            req = GenerationRequest(prompt=p, max_new_tokens=32, adapter=adapter)
            ref.set_eagle(EagleConfig(False))
            plain = ref.generate(req)
            ref.set_eagle(eagle)
            cpu = ref.generate(req)
            gpu.set_eagle(eagle)
            res = gpu.generate(req)
            assert res.token_ids == plain.token_ids == cpu.token_ids, (adapter, p)
            assert res.eagle.drafts > 0
            # the same trees were proposed and accepted as on the CPU
            assert (res.eagle.drafts, res.eagle.accepted_tokens) == (cpu.eagle.drafts, cpu.eagle.accepted_tokens)
    # the prompt cache keeps the draft's device rows with the decoder's
    req = GenerationRequest(prompt="Name a colour.", system_prompt="You are a terse robot.", max_new_tokens=16)
    first, second = gpu.generate(req), gpu.generate(req)
    assert second.cached_tokens > 0 and second.token_ids == first.token_ids == ref.generate(req).token_ids
    refused = {g: e.refused for g, e in asked["engines"].items() if e.refused}
    assert not refused, f"shapes outside the build profiles: {refused}"
    assert gpu.drafter.step.engine.profile is not None        # the check was on


def test_vision_pipeline_on_tensorrt_equals_onnxruntime(tmp_path_factory, tokenizer_dir, device):
    from edgellm_ros.runtime.config import GenerationRequest
    from edgellm_ros.runtime.engine import Engine
    from edgellm_ros.synthetic.tiny_vlm import synthetic_image, write_tiny_vlm_once
    from edgellm_ros.runtime.vision import VisionPipeline
    vlm = write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), tokenizer_dir)
    cfg = _config(backend="onnxruntime", model=vlm, engine_dir=str(tmp_path_factory.mktemp("vlm_trt")),
                  eagle_draft="")
    ref = Engine.load(cfg, log=lambda m: None)
    logs = []
    with pytest.MonkeyPatch.context() as mp:
        asked = stand_in_tensorrt(mp)
        gpu = Engine.load(dataclasses.replace(cfg, backend="tensorrt"), log=logs.append)
        assert gpu.vision.backend == "tensorrt" and ref.vision.backend == "onnxruntime"
        assert asked["vision"][0]["pixel_values"][2][0] == gpu.vision.max_tiles_per_run
        assert any("vision encoder loaded (tensorrt)" in m for m in logs), logs
        px = np.random.default_rng(5).standard_normal((19, 3, 64, 64)).astype(np.float32)   # 8 + 8 + 3 tiles
        np.testing.assert_allclose(gpu.vision.encode(px), ref.vision.encode(px), atol=1e-5, rtol=1e-5)
        assert not asked["engines"]["vision"].refused
        from edgellm_ros.backends.tensorrt import TrtBackend
        direct = VisionPipeline.from_folder(gpu.folder, max_tiles_per_run=4, backend=TrtBackend(lambda m: None))
        np.testing.assert_allclose(direct.encode(px[:6]), ref.vision.encode(px[:6]), atol=1e-5, rtol=1e-5)
        direct.encoder.close()
    # a request with images: the same prompt rows and the same answer as the CPU engine
    for images in ((synthetic_image(1, 48, 80),), (synthetic_image(2, 64, 64), synthetic_image(3, 40, 90))):
        req = GenerationRequest(prompt="What do you see?", images=images, max_new_tokens=12)
        a, b = ref.generate(req), gpu.generate(req)
        assert b.token_ids == a.token_ids and b.prompt_tokens == a.prompt_tokens > 16
    assert gpu.vision.last_timings["encode_s"] > 0
    ref.close()
    gpu.close()


def test_selftest_reports_the_draft_and_vision_engines(tmp_path_factory, tokenizer_dir, device):
    """``edgellm selftest`` on a VLM, with stand-in engines: every engine check runs on the GPU."""
    import json
    from edgellm_ros.runtime.engine_dir import ensure_engine
    from edgellm_ros.selftest import run_selftest
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once
    vlm = write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), tokenizer_dir)
    folder = ensure_engine(vlm, str(tmp_path_factory.mktemp("selftest") / "engine"), log=lambda m: None)
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        asked = stand_in_tensorrt(mp)
        code = run_selftest(vlm, folder, 128, out=lines.append)
    checks = {c["check"]: c for c in json.loads(lines[-1])["checks"]}
    status = {k: c["status"] for k, c in checks.items()}
    passed = [k for k in checks if k != "trt_cuda_graphs"]
    assert all(status[k] == "PASS" for k in passed), [(k, checks[k]["detail"]) for k in passed if status[k] != "PASS"]
    # OrtEngine synchronizes the host, so decode steps cannot be captured: the one expected failure
    assert status["trt_cuda_graphs"] == "FAIL" and code == 1
    draft, vision = checks["draft_engines"], checks["vision_engine"]
    assert "random EAGLE-3 draft" in draft["detail"] and draft["top1_in_ort_top4"] == 1.0
    assert draft["max_abs_diff"] < 1e-3 and draft["fc_max_abs_diff"] < 1e-4
    assert "the model's vision encoder" in vision["detail"] and vision["min_cosine"] > 0.9999
    assert any(g.endswith("/draft_fc") for g in asked) and asked["vision"][0]["pixel_values"][2][0] == 4
    assert len(checks) == 14
