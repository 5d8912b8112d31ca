"""The INT8 CPU variant of the EAGLE draft: chosen next to quantized CPU decoders,
close to the float draft, and it never changes what EAGLE outputs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.speculative import EagleConfig

PROMPT = "List the checks a robot runs before it leaves the charging dock."


def _load(**kw):
    from edgellm_ros.runtime.engine import Engine
    kw.setdefault("eagle_draft", "default")   # the shipped draft unless the test says
    return Engine.load(EngineConfig(max_seq_len=512, prefill_chunk=128, **kw), log=lambda m: None)


def test_draft_precision_follows_the_backend_and_the_decoder():
    from edgellm_ros.runtime.engine import draft_quantization
    assert draft_quantization(EngineConfig(quantization="int4"), "onnxruntime") == "int8"
    assert draft_quantization(EngineConfig(quantization="int4-sym"), "onnxruntime") == "int8"
    assert draft_quantization(EngineConfig(quantization="none"), "onnxruntime") == "none"
    assert draft_quantization(EngineConfig(quantization="int4"), "tensorrt") == "none"


def test_unknown_draft_quantization_is_refused(tmp_path):
    from edgellm_ros.export.draft import export_draft
    with pytest.raises(ValueError, match="draft quantization"):
        export_draft(None, {}, np.zeros((1, 1), np.float32), str(tmp_path), "int3")


@pytest.fixture(scope="module")
def float_engine(default_engine_dir):
    eng = _load(quantization="none")
    yield eng
    eng.close()


def test_int8_draft_graph_is_a_quarter_of_the_bytes_and_tracks_the_float_draft(
        float_engine, tmp_path):
    """Same inputs (the base's real EAGLE-3 features of a prompt) through both drafts:
    the draft's next-token choice agrees on nearly every row, its hidden output
    within a few percent."""
    from edgellm_ros.backends.onnxruntime import OrtDraft, make_session
    from edgellm_ros.runtime.engine import export_draft_graphs, manifest_head
    eng = float_engine
    dr = eng.drafter
    cfg = dr.cfg
    subs = {q: export_draft_graphs(cfg, {**_draft_weights(eng)}, _draft_dir(), str(tmp_path),
                                   manifest_head(eng.folder, eng.model_config), q)
            for q in ("none", "int8")}
    graph = onnx.load(os.path.join(subs["int8"], "draft.onnx"), load_external_data=False)
    rotary = sum(int(np.prod(t.dims)) * 4 for t in graph.graph.initializer if t.name.startswith("model.rotary."))
    sizes = {q: os.path.getsize(os.path.join(s, "draft.data")) for q, s in subs.items()}
    assert sizes["int8"] - rotary < 0.3 * sizes["none"], (sizes, rotary)   # + the fused graph's cos/sin tables
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("DequantizeLinear") == 5   # packed qkv, o, packed gate/up, down, head
    assert "GroupQueryAttention" in ops and "SkipSimplifiedLayerNormalization" in ops   # the CPU variant
    assert not any(n.op_type == "MatMul" and any(i.startswith("draft.") for i in n.input)
                   for n in graph.graph.node)   # no float weight left

    ids = eng.tokenizer.encode(PROMPT)
    eng.decoder.forward(0, ids, logits_rows="all")
    feats = eng.decoder.hidden[:len(ids)].copy()                        # [T, 3H]
    nxt = ids[1:] + [int(np.argmax(eng.decoder.forward(len(ids) - 1, ids[-1:])[0]))]
    out = {}
    for q, sub in subs.items():
        fc = make_session(os.path.join(sub, "draft_fc.onnx"), 1, spin=False)
        hidden = fc.run(None, {"features": feats[None]})[0][0]
        step = OrtDraft(os.path.join(sub, "draft.onnx"), cfg, cfg.draft_vocab_size,
                        eng.decoder.embeddings, 512, 64, 1)
        step.hidden_in_buffer(len(ids))[...] = hidden
        logits = step.forward(0, nxt, logits_rows="all").copy()
        out[q] = (hidden, logits, step.hidden[:len(ids)].copy())
    (h0, l0, o0), (h1, l1, o1) = out["none"], out["int8"]
    # int8 weights and int8 activations (ONNX Runtime's MatMulNBits): ~1 % per row,
    # ~3 % on the first row, whose features carry the large attention-sink values
    rel = lambda a, b: np.abs(a - b).max(-1) / np.abs(b).max(-1)  # noqa: E731
    assert rel(h1, h0).max() < 0.05 and np.median(rel(h1, h0)) < 0.02, rel(h1, h0)
    assert rel(o1, o0).max() < 0.08 and np.median(rel(o1, o0)) < 0.03, rel(o1, o0)
    agree = float(np.mean(np.argmax(l0, -1) == np.argmax(l1, -1)))
    assert agree >= 0.9, agree


def test_quantized_engine_loads_the_int8_draft_and_eagle_stays_exact(default_engine_dir):
    """int4 weights with float32 compute are exact (test_quantized_and_fused_graphs.py),
    so EAGLE with the INT8 draft must give plain greedy's tokens, and accept drafts."""
    eng = _load(quantization="int4", int4_compute="float32")
    try:
        assert eng.drafter is not None
        assert "-int8" in os.path.basename(os.path.dirname(eng.drafter.step.onnx_path))
        req = GenerationRequest(prompt=PROMPT, max_new_tokens=40)
        plain = eng.generate(req).token_ids
        eng.set_eagle(EagleConfig(True, 2, 4, 8))
        spec = eng.generate(req)
        assert spec.token_ids == plain
        assert spec.eagle.mean_acceptance_length > 1.5, spec.eagle.as_dict()
    finally:
        eng.close()


def _draft_dir() -> str:
    from edgellm_ros.runtime.resources import resolve_draft
    return resolve_draft("default", "")


def _draft_weights(eng):
    from edgellm_ros.models.eagle import load_draft
    return load_draft(_draft_dir(), eng.model_config)[1]
