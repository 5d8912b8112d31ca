"""A decode step allocates no array: its traced allocation peak stays under one K/V row.

tracemalloc's peak is reset before each step and read after it, so memory
allocated and freed within the step counts, not only what is still held at
the end. One layer's K/V row of the default model is 3 heads x 64 x 4 B =
768 B; the logits row 196 KB. What a step does allocate are small Python
objects (the step's int, argument tuples): about 430-470 B here. A step that
made even one array of a K/V row's size (768 B of data plus its ~110 B object)
would pass the bound.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

BOUND = 768   # bytes: one layer's K/V row


@pytest.mark.parametrize("quantization,fused", [("none", False), ("int4", True)])
def test_each_decode_steps_allocation_peak_is_under_one_kv_row(default_engine_dir, default_weights,
                                                               quantization, fused):
    from edgellm_ros.backends.onnxruntime import OrtDecoder
    from edgellm_ros.runtime.engine_dir import ensure_family, graph_name
    c = default_weights.config
    assert c.num_kv_heads * c.head_dim * 4 == BOUND
    ensure_family(default_engine_dir, quantization, fused, log=lambda m: None)
    dec = OrtDecoder(os.path.join(default_engine_dir, graph_name(False, False, quantization, fused) + ".onnx"),
                     c, default_weights.tensors["embed_tokens.weight"], max_seq_len=256, max_chunk=64)
    try:
        logits = dec.forward(0, [1, 4093, 198, 28120, 2, 198, 1, 520, 9531, 198])
        pos, tok = 10, int(logits[0].argmax())
        for _ in range(5):  # warm up any lazily created Python objects
            tok = int(dec.forward(pos, [tok])[0].argmax())
            pos += 1
        peaks = []
        gc.disable()        # a collection inside a step would count its finalizers, not the step
        tracemalloc.start()
        try:
            for _ in range(40):
                held, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                tok = int(dec.forward(pos, [tok])[0].argmax())
                peaks.append(tracemalloc.get_traced_memory()[1] - held)
                pos += 1
        finally:
            tracemalloc.stop()
            gc.enable()
        assert max(peaks) < BOUND, (f"decode steps reached {max(peaks)} bytes above what was held "
                                    f"(per step: {peaks})")
    finally:
        dec.close()
