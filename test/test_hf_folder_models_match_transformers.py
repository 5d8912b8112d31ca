"""Hugging Face folders (Llama, Qwen2 with q/k/v biases, Llama-3 rope scaling)
load into the same model description and compute what transformers computes.

The expected logits in test/data/reference_tiny_hf.json were made by
tools/reference/make_tiny_hf_reference.py with transformers on the same
seeded checkpoints this test writes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgellm_ros.loaders import load_model
from edgellm_ros.models.llama import LlamaReference
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, TINY_LLAMA3, TINY_QWEN2, write_tiny_model
from support import load_json

REF = load_json("reference_tiny_hf.json")
CONFIGS = {"llama": TINY_LLAMA, "qwen2": TINY_QWEN2, "llama3": TINY_LLAMA3}


@pytest.fixture(params=sorted(CONFIGS))
def tiny(request, tmp_path, default_engine_dir):
    folder = write_tiny_model(str(tmp_path / request.param), CONFIGS[request.param], seed=0,
                              tokenizer_from=default_engine_dir)
    return request.param, folder


def test_reference_forward_matches_transformers(tiny):
    name, folder = tiny
    w = load_model(folder)
    assert w.config.attention_bias == (name == "qwen2")
    logits, _, _ = LlamaReference(w).forward(
        LlamaReference(w).embed(REF["ids"]), np.arange(len(REF["ids"])), [])
    want = REF["cases"][name]
    assert np.abs(logits[-1] - np.array(want["logits_last"])).max() < 1e-4
    assert np.abs(logits[0] - np.array(want["logits_first"])).max() < 1e-4
    assert logits.argmax(-1).tolist() == want["argmax"]


def test_exported_graph_matches_transformers(tiny, tmp_path):
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    from edgellm_ros.runtime.engine_dir import ensure_engine
    name, folder = tiny
    eng_dir = ensure_engine(folder, str(tmp_path / "engine"), log=lambda m: None)
    w = load_model(folder)
    dec = OrtDecoder(os.path.join(eng_dir, "decoder.onnx"), w.config,
                     w.tensors["embed_tokens.weight"], max_seq_len=64, max_chunk=16)
    ids = REF["ids"]
    dec.forward(0, ids[:5])                       # two chunks: exercises past + present
    got = dec.forward(5, ids[5:], logits_rows="all")
    want = REF["cases"][name]
    assert np.abs(got[-1] - np.array(want["logits_last"])).max() < 1e-4
    assert got.argmax(-1).tolist() == want["argmax"][5:]
    dec.close()


def test_unsupported_model_type_is_named(tmp_path):
    from edgellm_ros.errors import UnsupportedModelError
    folder = write_tiny_model(str(tmp_path / "m"), {**TINY_LLAMA, "model_type": "gpt_neox"})
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        load_model(folder)


def test_truncated_safetensors_is_rejected(tmp_path):
    from edgellm_ros.errors import CorruptModelError
    folder = write_tiny_model(str(tmp_path / "m"), TINY_LLAMA)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CorruptModelError, match="truncated"):
        load_model(folder)
