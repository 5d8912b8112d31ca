"""Hostile model, adapter and draft files: one function per kind of damage (issue 22).

Each function writes its file or folder under the path it is given and
returns the path to hand to the node (``model``, ``lora_adapters``,
``eagle_draft``). The tests (``test/test_hostile_*.py``) and the reliability
benchmark use them; the names are stable. What the node must do with each:
fail configure (or the request) with an ``edgellm_ros.errors`` exception
naming the file, the field and the value, within seconds, and keep running.

Models are the seeded tiny Llama of :mod:`.tiny_models` (a real Hugging
Face folder); ``tokenizer_from`` is a folder with ``tokenizer.json`` (the
default engine folder, ``ensure_engine("")``).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Iterable, Optional

import numpy as np

from .tiny_models import TINY_LLAMA, write_random_adapter, write_random_draft, write_tiny_model

#: Issue 22's first reproduction: 10**10 loop steps, then the last message.
LOOP_TEMPLATE = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                 "{{ messages[-1]['content'] }}")
#: Issue 22's memory bomb: 100 KB strings, a thousand times (100 MB of output).
MEMORY_BOMB_TEMPLATE = "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}{{ messages[-1]['content'] }}"
#: One operation that asks for 10 GB (no loop: stopped by the memory cap, not the output count).
ONE_OP_BOMB_TEMPLATE = "{% set s = 'x' * 100000 %}{{ (s * 100000)|length }}{{ messages[-1]['content'] }}"
#: Renders normally, loops when the last message says "loop": passes the probe at
#: configure, hangs a request.
LOOP_ON_REQUEST_TEMPLATE = (
    "{% if messages[-1]['content'] == 'loop' %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def template_model(folder: str, tokenizer_from: str, template: str) -> str:
    """A tiny Llama folder whose tokenizer_config.json carries ``template`` as its chat template."""
    write_tiny_model(folder, TINY_LLAMA, tokenizer_from=tokenizer_from)
    path = os.path.join(folder, "tokenizer_config.json")
    config: Dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    config["chat_template"] = template
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder


def engine_with_template(folder: str, engine_dir: str, template: str) -> str:
    """An engine folder that is ``engine_dir`` (its files symlinked) with ``template`` as chat template.

    Pass it as ``engine_dir`` with the model ``engine_dir`` was exported from:
    the real model, no export, the hostile template.
    """
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(engine_dir):
        if name != "tokenizer_config.json":
            os.symlink(os.path.join(os.path.abspath(engine_dir), name), os.path.join(folder, name))
    with open(os.path.join(engine_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["chat_template"] = template
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder


def loop_template_model(folder: str, tokenizer_from: str) -> str:
    """Issue 22, defect 1: a template looping 10**10 times (hung the node forever)."""
    return template_model(folder, tokenizer_from, LOOP_TEMPLATE)


def memory_bomb_template_model(folder: str, tokenizer_from: str) -> str:
    """Issue 22, defects 1 and 6: a template writing 100 MB (an empty MemoryError before)."""
    return template_model(folder, tokenizer_from, MEMORY_BOMB_TEMPLATE)


def dev_zero_model(folder: str) -> str:
    """Issue 22, defect 2: a model folder whose model.safetensors is a symlink to /dev/zero."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(TINY_LLAMA, f)
    os.symlink("/dev/zero", os.path.join(folder, "model.safetensors"))
    return folder


def dev_zero_gguf(path: str) -> str:
    """A ``*.gguf`` path that is a symlink to /dev/zero."""
    os.symlink("/dev/zero", path)
    return path


def fifo_model(folder: str) -> str:
    """A model folder whose model.safetensors is a FIFO (open() would block forever)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(TINY_LLAMA, f)
    os.mkfifo(os.path.join(folder, "model.safetensors"))
    return folder


def truncated_safetensors_model(folder: str, keep: float = 0.5) -> str:
    """A tiny Llama folder whose model.safetensors lost its tail (offsets past the end)."""
    write_tiny_model(folder, TINY_LLAMA)
    path = os.path.join(folder, "model.safetensors")
    os.truncate(path, int(os.path.getsize(path) * keep))
    return folder


def lying_header_model(folder: str, header_len: int = 2**40) -> str:
    """A tiny Llama folder whose safetensors header claims ``header_len`` bytes."""
    write_tiny_model(folder, TINY_LLAMA)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.write(int(header_len).to_bytes(8, "little"))
    return folder


def hf_config_model(folder: str, **overrides: Any) -> str:
    """A tiny Llama folder whose config.json has ``overrides`` (e.g. num_attention_heads=0)."""
    write_tiny_model(folder, TINY_LLAMA)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump({**TINY_LLAMA, **overrides}, f)
    return folder


def huge_context_model(folder: str, tokenizer_from: str = "", context: int = 1 << 24) -> str:
    """Issue 22, defect 5: a tiny Llama declaring ``context`` positions (rope tables must not follow it)."""
    write_tiny_model(folder, {**TINY_LLAMA, "max_position_embeddings": context}, tokenizer_from=tokenizer_from)
    return folder


def gguf_metadata_file(path: str, **overrides: Any) -> str:
    """A small llama GGUF whose metadata ``llama.*`` keys are ``overrides`` on a valid tiny set.

    E.g. ``context_length=2147483647`` (issue 22, defect 5) or ``head_count=0``
    (defect 6). Keys are the part after ``llama.``; values are written as
    uint32 for ints and float32 for floats. It holds one tensor: loading stops
    at the metadata.
    """
    import gguf

    keys: Dict[str, Any] = {"block_count": 1, "embedding_length": 8, "feed_forward_length": 16,
                            "attention.head_count": 2, "attention.head_count_kv": 1, "context_length": 64,
                            "vocab_size": 10, **overrides}
    w = gguf.GGUFWriter(path, "llama")
    for key, value in keys.items():
        if isinstance(value, float):
            w.add_float32(f"llama.{key}", value)
        elif isinstance(value, int) and value < 0:
            w.add_int32(f"llama.{key}", value)
        elif isinstance(value, int):
            w.add_uint32(f"llama.{key}", value) if value < 2**32 else w.add_uint64(f"llama.{key}", value)
        else:
            w.add_string(f"llama.{key}", str(value))
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def truncated_gguf(path: str, source: str, keep_bytes: int = 4 * 2**20) -> str:
    """The first ``keep_bytes`` of the GGUF ``source`` (its tensors' data run past the end)."""
    with open(source, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(keep_bytes))
    return path


# -- LoRA adapters ----------------------------------------------------------------------

def adapter_with_config(folder: str, model_cfg: Any, **config: Any) -> str:
    """A random PEFT adapter (layer 0, q_proj, r=2) whose adapter_config.json gets ``config``.

    E.g. ``lora_alpha=float("nan")``, ``lora_alpha=1e308``, ``r=0`` (issue 22, defect 3).
    """
    write_random_adapter(folder, model_cfg, (0,), ("q_proj",), r=2)
    path = os.path.join(folder, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        conf = json.load(f)
    conf.update(config)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(conf, f)   # NaN and Infinity as Python's json writes (and PEFT reads) them
    return folder


def adapter_with_values(folder: str, model_cfg: Any, value: float = float("nan"), count: int = 1) -> str:
    """A random adapter whose lora_B holds ``count`` entries equal to ``value`` (NaN, inf)."""
    from safetensors.numpy import load_file, save_file

    write_random_adapter(folder, model_cfg, (0,), ("q_proj",), r=2)
    path = os.path.join(folder, "adapter_model.safetensors")
    t = load_file(path)
    key = next(k for k in t if k.endswith("lora_B.weight"))
    t[key].reshape(-1)[:count] = value
    save_file(t, path)
    return folder


def overwritten_adapter(folder: str, source: str, offset: float = 0.5, length: int = 64) -> str:
    """A copy of the adapter folder ``source`` with ``length`` bytes of its weights set to 0xFF.

    0xFFFFFFFF is a float32 NaN: issue 22's "radiology weights with bytes
    overwritten". ``offset`` is where in the data (a fraction of the file).
    """
    shutil.copytree(source, folder)
    path = os.path.join(folder, "adapter_model.safetensors")
    at = int(os.path.getsize(path) * offset) // 4 * 4
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\xff" * length)
    return folder


# -- EAGLE drafts ----------------------------------------------------------------------

def draft_with_config(folder: str, base_cfg: Any, target_layer_ids: Optional[Iterable[int]] = None,
                      **config: Any) -> str:
    """A random EAGLE-3 draft for ``base_cfg`` whose config.json gets ``config``.

    E.g. ``target_layer_ids=[2, 15, 99]`` or ``num_attention_heads=0``
    (issue 22, defect 6). The tensors are written for the valid config.
    """
    write_random_draft(folder, base_cfg, "eagle3", draft_vocab=64)
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        conf = json.load(f)
    if target_layer_ids is not None:
        conf["target_layer_ids"] = list(target_layer_ids)
    conf.update(config)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(conf, f)
    return folder
