"""Hostile model, adapter, draft and chat-template files for benchmarks/reliability_bench.py.

Issue 22's cases, each written into a scratch folder by a small generator and
named after what is wrong with it. ``CASES`` maps a name to ``(family,
generator)``; a generator takes the scratch folder and returns the node
parameters that load the file (``model``, ``lora_adapters`` or ``eagle.draft``)
and the fields of one /ask to try when the node configures anyway (a template
or an adapter that was accepted may still hang or corrupt a request).

The damage itself comes from ``edgellm_ros/synthetic/hostile.py`` (the tests'
generators) wherever that module has it; what is written here are the cases
made from the real shipped files (patched copies of the embedded GGUF, of the
radiology adapter and of the EAGLE draft: the issue's own reproductions).
Standard library, numpy, safetensors and gguf (all in the project's venv).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Dict, Tuple

import numpy as np

from edgellm_ros.synthetic import hostile
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RADIOLOGY = os.path.join(ROOT, "adapters", "radiology")
DRAFT = os.path.join(ROOT, "drafts", "smollm2-135m-eagle3")
#: (parameters to set before configure, /ask fields to try if configure succeeds)
Loaded = Tuple[Dict[str, Any], Dict[str, Any]]
ASK = {"prompt": "Say hi.", "max_new_tokens": 4}


def _default_gguf() -> str:
    from edgellm_ros.loaders import default_model_path
    return default_model_path()


def _model(path: str) -> Loaded:
    return {"model": path}, dict(ASK)


def _adapter(path: str) -> Loaded:
    return {"lora_adapters": [f"hostile:{path}"]}, dict(ASK, lora="hostile")


def _draft(path: str) -> Loaded:
    return {"eagle.draft": path}, dict(ASK)


# -- GGUF files -------------------------------------------------------------------
def gguf_empty(d: str) -> Loaded:
    p = os.path.join(d, "empty.gguf")
    open(p, "wb").close()
    return _model(p)


def gguf_truncated(d: str) -> Loaded:
    return _model(hostile.truncated_gguf(os.path.join(d, "truncated.gguf"), _default_gguf()))


def gguf_bad_magic(d: str) -> Loaded:
    p = os.path.join(d, "bad_magic.gguf")
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 4096)
    return _model(p)


def _patched_gguf(d: str, name: str, key: str, value: int) -> Loaded:
    """A copy of the embedded GGUF with one integer metadata value changed in place."""
    from gguf import GGUFReader
    p = os.path.join(d, name)
    shutil.copyfile(_default_gguf(), p)
    reader = GGUFReader(p, "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][0] = value
    del reader  # flushes the memory map
    return _model(p)


def gguf_context_length_2147483647(d: str) -> Loaded:
    return _patched_gguf(d, "context_2g.gguf", "llama.context_length", 2147483647)


def gguf_head_count_0(d: str) -> Loaded:
    return _patched_gguf(d, "heads0.gguf", "llama.attention.head_count", 0)


def model_path_missing(d: str) -> Loaded:
    return _model(os.path.join(d, "no", "such", "model.gguf"))


# -- Hugging Face model folders (synthetic/hostile.py's tiny Llama) ----------------------------
def _tokenizer_folder(d: str) -> str:
    """A folder with the embedded model's tokenizer files (what a template case's model ships)."""
    from edgellm_ros.loaders.gguf import read_metadata
    from edgellm_ros.runtime.tokenizer import Tokenizer
    from gguf import GGUFReader

    folder = os.path.join(d, "tokenizer")
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        Tokenizer.from_gguf_metadata(read_metadata(GGUFReader(_default_gguf(), "r"))).save_hf_folder(folder)
    return folder


def template_cpu_bomb(d: str) -> Loaded:
    return _model(hostile.loop_template_model(os.path.join(d, "template_cpu_bomb"), _tokenizer_folder(d)))


def template_memory_bomb(d: str) -> Loaded:
    return _model(hostile.memory_bomb_template_model(os.path.join(d, "template_memory_bomb"),
                                                     _tokenizer_folder(d)))


def template_one_op_bomb(d: str) -> Loaded:
    """One expression asking for 10 GB (stopped by the render worker's memory cap)."""
    return _model(hostile.template_model(os.path.join(d, "template_one_op_bomb"), _tokenizer_folder(d),
                                         hostile.ONE_OP_BOMB_TEMPLATE))


def safetensors_dev_zero(d: str) -> Loaded:
    return _model(hostile.dev_zero_model(os.path.join(d, "safetensors_dev_zero")))


def safetensors_fifo(d: str) -> Loaded:
    return _model(hostile.fifo_model(os.path.join(d, "safetensors_fifo")))


def safetensors_header_2_pow_40(d: str) -> Loaded:
    return _model(hostile.lying_header_model(os.path.join(d, "safetensors_header_2_pow_40")))


def _truncate(path: str, keep: float) -> None:
    os.truncate(path, int(os.path.getsize(path) * keep))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def safetensors_truncated(d: str) -> Loaded:
    return _model(hostile.truncated_safetensors_model(os.path.join(d, "safetensors_truncated")))


def config_not_json(d: str) -> Loaded:
    folder = write_tiny_model(os.path.join(d, "config_not_json"), TINY_LLAMA)
    _write(os.path.join(folder, "config.json"), "{\"model_type\": \"llama\", ")
    return _model(folder)


# -- LoRA adapters (copies of the shipped radiology adapter) ----------------------------------
def _radiology_copy(d: str, name: str, **config: Any) -> str:
    folder = os.path.join(d, name)
    shutil.copytree(RADIOLOGY, folder)
    if config:
        path = os.path.join(folder, "adapter_config.json")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg.update(config)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f)        # NaN and inf are written as the bare words
    return folder


def lora_alpha_nan(d: str) -> Loaded:
    return _adapter(_radiology_copy(d, "lora_alpha_nan", lora_alpha=float("nan")))


def lora_alpha_1e308(d: str) -> Loaded:
    return _adapter(_radiology_copy(d, "lora_alpha_1e308", lora_alpha=1e308))


def lora_rank_mismatch(d: str) -> Loaded:
    return _adapter(_radiology_copy(d, "lora_rank_mismatch", r=100000))


def lora_tensors_nan(d: str) -> Loaded:
    from safetensors.numpy import load_file, save_file
    folder = _radiology_copy(d, "lora_tensors_nan")
    path = os.path.join(folder, "adapter_model.safetensors")
    tensors = load_file(path)
    save_file({k: np.full_like(v, np.nan) for k, v in tensors.items()}, path)
    return _adapter(folder)


def lora_bytes_overwritten(d: str) -> Loaded:
    """64 KiB of 0xFF (float NaN) in the middle of the radiology weights."""
    return _adapter(hostile.overwritten_adapter(os.path.join(d, "lora_bytes_overwritten"), RADIOLOGY,
                                                length=65536))


def lora_weights_missing(d: str) -> Loaded:
    folder = _radiology_copy(d, "lora_weights_missing")
    os.remove(os.path.join(folder, "adapter_model.safetensors"))
    return _adapter(folder)


# -- EAGLE drafts (copies of the shipped draft) --------------------------------------------
def _draft_copy(d: str, name: str) -> str:
    folder = os.path.join(d, name)
    shutil.copytree(DRAFT, folder, ignore=shutil.ignore_patterns("train_log*", "README.md"))
    return folder


def draft_target_layer_99(d: str) -> Loaded:
    folder = _draft_copy(d, "draft_target_layer_99")
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["target_layer_ids"] = [2, 15, 99]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return _draft(folder)


def draft_config_not_json(d: str) -> Loaded:
    folder = _draft_copy(d, "draft_config_not_json")
    _write(os.path.join(folder, "config.json"), "[1, 2")
    return _draft(folder)


def draft_weights_truncated(d: str) -> Loaded:
    folder = _draft_copy(d, "draft_weights_truncated")
    _truncate(os.path.join(folder, "model.safetensors"), 1 / 3)
    return _draft(folder)


#: name -> (family, generator); --quick takes QUICK only.
CASES: Dict[str, Tuple[str, Callable[[str], Loaded]]] = {
    f.__name__: (family, f) for family, fs in (
        ("model", (gguf_empty, gguf_truncated, gguf_bad_magic, gguf_head_count_0, gguf_context_length_2147483647,
                   model_path_missing, safetensors_dev_zero, safetensors_fifo, safetensors_header_2_pow_40,
                   safetensors_truncated, config_not_json)),
        ("chat_template", (template_cpu_bomb, template_memory_bomb, template_one_op_bomb)),
        ("lora", (lora_alpha_nan, lora_alpha_1e308, lora_rank_mismatch, lora_tensors_nan, lora_bytes_overwritten,
                  lora_weights_missing)),
        ("draft", (draft_target_layer_99, draft_config_not_json, draft_weights_truncated)),
    ) for f in fs}
QUICK = ("gguf_head_count_0", "lora_alpha_nan", "draft_config_not_json")
