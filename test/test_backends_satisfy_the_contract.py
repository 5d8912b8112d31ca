"""Both backends satisfy the runtime's contract (edgellm_ros/contract.py's Protocols).

ONNX Runtime's objects are built for real on the default model and checked with
isinstance (runtime_checkable: every member present); TensorRT's classes, which
need a GPU to build, are checked by their methods' signatures against the
Protocols' (same parameter names in the same order), so a method renamed or a
parameter dropped on either side fails here.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

from edgellm_ros import contract
from edgellm_ros.backends.onnxruntime import OrtBackend, OrtDecoder, OrtDraft, OrtFunction

PROTOCOL_MEMBERS = {
    proto: sorted(n for n in dir(proto) if not n.startswith("_") and n not in dir(object)) + (
        ["__call__"] if "__call__" in vars(proto) else [])
    for proto in (contract.DecoderStep, contract.DraftStep, contract.ArrayFunction, contract.Backend)}


def _params(fn) -> list:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def _same_methods(cls, proto) -> dict:
    """Protocol methods whose parameters differ on ``cls`` (name -> (protocol's, class's))."""
    diff = {}
    for name in PROTOCOL_MEMBERS[proto]:
        want = inspect.getattr_static(proto, name)
        if isinstance(want, property) or not callable(want):
            if not hasattr(cls, name) and name not in getattr(proto, "__annotations__", {}):
                diff[name] = "missing"
            continue
        got = inspect.getattr_static(cls, name, None)
        if got is None:
            diff[name] = "missing"
        elif isinstance(got, staticmethod):
            continue
        elif _params(want) != _params(got):
            diff[name] = (_params(want), _params(got))
    return diff


@pytest.fixture(scope="module")
def ort_parts(default_engine_dir):
    from edgellm_ros.contract import read_manifest
    from edgellm_ros.models.spec import ModelConfig
    folder = default_engine_dir
    mcfg = ModelConfig.from_dict(read_manifest(folder)["model"])
    emb = np.load(os.path.join(folder, "embeddings.npy"), mmap_mode="r")
    backend = OrtBackend(num_threads=1)
    decoder = backend.open_decoder(folder, "decoder", mcfg, np.asarray(emb), 64, 8, [], 8)
    yield backend, decoder
    decoder.close()


def test_onnxruntime_objects_are_instances_of_the_protocols(ort_parts, default_engine_dir):
    from edgellm_ros.runtime.tokenizer import Tokenizer
    backend, decoder = ort_parts
    assert isinstance(backend, contract.Backend)
    assert isinstance(decoder, contract.DecoderStep) and isinstance(decoder, contract.GraphStep)
    assert isinstance(decoder.kv, contract.KVRows)
    assert isinstance(Tokenizer.from_hf_folder(default_engine_dir), contract.TextTokenizer)
    assert decoder.lora_slots == [] and decoder.has_fast_head is False
    decoder.set_fast_head(True)     # a graph without the two-pass head ignores it
    assert not decoder.fast_head


def test_a_missing_member_is_not_an_instance(ort_parts):
    class Half:
        max_seq_len = max_chunk = 1
    assert not isinstance(Half(), contract.GraphStep)
    assert not isinstance(Half(), contract.Backend)


@pytest.mark.parametrize("cls, proto", [
    (OrtDecoder, contract.DecoderStep), (OrtDraft, contract.DraftStep), (OrtFunction, contract.ArrayFunction),
    (OrtBackend, contract.Backend)])
def test_onnxruntime_signatures_match_the_protocols(cls, proto):
    assert _same_methods(cls, proto) == {}


def test_tensorrt_signatures_match_the_protocols():
    from edgellm_ros.backends.tensorrt import TrtBackend
    from edgellm_ros.backends.tensorrt.decoder import TrtDecoder
    from edgellm_ros.backends.tensorrt.draft import TrtDraft
    from edgellm_ros.backends.tensorrt.function import TrtFunction
    for cls, proto in ((TrtDecoder, contract.DecoderStep), (TrtDraft, contract.DraftStep),
                       (TrtFunction, contract.ArrayFunction), (TrtBackend, contract.Backend)):
        assert _same_methods(cls, proto) == {}, cls.__name__
    assert TrtBackend.name == "tensorrt" and OrtBackend.name == "onnxruntime"


def test_a_renamed_parameter_is_caught():
    class Renamed(OrtDecoder):
        def set_adapter(self, adapter_name: str) -> None:   # the protocol says ``name``
            pass
    assert "set_adapter" in _same_methods(Renamed, contract.DecoderStep)
