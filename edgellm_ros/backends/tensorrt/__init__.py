"""The TensorRT backend: engines built from the exported ONNX graphs, run through cuda-python.

Its modules import TensorRT and cuda-python lazily; ``TrtBackend`` opens the
decoder, the EAGLE draft and the vision encoder of an engine folder, building
each engine (``trt/*.plan``) when it is missing or stale.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ...contract import ArrayFunction, DecoderStep, DraftStep, LoraSlots, Log
from ...models.spec import ModelConfig


class TrtBackend:
    """Opens the graphs of an engine folder as TensorRT engines on GPU 0 (contract.Backend)."""

    name = "tensorrt"

    def __init__(self, log: Log = print):
        self.log = log

    def open_decoder(self, folder: str, graph: str, config: ModelConfig, embeddings: np.ndarray,
                     max_seq_len: int, max_chunk: int, lora_slots: LoraSlots, max_lora_rank: int,
                     plain_graph: str = "") -> DecoderStep:
        """The decoder engine of ``graph`` (one engine: plain_graph is not built as well)."""
        from .decoder import TrtDecoder
        return TrtDecoder.from_engine_folder(folder, graph, config, embeddings, max_seq_len, max_chunk,
                                             max_lora_rank, lora_slots, self.log)

    def open_draft(self, folder: str, draft_sub: str, draft_cfg: Any, vocab: int, embeddings: np.ndarray,
                   max_seq_len: int, max_chunk: int, decoder: Optional[DecoderStep] = None
                   ) -> Tuple[DraftStep, Optional[ArrayFunction]]:
        """The draft's engines, sharing the decoder's device embedding table when it has one."""
        from .decoder import TrtDecoder
        from .draft import load_trt_draft
        table = decoder.embedding_table if isinstance(decoder, TrtDecoder) else None
        return load_trt_draft(folder, draft_sub, draft_cfg, embeddings, max_seq_len, max_chunk,
                              self.log, table)

    def open_vision(self, folder: str, vision_cfg: Any, max_tiles: int) -> ArrayFunction:
        from .function import load_trt_vision
        return load_trt_vision(folder, vision_cfg, max_tiles, self.log)
