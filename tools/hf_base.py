"""Load the base model with transformers for the training scripts (torch needed),
and read their JSONL data files (standard library only).

Shared by tools/train_lora.py and tools/train_eagle.py. transformers' GGUF
tokenizer ignores ``tokenizer.ggml.pre = "smollm"`` (every digit is its own
pre-token in SmolLM2's tokenizer.json, in llama.cpp and in our runtime), so
``load_base`` puts the digit split back, so training sees the ids the
runtime produces.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence, Tuple


def read_split_jsonl(path: str, fields: Sequence[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(training rows, held-out rows) of a JSONL file; a row is held out when its
    "split" is "eval". Every row needs a non-empty string in each of ``fields``;
    blank lines are skipped. A bad row stops the script with its line number."""
    train: List[Dict[str, Any]] = []
    held: List[Dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            missing = [k for k in fields if not isinstance(row.get(k), str) or not row[k]]
            if missing:
                raise SystemExit(f"{path}:{n}: a row needs {' and '.join(repr(k) for k in fields)} "
                                 f"(missing: {', '.join(missing)})")
            (held if row.get("split") == "eval" else train).append(row)
    return train, held


def gguf_pre_tokenizer(path: str) -> str:
    """tokenizer.ggml.pre of a GGUF file ('' when absent or unreadable)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
        return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else ""
    except Exception:  # noqa: BLE001 - only a hint
        return ""


def load_base(gguf: str, model_dir: str, digits: str = "auto") -> Tuple[Any, Any, bool]:
    """(tokenizer, float32 model, digit split applied) from a GGUF file or a HF folder.

    digits: "auto" (split digits when the GGUF says smollm), "on" or "off".
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pre = ""
    if gguf:
        folder, name = os.path.split(os.path.abspath(gguf))
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        pre = gguf_pre_tokenizer(gguf)
    else:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    split = digits == "on" or (digits == "auto" and pre == "smollm")
    if split:
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tok, model, split
