"""TensorRT executor of an EAGLE draft (``draft.onnx``, and ``draft_fc.onnx`` for EAGLE-3).

``TrtDraft`` has OrtDraft's interface (backends/onnxruntime.py), so speculative.Drafter
runs it unchanged: ``forward``, ``hidden_in_buffer``, ``hidden`` (hidden_out), ``kv`` (its
own DeviceKVCache: snapshot / restore for the prompt cache), ``max_seq_len`` /
``max_chunk``. It is TrtDecoder with the draft's tensor names: one layer whose KV
tensors are ``past_key`` / ``present_key`` (no layer index), ``hidden_in`` [1, T, H] as an
extra input (staged in pinned memory, uploaded with the step), ``hidden_out`` as the hidden
output, logits over the draft vocabulary. Every step runs plainly (no CUDA graphs: a
tree step has T > 1 and its own mask; a catch-up step brings hidden_in from the host).

The token embeddings are the base model's: with a TensorRT decoder on the same GPU the
draft binds the decoder's device table instead of uploading a second copy.

The EAGLE-3 fc (features [n, F] -> [n, H]) is a TrtFunction (function.py).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from .cuda_rt import DeviceBuffer
from .decoder import TrtDecoder
from .function import TrtFunction


class TrtDraft(TrtDecoder):
    """One EAGLE draft layer on the GPU, with its own device KV cache."""

    hidden_output = "hidden_out"
    extra_inputs = ("hidden_in",)

    @staticmethod
    def kv_names(layer: int) -> Tuple[str, str, str, str]:
        return ("past_key", "past_value", "present_key", "present_value")

    def __init__(self, engine: Any, draft_cfg: Any, embeddings: np.ndarray, max_seq_len: int, max_chunk: int,
                 trt: Any = None, log: Callable[[str], object] = print, table: Optional[DeviceBuffer] = None,
                 **kw: Any):
        # draft_cfg.rope(): a one-layer ModelConfig with the draft's widths (what TrtDecoder reads)
        super().__init__(engine, draft_cfg.rope(), embeddings, max_seq_len, max_chunk, (), trt, log,
                         cuda_graphs=False, table=table, **kw)
        self.draft_config = draft_cfg

    def hidden_in_buffer(self, t: int) -> np.ndarray:
        """[t, H] host (pinned) view of the hidden_in input, filled by the caller before forward()."""
        return self._h["hidden_in"].array[:t]


def load_trt_draft(folder: str, draft_sub: str, draft_cfg: Any, embeddings: np.ndarray, max_seq_len: int,
                   max_chunk: int, log: Callable[[str], object] = print, table: Optional[DeviceBuffer] = None,
                   ) -> Tuple[TrtDraft, Optional[TrtFunction]]:
    """Build (when missing or stale) and load the draft's plans: (step, fc or None for EAGLE-1).

    ``draft_sub``: the draft's export folder relative to the engine folder.
    """
    from . import decoder as trt_decoder
    from .cuda_rt import Device
    from .build import import_tensorrt
    from .engines import ensure_draft_plans

    plans = ensure_draft_plans(folder, draft_sub, draft_cfg, max_seq_len, max_chunk, log=log)
    trt = import_tensorrt()
    device = Device.get(0)
    runtime, engine = trt_decoder.load_engine(plans["draft"], trt, log)
    step = TrtDraft(engine, draft_cfg, embeddings, max_seq_len, max_chunk, trt, log, table,
                    device=device, runtime=runtime)
    fc = None
    if "fc" in plans:
        fc = TrtFunction.from_plan(plans["fc"], "features", "hidden", max_chunk, axis=1, trt=trt, log=log)
    log(f"EAGLE draft on TensorRT: {plans['draft']}" + (f", {plans['fc']}" if fc is not None else "")
        + (" (sharing the decoder's embedding table)" if table is not None and not step.owns_table else ""))
    return step, fc
