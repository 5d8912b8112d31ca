"""The KV cache and every I/O buffer are allocated once and bound by address."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest


@pytest.mark.parametrize("quantization,fused", [("none", False), ("int4", True)])
def test_decode_steps_reuse_the_same_buffers_and_allocate_no_arrays(default_engine_dir, default_weights,
                                                                    quantization, fused):
    """The plain float graph (past/present rebound per step) and the default CPU graph
    (INT4, fused: the whole head-major buffers bound once)."""
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    from edgellm_ros.runtime.engine_dir import ensure_family, graph_name
    c = default_weights.config
    ensure_family(default_engine_dir, quantization, fused, log=lambda m: None)
    dec = OrtDecoder(os.path.join(default_engine_dir, graph_name(False, False, quantization, fused) + ".onnx"),
                     c, default_weights.tensors["embed_tokens.weight"], max_seq_len=256, max_chunk=64)
    before = dec.buffer_addresses()
    logits = dec.forward(0, [1, 4093, 198, 28120, 2, 198, 1, 520, 9531, 198])
    pos, tok = 10, int(logits[0].argmax())
    for _ in range(5):  # warm up any lazily created Python objects
        tok = int(dec.forward(pos, [tok])[0].argmax())
        pos += 1
    tracemalloc.start()
    before_snap = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    for _ in range(50):
        tok = int(dec.forward(pos, [tok])[0].argmax())
        pos += 1
    _, peak = tracemalloc.get_traced_memory()
    grown = tracemalloc.take_snapshot().compare_to(before_snap, "lineno")
    tracemalloc.stop()
    # One logits row alone is V*4 = 196 KB and one layer's K/V row 768 B: a
    # per-token array allocation of either would show here. What Python does
    # allocate per step are small objects (ints, argument tuples) of ~100 B.
    largest = max((st.size_diff / st.count_diff for st in grown if st.count_diff > 0), default=0)
    assert largest < 512, f"a per-step allocation averages {largest:.0f} bytes"
    assert peak - base < 64 * 1024, f"{peak - base} bytes traced at peak during 50 decode steps"
    assert dec.buffer_addresses() == before
    # ONNX Runtime wrote its outputs where we bound them, not into its own memory.
    ptrs = {o.data_ptr() for o in dec._binding.get_outputs()}
    assert dec._logits.ctypes.data in ptrs
    if fused:   # present = the whole buffer; the step wrote its row in place
        assert dec.kv.keys[0].ctypes.data in ptrs
        assert np.any(dec.kv.keys[0][:, pos - 1] != 0) and not np.any(dec.kv.keys[0][:, pos:])
    else:
        row = dec.kv.row_nbytes
        assert dec.kv.keys[0].ctypes.data + (pos - 1) * row in ptrs
        assert np.any(dec.kv.keys[0][pos - 1] != 0)
    dec.close()
