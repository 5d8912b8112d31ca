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
from ..models.spec import ModelConfig, ModelWeights, bounded
from .files import safetensors_header

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
    src = os.path.join(folder, "config.json")

    def get(key: str, field: str, default: Any = None) -> Any:
        if key not in cfg and default is None:
            raise ModelLoadError(f"{src} lacks {key!r}")
        value = cfg.get(key)
        return bounded(default if value is None else value, field, f"{src}: {key}")

    heads = get("num_attention_heads", "num_heads")
    hidden = get("hidden_size", "hidden_size")
    rope_scaling = cfg.get("rope_scaling")
    if rope_scaling is not None and not isinstance(rope_scaling, dict):
        raise ModelLoadError(f"{src}: rope_scaling = {rope_scaling!r} must be an object or null")
    return ModelConfig.checked(
        src,
        architecture="qwen2" if model_type == "qwen2" else "llama",
        num_layers=get("num_hidden_layers", "num_layers"),
        hidden_size=hidden,
        intermediate_size=get("intermediate_size", "intermediate_size"),
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads", "num_kv_heads", heads),
        head_dim=get("head_dim", "head_dim", hidden // heads),
        vocab_size=get("vocab_size", "vocab_size"),
        rope_theta=get("rope_theta", "rope_theta", 10000.0),
        rms_norm_eps=get("rms_norm_eps", "rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        max_position_embeddings=get("max_position_embeddings", "max_position_embeddings", 2048),
        rope_scaling=rope_scaling,
    )


def _buffer_bytes(header: Dict[str, Any]) -> int:
    """Bytes of the data buffer a checked header describes (its tensors cover it exactly)."""
    return max((info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"), default=0)


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Tensors of one file as float32; BF16 is widened by bit shifting."""
    header = safetensors_header(path)   # a regular file whose offsets match its size
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=os.path.getsize(path) - _buffer_bytes(header))
    except Exception as exc:
        raise CorruptModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    out: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
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
