"""The graph contract: what the exporter writes and every backend and the runtime bind.

The ground floor of the package: backends, the exporter and the runtime all
import it, and it imports nothing of theirs (no onnx, no onnxruntime), so a
backend never reaches into the exporter or the runtime for a name. It holds the
decoder graph's input and output names (the I/O table is in
``edgellm_ros/export/decoder.py``), the additive mask value, the LoRA slot
names and shapes, and how an engine folder's manifest is read.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .models.spec import ModelConfig

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
