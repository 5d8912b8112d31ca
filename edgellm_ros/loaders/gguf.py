"""Load a Llama-family model from a GGUF file with llama.cpp's ``gguf`` reader.

GGUF stores the Q and K projection rows permuted for llama.cpp's interleaved
rotary embedding (``convert_hf_to_gguf.py`` applies
``w.reshape(n_head, 2, D // 2, H).swapaxes(1, 2)``). We undo that permutation
exactly, so the weights are in the Hugging Face half-split order that the
reference forward and the ONNX graph use.

The file is treated as hostile: a bad magic number, a truncated tensor, a
missing key or an architecture we do not run each raise
:class:`~edgellm_ros.errors.ModelLoadError` naming the file and the value.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ..errors import CorruptModelError, ModelLoadError, UnsupportedModelError
from ..models.quant import BlockQuant, from_gguf
from ..models.spec import ModelConfig, ModelWeights, bounded
from .files import gguf_tensor_extents, regular_size

#: Architectures whose GGUF tensors map onto our Llama graph.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}


def _open(path: str) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ModelLoadError(f"the gguf package is not installed: {exc}") from exc
    size = regular_size(path, "GGUF file")   # never a FIFO or /dev/zero
    if size < 24:
        raise CorruptModelError(f"{path}: not a GGUF file (only {size} bytes)")
    gguf_tensor_extents(path)   # every tensor's data inside the file, checked before reading
    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError...
        raise CorruptModelError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc


def read_metadata(reader: Any) -> Dict[str, Any]:
    """All key/value fields of a GGUF as plain Python values."""
    out: Dict[str, Any] = {}
    for key, fld in reader.fields.items():
        try:
            out[key] = fld.contents()
        except Exception as exc:
            raise CorruptModelError(f"GGUF field {key!r} is corrupt: {exc}") from exc
    return out


def _require(md: Dict[str, Any], key: str, path: str) -> Any:
    if key not in md:
        raise ModelLoadError(f"{path}: GGUF metadata key {key!r} is missing")
    return md[key]


def config_from_metadata(md: Dict[str, Any], path: str) -> ModelConfig:
    """Map GGUF ``{arch}.*`` keys to a ModelConfig, each value checked against FIELD_BOUNDS."""
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    def get(key: str, field: str, default: Any = None) -> Any:
        value = md.get(f"{arch}.{key}", default) if default is not None else _require(md, f"{arch}.{key}", path)
        return bounded(value, field, f"{path}: GGUF metadata {arch}.{key}")

    num_heads = get("attention.head_count", "num_heads")
    hidden = get("embedding_length", "hidden_size")
    vocab = md.get(f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(_require(md, "tokenizer.ggml.tokens", path))
    return ModelConfig.checked(
        f"{path}: GGUF metadata",
        architecture=arch,
        num_layers=get("block_count", "num_layers"),
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length", "intermediate_size"),
        num_heads=num_heads,
        num_kv_heads=get("attention.head_count_kv", "num_kv_heads", num_heads),
        head_dim=get("attention.key_length", "head_dim", hidden // num_heads),
        vocab_size=bounded(vocab, "vocab_size", f"{path}: GGUF metadata {arch}.vocab_size"),
        rope_theta=get("rope.freq_base", "rope_theta", 10000.0),
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", "rms_norm_eps", 1e-5),
        tie_word_embeddings=False,  # decided from the tensors below
        attention_bias=(arch == "qwen2"),
        max_position_embeddings=get("context_length", "max_position_embeddings", 2048),
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-rotary row permutation of a Q or K weight/bias."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    return ""


def load_gguf(path: str) -> ModelWeights:
    """Read config, float32 weights and tokenizer metadata from a GGUF file."""
    from gguf import quants

    reader = _open(path)
    md = read_metadata(reader)
    cfg = config_from_metadata(md, path)
    tensors: Dict[str, np.ndarray] = {}
    blocks: Dict[str, BlockQuant] = {}
    for t in reader.tensors:
        name = _tensor_name(t.name)
        if not name:
            continue  # e.g. rope_freqs: recomputed from the config
        try:
            arr = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as exc:
            raise CorruptModelError(
                f"{path}: tensor {t.name} ({t.tensor_type.name}) cannot be read: {exc}") from exc
        expected = tuple(int(x) for x in reversed(list(t.shape)))
        if arr.size != int(np.prod(expected)):
            raise CorruptModelError(
                f"{path}: tensor {t.name} is truncated ({arr.size} values, expected {expected})")
        arr = arr.reshape(expected)
        quant = from_gguf(np.asarray(t.data), t.tensor_type.name, expected, t.name) \
            if t.tensor_type.name in ("Q4_0", "Q4_1", "Q8_0") and len(expected) == 2 else None
        heads = 0
        if name.endswith(("q_proj.weight", "q_proj.bias")) and cfg.architecture == "llama":
            heads = cfg.num_heads
        elif name.endswith(("k_proj.weight", "k_proj.bias")) and cfg.architecture == "llama":
            heads = cfg.num_kv_heads
        if heads:
            arr = unpermute_qk(arr, heads)
            if quant is not None:
                quant = quant.take_rows(unpermute_qk(np.arange(expected[0]), heads))
        tensors[name] = np.ascontiguousarray(arr)
        if quant is not None:
            blocks[name] = quant
    tied = "lm_head.weight" not in tensors
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "tie_word_embeddings": tied})
    return ModelWeights(config=cfg, tensors=tensors, source=path, tokenizer_source=("gguf", md),
                        quantized=blocks)
