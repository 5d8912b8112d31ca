"""Write a small SmolVLM (Idefics3) Hugging Face folder with fixed seeds, and test images.

The real architecture at toy sizes: a 2-layer SigLIP (width 32, 64 px tiles of
8 px patches), the pixel-shuffle connector (scale 2: 16 image tokens a tile)
and a 2-layer Llama of width 64. The tokenizer is the default model's
(SmolLM2, 49152 tokens) plus SmolVLM's added tokens at SmolVLM's ids
(``<global-img>`` 49152, ``<row_r_col_c>`` 49153-49188,
``<fake_token_around_image>`` 49189, ``<image>`` 49190, reserved tokens,
``<end_of_utterance>`` 49279), with SmolVLM's chat template. The processor
files are SmolVLM's, scaled down (tiles of 64 px, longest edge 128 px); mean
and std differ per channel so a channel-order mistake cannot hide.

Imports only numpy, safetensors and tokenizers, so ``tools/reference`` can
write the same bytes in a venv with transformers.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np

from ..errors import ConfigError, ModelLoadError
from .tiny_models import tiny_weights

#: SmolVLM-Instruct's chat template (images as {"type": "image"} content parts).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

BASE_VOCAB = 49152
#: SmolVLM's added tokens, in id order from BASE_VOCAB.
ADDED_TOKENS: List[str] = (
    ["<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    + ["<fake_token_around_image>", "<image>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(88)]
    + ["<end_of_utterance>"]
)
IMAGE_TOKEN_ID = BASE_VOCAB + ADDED_TOKENS.index("<image>")          # 49190
VOCAB_SIZE = BASE_VOCAB + len(ADDED_TOKENS)                           # 49280

TINY_VLM_TEXT = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": VOCAB_SIZE, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "head_dim": 16,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "torch_dtype": "float32",
}
TINY_VLM_VISION = {
    "model_type": "idefics3_vision", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_channels": 3, "image_size": 64,
    "patch_size": 8, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
TINY_VLM = {
    "architectures": ["Idefics3ForConditionalGeneration"], "model_type": "idefics3",
    "image_token_id": IMAGE_TOKEN_ID, "scale_factor": 2, "tie_word_embeddings": False,
    "torch_dtype": "float32", "text_config": TINY_VLM_TEXT, "vision_config": TINY_VLM_VISION,
}
TINY_VLM_PREPROCESSOR = {
    "image_processor_type": "Idefics3ImageProcessor", "processor_class": "Idefics3Processor",
    "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": 128},
    "do_image_splitting": True, "max_image_size": {"longest_edge": 64}, "resample": 1,
    "do_rescale": True, "rescale_factor": 1.0 / 255.0, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_pad": True,
}
TINY_VLM_PROCESSOR = {"image_seq_len": 16, "processor_class": "Idefics3Processor"}

#: (seed, height, width) of the test images: one wider than tall, one square.
TEST_IMAGES: List[Tuple[int, int, int]] = [(11, 50, 120), (12, 64, 64)]
#: More (seed, height, width) for the preprocessing comparison: tall, very wide.
PREPROCESS_IMAGES: List[Tuple[int, int, int]] = [(13, 90, 40), (14, 30, 200)]


def tiny_vlm_weights(cfg: Dict, seed: int) -> Dict[str, np.ndarray]:
    """Random weights with transformers' Idefics3 names, float32."""
    t = vision_tensors(cfg, seed)
    for name, arr in tiny_weights(cfg["text_config"], seed).items():
        t[name if name == "lm_head.weight" else "model.text_model." + name[len("model."):]] = arr
    return t


def vision_tensors(cfg: Dict, seed: int) -> Dict[str, np.ndarray]:
    """Random vision tower + connector weights (``model.vision_model.*``, ``model.connector.*``)."""
    rng = np.random.default_rng(seed + 1000)
    vc, tc = cfg["vision_config"], cfg["text_config"]
    E, F, P, C = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"], vc["num_channels"]
    n_pos = (vc["image_size"] // P) ** 2
    s = cfg["scale_factor"]

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    v = "model.vision_model."
    t = {v + "embeddings.patch_embedding.weight": w(E, C, P, P, scale=0.05),
         v + "embeddings.patch_embedding.bias": w(E),
         v + "embeddings.position_embedding.weight": w(n_pos, E, scale=0.5),
         v + "post_layernorm.weight": 1 + w(E), v + "post_layernorm.bias": w(E),
         "model.connector.modality_projection.proj.weight": w(tc["hidden_size"], E * s * s)}
    for i in range(vc["num_hidden_layers"]):
        p = f"{v}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            t[p + norm + ".weight"], t[p + norm + ".bias"] = 1 + w(E), w(E)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{proj}.weight"] = w(E, E, scale=0.15)
            t[p + f"self_attn.{proj}.bias"] = w(E)
        t.update({p + "mlp.fc1.weight": w(F, E, scale=0.15), p + "mlp.fc1.bias": w(F),
                  p + "mlp.fc2.weight": w(E, F, scale=0.15), p + "mlp.fc2.bias": w(E)})
    return t


def write_vlm_tokenizer(folder: str, tokenizer_from: str) -> None:
    """The default model's tokenizer.json plus SmolVLM's added tokens and tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(os.path.join(tokenizer_from, "tokenizer.json"))
    if tok.get_vocab_size(with_added_tokens=True) != BASE_VOCAB:
        raise ConfigError(f"{tokenizer_from}: expected the {BASE_VOCAB}-token SmolLM2 tokenizer, "
                          f"got {tok.get_vocab_size(with_added_tokens=True)} tokens")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS])
    for i, t in enumerate(ADDED_TOKENS):
        if tok.token_to_id(t) != BASE_VOCAB + i:
            raise ConfigError(
                f"added token {t} got id {tok.token_to_id(t)}, expected {BASE_VOCAB + i}")
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "processor_class": "Idefics3Processor",
        "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "add_bos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 8192,
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "chat_template": SMOLVLM_CHAT_TEMPLATE,
    }
    _dump(os.path.join(folder, "tokenizer_config.json"), config)
    _dump(os.path.join(folder, "chat_template.json"), {"chat_template": SMOLVLM_CHAT_TEMPLATE})


def write_tiny_vlm(folder: str, tokenizer_from: str, seed: int = 0) -> str:
    """Write config.json, model.safetensors, tokenizer and processor files; return folder."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    _dump(os.path.join(folder, "config.json"), TINY_VLM)
    _dump(os.path.join(folder, "generation_config.json"),
          {"bos_token_id": 1, "eos_token_id": [2, VOCAB_SIZE - 1], "pad_token_id": 2})
    _dump(os.path.join(folder, "preprocessor_config.json"), TINY_VLM_PREPROCESSOR)
    _dump(os.path.join(folder, "processor_config.json"), TINY_VLM_PROCESSOR)
    save_file(tiny_vlm_weights(TINY_VLM, seed), os.path.join(folder, "model.safetensors"))
    write_vlm_tokenizer(folder, tokenizer_from)
    return folder


def write_tiny_vlm_once(parent: str, tokenizer_from: str) -> str:
    """``parent/tiny_vlm`` written by :func:`write_tiny_vlm` unless a previous call completed it."""
    folder = os.path.join(parent, "tiny_vlm")
    if not os.path.isdir(folder):   # complete when present: it is renamed into place
        tmp = folder + f".tmp{os.getpid()}"
        write_tiny_vlm(tmp, tokenizer_from)
        os.replace(tmp, folder)
    return folder


def unpack_u8(packed: Dict) -> np.ndarray:
    """The uint8 array a reference json keeps as ``{"shape", "png_b64"}`` (decoded by OpenCV)."""
    import base64

    import cv2

    data = np.frombuffer(base64.b64decode(packed["png_b64"]), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ModelLoadError("a packed test image is not a PNG")
    return img.reshape(packed["shape"])


def synthetic_image(seed: int, height: int, width: int) -> np.ndarray:
    """A seeded RGB uint8 [height, width, 3] image: per-channel waves, a solid box, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy, xx = yy / height, xx / width
    img = np.zeros((height, width, 3))
    for c in range(3):
        f1, f2, phase = rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5), rng.uniform(0.0, 2 * np.pi)
        img[..., c] = 127.5 + 100.0 * np.sin(2 * np.pi * (f1 * xx + f2 * yy) + phase)
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    img[y0:y0 + height // 3, x0:x0 + width // 3] = rng.uniform(0, 255, 3)
    img += rng.normal(0.0, 1.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_test_images() -> List[np.ndarray]:
    """The images of TEST_IMAGES."""
    return [synthetic_image(*spec) for spec in TEST_IMAGES]


def _dump(path: str, obj: Dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
