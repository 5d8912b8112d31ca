"""Write small Hugging Face checkpoints of the real architectures, seeded.

Used by the tests and by ``tools/reference`` (which runs transformers on the
very same files to produce the expected outputs kept in test/data).
"""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np

TINY_LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 256, "tie_word_embeddings": False, "bos_token_id": 1,
    "eos_token_id": 2, "torch_dtype": "float32",
}
TINY_QWEN2 = {**TINY_LLAMA, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
              "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}
TINY_LLAMA3 = {**TINY_LLAMA, "rope_scaling": {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64}}


def tiny_weights(cfg: Dict, seed: int) -> Dict[str, np.ndarray]:
    """Random weights in Hugging Face names (``model.`` prefix), float32."""
    rng = np.random.default_rng(seed)
    H, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    NH, KVH = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = H // NH

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, H, scale=0.5), "model.norm.weight": 1 + w(H)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({
            p + "input_layernorm.weight": 1 + w(H), p + "post_attention_layernorm.weight": 1 + w(H),
            p + "self_attn.q_proj.weight": w(NH * D, H), p + "self_attn.k_proj.weight": w(KVH * D, H),
            p + "self_attn.v_proj.weight": w(KVH * D, H), p + "self_attn.o_proj.weight": w(H, NH * D),
            p + "mlp.gate_proj.weight": w(F, H), p + "mlp.up_proj.weight": w(F, H),
            p + "mlp.down_proj.weight": w(H, F),
        })
        if cfg["model_type"] == "qwen2":
            t[p + "self_attn.q_proj.bias"] = w(NH * D, scale=0.5)
            t[p + "self_attn.k_proj.bias"] = w(KVH * D, scale=0.5)
            t[p + "self_attn.v_proj.bias"] = w(KVH * D, scale=0.5)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(V, H, scale=0.5)
    return t


def write_tiny_model(folder: str, cfg: Dict, seed: int = 0, tokenizer_from: str = "") -> str:
    """Write config.json + model.safetensors (+ the tokenizer files of another folder)."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    save_file(tiny_weights(cfg, seed), os.path.join(folder, "model.safetensors"))
    if tokenizer_from:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            src = os.path.join(tokenizer_from, name)
            if os.path.exists(src):
                with open(src, "rb") as s, open(os.path.join(folder, name), "wb") as d:
                    d.write(s.read())
    return folder


def write_random_adapter(folder: str, model_cfg, layers, modules, r: int = 4, alpha: float = 8.0,
                         seed: int = 0, scale: float = 0.05, use_rslora: bool = False) -> str:
    """A PEFT LoRA folder with random A and B for the given layers and modules."""
    from safetensors.numpy import save_file

    from ..contract import module_shapes

    rng = np.random.default_rng(seed)
    shapes = module_shapes(model_cfg)
    tensors = {}
    for i in layers:
        for m in modules:
            n_in, n_out = shapes[m]
            group = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{i}.{group}.{m}"
            tensors[key + ".lora_A.weight"] = (rng.standard_normal((r, n_in)) * scale).astype(np.float32)
            tensors[key + ".lora_B.weight"] = (rng.standard_normal((n_out, r)) * scale).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(modules),
                   "use_rslora": use_rslora, "bias": "none"}, f)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    return folder


def write_random_draft(folder: str, base_cfg, layout: str = "eagle3", seed: int = 0,
                       draft_vocab: int = 0, target_layer_ids=None, scale: float = 0.05) -> str:
    """A randomly initialised EAGLE-3 or EAGLE-1 checkpoint for ``base_cfg``."""
    from safetensors.numpy import save_file

    from ..models.eagle import default_target_layers

    rng = np.random.default_rng(seed)
    H, NH, KVH, D = base_cfg.hidden_size, base_cfg.num_heads, base_cfg.num_kv_heads, base_cfg.head_dim
    F, V = base_cfg.intermediate_size, base_cfg.vocab_size

    def w(*shape: int, s: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    cfg = {"architectures": ["LlamaForCausalLMEagle3" if layout == "eagle3" else "EagleModel"],
           "model_type": "llama", "hidden_size": H, "num_attention_heads": NH,
           "num_key_value_heads": KVH, "head_dim": D, "intermediate_size": F,
           "num_hidden_layers": 1, "rms_norm_eps": base_cfg.rms_norm_eps,
           "rope_theta": base_cfg.rope_theta, "vocab_size": V}
    if layout == "eagle3":
        vd = draft_vocab or min(V, 1024)
        layers = list(target_layer_ids or default_target_layers(base_cfg.num_layers))
        base_ids = np.sort(rng.choice(V, vd, replace=False)).astype(np.int64)
        p = "midlayer."
        t = {"fc.weight": w(H, 3 * H), p + "input_layernorm.weight": 1 + w(H),
             p + "hidden_norm.weight": 1 + w(H), "norm.weight": 1 + w(H),
             "lm_head.weight": w(vd, H, s=0.5), "d2t": base_ids - np.arange(vd),
             p + "self_attn.q_proj.weight": w(NH * D, 2 * H),
             p + "self_attn.k_proj.weight": w(KVH * D, 2 * H),
             p + "self_attn.v_proj.weight": w(KVH * D, 2 * H)}
        cfg.update({"draft_vocab_size": vd, "target_hidden_size": H, "target_layer_ids": layers})
    else:
        p = "layers.0."
        t = {"fc.weight": w(H, 2 * H), "fc.bias": w(H),
             p + "self_attn.q_proj.weight": w(NH * D, H),
             p + "self_attn.k_proj.weight": w(KVH * D, H),
             p + "self_attn.v_proj.weight": w(KVH * D, H)}
    t.update({p + "self_attn.o_proj.weight": w(H, NH * D),
              p + "post_attention_layernorm.weight": 1 + w(H),
              p + "mlp.gate_proj.weight": w(F, H), p + "mlp.up_proj.weight": w(F, H),
              p + "mlp.down_proj.weight": w(H, F)})
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    save_file(t, os.path.join(folder, "model.safetensors"))
    return folder
