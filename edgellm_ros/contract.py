"""The graph contract: what the exporter writes and every backend and the runtime bind.

The ground floor of the package: backends, the exporter and the runtime all
import it, and it imports nothing of theirs (no onnx, no onnxruntime), so a
backend never reaches into the exporter or the runtime for a name. It holds the
decoder graph's input and output names (the I/O table is in
``edgellm_ros/export/decoder.py``), the additive mask value, the LoRA slot
names and shapes, how an engine folder's manifest is read, and the contract
between the runtime and a backend as ``typing.Protocol`` classes: a backend
satisfies them by shape (test/test_backends_satisfy_the_contract.py checks
both), the runtime is typed against them and never probes with hasattr.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

from .models.spec import ModelConfig

#: (layer, module) of every LoRA slot of a decoder graph.
LoraSlots = Sequence[Tuple[int, str]]
#: An adapter's graph-ready tensors: (layer, module) -> (A^T [in, r], scale * B^T [r, out]).
AdapterWeights = Dict[Tuple[int, str], Tuple[np.ndarray, np.ndarray]]

#: Weight formats of the decoder graph (export/projections.py explains each).
QUANTIZATIONS = ("none", "int4", "int4-sym", "int8")

#: Additive mask value for dropped positions (finite in float16 too).
MASK_VALUE = -65504.0

#: The [V, H] float32 input the fused CPU graph's LM head gathers the rows it
#: rescores from: the runtime binds the embedding table to it (tied heads only).
HEAD_ROWS_INPUT = "lm_head_rows"
#: Bool scalar inputs choosing that LM head, exactly one true: the two-pass
#: head, the whole 8-bit head, the whole head in float32 from the table.
HEAD_FAST_INPUT = "lm_head_fast"
HEAD_INT8_INPUT = "lm_head_int8"
HEAD_FLOAT_INPUT = "lm_head_float"

#: The engine folder's manifest file (model config, graphs, source hash).
MANIFEST = "manifest.json"


def module_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, int]]:
    """(in, out) features of each projection of a layer."""
    H, F, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    return {"q_proj": (H, cfg.num_heads * D), "k_proj": (H, cfg.num_kv_heads * D),
            "v_proj": (H, cfg.num_kv_heads * D), "o_proj": (cfg.num_heads * D, H),
            "gate_proj": (H, F), "up_proj": (H, F), "down_proj": (F, H)}


def lora_input_names(layer: int, module: str) -> Tuple[str, str]:
    """The graph inputs of one LoRA slot: A^T [in, r] and scale * B^T [r, out]."""
    return f"lora.{layer}.{module}.a", f"lora.{layer}.{module}.b"


def decoder_io_names(num_layers: int, lora_modules: Sequence[str] = (),
                     head_rows: bool = False) -> Dict[str, List[str]]:
    """Input and output names of the decoder graph, in order.

    head_rows: the fused CPU graph of a model with a tied LM head reads the
    rows it rescores from the embedding table, bound as ``lm_head_rows``, and
    the three flags that choose its head.
    """
    ins = ["inputs_embeds", "position_ids", "attention_mask", "logits_index"]
    outs = ["logits", "hidden_states"]
    for i in range(num_layers):
        ins += [f"past_key.{i}", f"past_value.{i}"]
        outs += [f"present_key.{i}", f"present_value.{i}"]
    for i in range(num_layers):
        for m in lora_modules:
            ins += list(lora_input_names(i, m))
    if head_rows:
        ins += [HEAD_ROWS_INPUT, HEAD_FAST_INPUT, HEAD_INT8_INPUT, HEAD_FLOAT_INPUT]
    return {"inputs": ins, "outputs": outs}


def read_manifest(folder: str) -> Optional[Dict[str, Any]]:
    """The engine folder's manifest, or None when it is missing or unreadable."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


# -- the runtime <-> backend contract ------------------------------------------------------------

@runtime_checkable
class KVRows(Protocol):
    """A step's KV cache: [max_seq_len, KVH, D] rows per layer, allocated once."""

    @property
    def nbytes(self) -> int:
        """Bytes of the whole cache."""

    def snapshot_nbytes(self, rows: int) -> int:
        """Bytes a snapshot of the first ``rows`` rows takes."""

    def snapshot(self, rows: int) -> Any:
        """A copy of rows [0, rows) (what the prompt cache keeps)."""

    def restore(self, snap: Any) -> int:
        """Write a snapshot back to rows [0, n); returns n."""

    def move_rows(self, src: np.ndarray, dst_start: int) -> None:
        """Copy rows ``src`` (ascending) to dst_start, dst_start + 1, ... (EAGLE compaction)."""


@runtime_checkable
class GraphStep(Protocol):
    """One forward of a step graph (decoder or draft) on buffers bound once.

    ``forward`` runs T new tokens after ``n_past`` cached rows and returns the
    logits rows [L, V] (a view valid until the next step); the T rows' hidden
    output is ``hidden[:T]``; present keys and values land in ``kv``.
    """

    max_seq_len: int
    max_chunk: int
    embeddings: np.ndarray      # [V, H] host table (lookups, image merges)
    kv: Any                     # KVRows

    def forward(self, n_past: int, token_ids: Optional[Sequence[int]] = None, *,
                num_tokens: int = 0, positions: Optional[np.ndarray] = None,
                logits_rows: Union[str, Sequence[int]] = "last",
                mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Logits [L, V] of the rows asked for (``logits_rows``: "last", "all" or indices)."""

    def embeds_buffer(self, t: int) -> np.ndarray:
        """[t, H] view of the embeddings input, for callers that bring their own."""

    @property
    def hidden(self) -> np.ndarray:
        """[max_chunk, F] hidden output of the last step (rows [0, T) valid)."""

    def close(self) -> None:
        """Free the step's buffers and sessions."""


@runtime_checkable
class DecoderStep(GraphStep, Protocol):
    """The base model's decoder: a GraphStep with LoRA slots and the LM-head switch."""

    config: ModelConfig
    feature_size: int           # F of ``hidden``: H, or 3H for EAGLE-3 features
    lora_slots: List[Tuple[int, str]]   # empty: a graph without LoRA inputs

    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        """Bind an adapter's preloaded tensors once (modules it lacks bind zeros)."""

    def set_adapter(self, name: str) -> None:
        """Run the next steps with that adapter ("" = the base model); no copy."""

    @property
    def has_fast_head(self) -> bool:
        """Whether the graph has the two-pass LM head (exact best logits only)."""

    def set_fast_head(self, fast: bool) -> None:
        """Use the two-pass LM head for the next steps (no-op without one)."""

    def set_features(self, on: bool) -> None:
        """Whether the next steps must output the EAGLE features (``hidden`` [T, F])."""

    def set_row_padding(self, on: bool) -> None:
        """Run one-token steps as two rows, so a token's row gets the bits a many-row step gives it."""


@runtime_checkable
class DraftStep(GraphStep, Protocol):
    """An EAGLE draft step: a GraphStep with a hidden_in input the caller fills."""

    def hidden_in_buffer(self, t: int) -> np.ndarray:
        """[t, H] view of the hidden_in input, filled before forward()."""


@runtime_checkable
class ArrayFunction(Protocol):
    """A graph of one input and one output over a batch axis.

    The vision encoder (pixel_values [n, 3, S, S] -> image_embeds [n, Q, H])
    and EAGLE-3's fc (features [n, F] -> [n, H]).
    """

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The output for ``x`` (a new array)."""

    def close(self) -> None:
        """Free the function's buffers and sessions."""


@runtime_checkable
class Backend(Protocol):
    """An executor of the exported graphs: opens the steps the runtime drives.

    ``edgellm_ros.backends.open_backend`` is the one place a backend is chosen.
    """

    name: str       # "onnxruntime" or "tensorrt"

    def open_decoder(self, folder: str, graph: str, config: ModelConfig, embeddings: np.ndarray,
                     max_seq_len: int, max_chunk: int, lora_slots: LoraSlots, max_lora_rank: int,
                     plain_graph: str = "") -> DecoderStep:
        """The decoder graph ``graph`` of the engine folder, its KV cache allocated.

        plain_graph: the family's plain variant (no LoRA slots, no features), which
        a backend may run while no adapter and no features are wanted ("" = none).
        """

    def open_draft(self, folder: str, draft_sub: str, draft_cfg: Any, vocab: int, embeddings: np.ndarray,
                   max_seq_len: int, max_chunk: int, decoder: Optional[DecoderStep] = None
                   ) -> Tuple[DraftStep, Optional[ArrayFunction]]:
        """The EAGLE draft exported under ``folder/draft_sub``: (step, EAGLE-3 fc or None).

        ``decoder``: the base decoder it runs beside (a backend may share its buffers).
        """

    def open_vision(self, folder: str, vision_cfg: Any, max_tiles: int) -> ArrayFunction:
        """The engine folder's vision encoder, up to ``max_tiles`` tiles a run."""


@runtime_checkable
class TextTokenizer(Protocol):
    """What the generator needs of a tokenizer (runtime/tokenizer.py's Tokenizer)."""

    stop_ids: frozenset

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (special tokens recognised)."""

    def apply_chat_template(self, messages: List[Dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The model's chat template rendered over ``messages``."""

    def stream(self) -> Any:
        """An incremental detokenizer: push(id) -> new text, flush() -> the rest."""


#: A log line sink (the node's logger, print, a list's append); what it returns is ignored.
Log = Callable[[str], object]
