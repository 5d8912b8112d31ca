"""Load a Llama-architecture model from a Hugging Face folder.

The folder holds ``config.json``, one or more ``*.safetensors`` files and the
tokenizer (``tokenizer.json`` + ``tokenizer_config.json``). Llama, SmolLM2,
Llama 3.x (rope_scaling "llama3") and Qwen2/2.5 (q/k/v biases) map onto the
same tensors; weights are upcast to float32.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict

import numpy as np

from ..errors import CorruptModelError, ModelLoadError, UnsupportedModelError
from ..models.spec import ModelConfig, ModelWeights

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
_INT_DTYPES = {"I64": np.int64, "I32": np.int32, "BOOL": np.bool_, "U8": np.uint8}


def config_from_hf(cfg: Dict[str, Any], folder: str) -> ModelConfig:
    """Map a transformers ``config.json`` to a ModelConfig."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{folder}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        return ModelConfig(
            architecture="qwen2" if model_type == "qwen2" else "llama",
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            rope_scaling=cfg.get("rope_scaling"),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{folder}/config.json lacks {exc.args[0]!r}") from exc


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Tensors of one file as float32; BF16 is widened by bit shifting."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100 * 1024 * 1024:
                raise CorruptModelError(f"{path}: bad safetensors header length {n}")
            header = json.loads(f.read(n))
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    except CorruptModelError:
        raise
    except Exception as exc:
        raise CorruptModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    out: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > raw.size:
            raise CorruptModelError(f"{path}: tensor {name} is truncated")
        buf = raw[start:end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            arr = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _NP_DTYPES:
            arr = buf.view(_NP_DTYPES[info["dtype"]]).astype(np.float32)
        elif info["dtype"] in _INT_DTYPES:  # e.g. EAGLE-3 d2t / t2d maps
            arr = np.array(buf.view(_INT_DTYPES[info["dtype"]]))
        else:
            raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = arr.reshape(shape)
    return out


def load_hf_folder(folder: str) -> ModelWeights:
    """Read config.json and every *.safetensors file of ``folder``."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelLoadError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw_cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_path}: cannot be parsed ({exc})") from exc
    if raw_cfg.get("text_config") and raw_cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{folder}: model_type {raw_cfg.get('model_type')!r} is a multimodal model; "
            "load it as a vision model")
    cfg = config_from_hf(raw_cfg, folder)
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors files")
    tensors: Dict[str, np.ndarray] = {}
    for path in files:
        for name, arr in read_safetensors(path).items():
            if name.startswith("model."):
                name = name[len("model."):]
            if name.endswith("rotary_emb.inv_freq"):
                continue
            tensors[name] = np.ascontiguousarray(arr, dtype=np.float32)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "tie_word_embeddings": True})
    return ModelWeights(config=cfg, tensors=tensors, source=folder, tokenizer_source=("hf", folder))
