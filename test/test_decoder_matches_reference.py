"""The exported decoder on ONNX Runtime computes what the NumPy reference computes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest


# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
# with SmolLM2's default system turn omitted (ids from the GGUF vocabulary).
PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]

PLAIN_ONNX_OPS = {
    "Add", "Cast", "Concat", "Cos", "Div", "Gather", "Identity", "MatMul", "Mul", "Neg",
    "Pow", "ReduceMean", "Reshape", "Sigmoid", "Sin", "Slice", "Softmax", "Split",
    "Sqrt", "Squeeze", "Transpose", "Unsqueeze",
}


@pytest.fixture(scope="module")
def decoder(default_engine_dir, default_weights):
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    dec = OrtDecoder(os.path.join(default_engine_dir, "decoder.onnx"), default_weights.config,
                     default_weights.tensors["embed_tokens.weight"], max_seq_len=128, max_chunk=32)
    yield dec
    dec.close()


def test_onnx_logits_match_reference_over_prefill_and_20_decode_steps(decoder, reference_model):
    ref = reference_model
    logits, _, past = ref.forward(ref.embed(PROMPT), np.arange(len(PROMPT)), [])
    got = decoder.forward(0, PROMPT)
    worst = float(np.abs(got[0] - logits[-1]).max())
    assert int(got[0].argmax()) == int(logits[-1].argmax())
    ref_tokens, ort_tokens = [], []
    pos = len(PROMPT)
    tok = int(logits[-1].argmax())
    for _ in range(20):
        ref_tokens.append(tok)
        ort_tokens.append(int(got[0].argmax()))
        logits, _, kv = ref.forward(ref.embed([tok]), np.array([pos]), past)
        past = [(np.concatenate([pk, k]), np.concatenate([pv, v])) for (pk, pv), (k, v) in zip(past, kv)]
        got = decoder.forward(pos, [tok])
        worst = max(worst, float(np.abs(got[0] - logits[-1]).max()))
        assert int(got[0].argmax()) == int(logits[-1].argmax())
        tok = int(logits[-1].argmax())
        pos += 1
    assert worst < 2e-3, f"max |logits difference| {worst}"
    assert ref_tokens == ort_tokens


def test_present_keys_and_values_are_written_into_the_cache_rows(decoder, reference_model):
    ref = reference_model
    decoder.kv.keys[3][:40] = 7.0  # poison: the step must overwrite exactly rows [P, P+T)
    decoder.forward(0, PROMPT[:10])
    decoder.forward(10, PROMPT[10:])
    _, _, kv = ref.forward(ref.embed(PROMPT), np.arange(len(PROMPT)), [])
    n = len(PROMPT)
    for i in (0, 3, 29):
        assert np.abs(decoder.kv.keys[i][:n] - kv[i][0]).max() < 1e-4
        assert np.abs(decoder.kv.values[i][:n] - kv[i][1]).max() < 1e-4
    assert np.all(decoder.kv.keys[3][n:40] == 7.0), "rows past P+T were touched"


def test_hidden_states_output_is_the_final_norm_output(decoder, reference_model):
    ref = reference_model
    decoder.forward(0, PROMPT)
    _, hidden, _ = ref.forward(ref.embed(PROMPT), np.arange(len(PROMPT)), [])
    assert np.abs(decoder.hidden[:len(PROMPT)] - hidden).max() < 1e-3


def test_logits_index_selects_rows(decoder, reference_model):
    ref = reference_model
    logits, _, _ = ref.forward(ref.embed(PROMPT), np.arange(len(PROMPT)), [])
    got = decoder.forward(0, PROMPT, logits_rows=[2, 7, 15])
    assert got.shape == (3, logits.shape[1])
    assert np.abs(got - logits[[2, 7, 15]]).max() < 2e-3


def test_decoder_graph_uses_plain_onnx_ops_at_opset_17(default_engine_dir, default_weights):
    path = os.path.join(default_engine_dir, "decoder.onnx")
    model = onnx.load(path, load_external_data=False)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    ops = {n.op_type for n in model.graph.node}
    assert ops <= PLAIN_ONNX_OPS, f"non-plain ops: {ops - PLAIN_ONNX_OPS}"
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    onnx.checker.check_model(path)
    names = [i.name for i in model.graph.input]
    L = default_weights.config.num_layers
    assert names[:4] == ["inputs_embeds", "position_ids", "attention_mask", "logits_index"]
    assert names[4:] == [f"past_{kv}.{i}" for i in range(L) for kv in ("key", "value")]
    outs = [o.name for o in model.graph.output]
    assert outs[:2] == ["logits", "hidden_states"]
    assert outs[2:] == [f"present_{kv}.{i}" for i in range(L) for kv in ("key", "value")]
    assert any(n.name == "/model/layers.0/attn/qkv_proj/MatMul" for n in model.graph.node)
