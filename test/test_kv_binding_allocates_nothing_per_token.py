"""The KV cache and every I/O buffer are allocated once and bound by address."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np

from runtime_fixtures import default_engine_dir, default_weights  # noqa: F401


def test_decode_steps_reuse_the_same_buffers_and_allocate_no_arrays(default_engine_dir, default_weights):  # noqa: F811
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    c = default_weights.config
    dec = OrtDecoder(os.path.join(default_engine_dir, "decoder.onnx"), c,
                     default_weights.tensors["embed_tokens.weight"], max_seq_len=256, max_chunk=64)
    before = dec.buffer_addresses()
    logits = dec.forward(0, [1, 4093, 198, 28120, 2, 198, 1, 520, 9531, 198])
    pos, tok = 10, int(logits[0].argmax())
    for _ in range(5):  # warm up any lazily created Python objects
        tok = int(dec.forward(pos, [tok])[0].argmax())
        pos += 1
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in range(50):
        tok = int(dec.forward(pos, [tok])[0].argmax())
        pos += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # One logits row alone is V*4 = 196 KB and one token's K/V rows 46 KB:
    # a per-token array allocation of either would show here.
    assert peak - base < 16 * 1024, f"{peak - base} bytes traced during 50 decode steps"
    assert dec.buffer_addresses() == before
    # ONNX Runtime wrote its outputs where we bound them, not into its own memory.
    outs = dec._binding.get_outputs()
    assert outs[0].data_ptr() == dec._logits.ctypes.data
    row = dec.kv.row_nbytes
    assert outs[2].data_ptr() == dec.kv.keys[0].ctypes.data + (pos - 1) * row
    assert np.any(dec.kv.keys[0][pos - 1] != 0)
    dec.close()
