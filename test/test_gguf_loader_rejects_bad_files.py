"""Model files are hostile: each kind of damage gets its own error naming it."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.errors import CorruptModelError, ModelLoadError, UnsupportedModelError
from edgellm_ros.loaders import default_model_path, load_model
from edgellm_ros.loaders.gguf import unpermute_qk


def _write_gguf(path, arch: str, block_count: int = 1) -> None:
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(block_count)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_context_length(64)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_empty_file_is_rejected_with_its_size(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(CorruptModelError, match="0 bytes"):
        load_model(str(p))


def test_wrong_magic_is_rejected(tmp_path):
    p = tmp_path / "notgguf.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CorruptModelError, match="not a readable GGUF"):
        load_model(str(p))


def test_truncated_default_model_is_rejected(tmp_path):
    src = default_model_path()
    with open(src, "rb") as f:
        head = f.read(4 * 1024 * 1024)
    p = tmp_path / "truncated.gguf"
    p.write_bytes(head)
    with pytest.raises(CorruptModelError, match="truncated.gguf"):
        load_model(str(p))


def test_unsupported_architecture_is_named(tmp_path):
    p = tmp_path / "mamba.gguf"
    _write_gguf(p, "mamba")
    with pytest.raises(UnsupportedModelError, match="'mamba'"):
        load_model(str(p))


def test_missing_tensors_are_named(tmp_path):
    p = tmp_path / "tiny.gguf"
    _write_gguf(p, "llama")
    with pytest.raises(ModelLoadError, match="is missing"):
        load_model(str(p))


def test_missing_path_is_named():
    with pytest.raises(ModelLoadError, match="no/such/model.gguf"):
        load_model("no/such/model.gguf")


def test_unpermute_inverts_the_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    n_head, d, h = 3, 8, 5
    w = rng.standard_normal((n_head * d, h)).astype(np.float32)
    # llama.cpp convert_hf_to_gguf.py: reshape(n_head, 2, d/2, h).swapaxes(1, 2)
    permuted = w.reshape(n_head, 2, d // 2, h).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute_qk(permuted, n_head), w)
    assert not np.array_equal(permuted, w)
