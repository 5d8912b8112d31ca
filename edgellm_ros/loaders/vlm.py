"""Load a SmolVLM / Idefics3 Hugging Face folder: text decoder, vision tower, image processor.

The folder holds ``config.json`` (``model_type`` "idefics3", or "smolvlm" for
SmolVLM2, with ``text_config`` and ``vision_config``), ``*.safetensors`` with
transformers' names (``model.text_model.*``, ``model.vision_model.*``,
``model.connector.*``, ``lm_head.weight``), the tokenizer, and the processor
files: ``preprocessor_config.json`` (sizes, mean/std, splitting; transformers 5
may nest it under ``processor_config.json["image_processor"]``) and
``processor_config.json`` (``image_seq_len``).

:func:`load_vlm` returns the text model as an ordinary :class:`ModelWeights`
(our names, so the decoder export and the NumPy reference take it unchanged),
the vision tower as :class:`VisionWeights`, and an :class:`ImageProcessorConfig`.
An engine folder keeps the last two in ``vision.json``
(:func:`save_vision_json` / :func:`read_vision_json`).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import ModelLoadError, UnsupportedModelError
from ..models.siglip import CONNECTOR_WEIGHT, VISION_PREFIX, VisionConfig, VisionWeights
from ..models.spec import FromDict, ModelConfig, ModelWeights
from .jsonfile import read_json_object
from .hf import read_safetensors, config_from_hf

VLM_MODEL_TYPES = ("idefics3", "smolvlm")
VISION_JSON = "vision.json"
#: PIL resampling codes as preprocessor_config.json writes them.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ImageProcessorConfig(FromDict):
    """What the Idefics3 image processor and processor do to an image and the prompt."""

    # Tile side in pixels (max_image_size.longest_edge); equals the encoder's image_size.
    tile_size: int
    # Image tokens per tile (processor image_seq_len).
    image_seq_len: int
    # First resize: the longest edge becomes this (size.longest_edge); 0 = no resize.
    longest_edge: int
    # Split into tiles of tile_size plus a global image (else one squashed tile).
    do_image_splitting: bool = True
    # PIL resampling code of the model (1 = LANCZOS); OpenCV approximates it.
    resample: int = 1
    # Multiply uint8 values by rescale_factor (when do_rescale).
    do_rescale: bool = True
    rescale_factor: float = 1.0 / 255.0
    # Then (x - mean) / std per RGB channel (when do_normalize).
    do_normalize: bool = True
    image_mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    # The prompt placeholder, repeated image_seq_len times per tile; its token id.
    image_token: str = "<image>"
    image_token_id: int = -1
    # Tokens around each tile and before the global image.
    fake_image_token: str = "<fake_token_around_image>"
    global_image_token: str = "<global-img>"

    def __post_init__(self) -> None:
        for name in ("tile_size", "image_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelLoadError(
                    f"image processor {name} must be a positive integer, got {value!r}")
        if isinstance(self.longest_edge, bool) or not isinstance(self.longest_edge, int) \
                or self.longest_edge < 0:
            raise ModelLoadError(
                f"image processor longest_edge must be >= 0, got {self.longest_edge!r}")
        if self.resample not in RESAMPLE_NAMES:
            raise ModelLoadError(
                f"image processor resample {self.resample!r} is not a PIL filter code")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            try:  # a JSON list becomes a tuple of floats
                object.__setattr__(self, name, tuple(float(x) for x in value))
            except (TypeError, ValueError) as exc:
                raise ModelLoadError(f"image processor {name} must be 3 numbers, got {value!r}") from exc
            if len(value) != 3:
                raise ModelLoadError(f"image processor {name} must have 3 values, got {value!r}")
        if any(float(s) == 0.0 for s in self.image_std):
            raise ModelLoadError(f"image processor image_std has a zero: {self.image_std!r}")
        if not isinstance(self.image_token_id, int) or self.image_token_id < 0:
            raise ModelLoadError(f"image_token_id must be a token id, got {self.image_token_id!r}")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d


_read_json = read_json_object


def is_vlm_folder(path: str) -> bool:
    """True for a Hugging Face folder whose config.json describes a SmolVLM / Idefics3 model."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return False
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") in VLM_MODEL_TYPES


def vision_config_from_hf(cfg: Mapping[str, Any], folder: str) -> VisionConfig:
    """The VisionConfig of an Idefics3 / SmolVLM ``config.json``."""
    vc, tc = cfg.get("vision_config"), cfg.get("text_config")
    if not isinstance(vc, dict) or not isinstance(tc, dict):
        raise ModelLoadError(f"{folder}/config.json lacks vision_config or text_config")
    try:
        return VisionConfig(
            hidden_size=int(vc.get("hidden_size", 1152)),
            intermediate_size=int(vc.get("intermediate_size", 3072)),
            num_layers=int(vc.get("num_hidden_layers", 12)),
            num_heads=int(vc.get("num_attention_heads", 16)),
            image_size=int(vc.get("image_size", 224)),
            patch_size=int(vc.get("patch_size", 32)),
            scale_factor=int(cfg.get("scale_factor", 2)),
            text_hidden_size=int(tc["hidden_size"]),
            num_channels=int(vc.get("num_channels", 3)),
            layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
            hidden_act=str(vc.get("hidden_act", "gelu_pytorch_tanh")),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{folder}/config.json text_config lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{folder}/config.json has a malformed vision setting ({exc})") from exc


def _added_token_ids(folder: str) -> Dict[str, int]:
    """The tokenizer's added tokens (tokenizer.json), content -> id."""
    tok = _read_json(os.path.join(folder, "tokenizer.json"))
    added = tok.get("added_tokens")
    if not isinstance(added, list):
        raise ModelLoadError(f"{folder}/tokenizer.json has no added_tokens list")
    return {t["content"]: int(t["id"]) for t in added if isinstance(t, dict) and "content" in t}


def processor_config_from_hf(folder: str, cfg: Mapping[str, Any],
                             vcfg: VisionConfig) -> ImageProcessorConfig:
    """Read preprocessor_config.json / processor_config.json and check them against the model."""
    proc = _read_json(os.path.join(folder, "processor_config.json"), required=False)
    pre = _read_json(os.path.join(folder, "preprocessor_config.json"), required=False)
    if not pre and isinstance(proc.get("image_processor"), dict):
        pre = proc["image_processor"]
    if not pre:
        raise ModelLoadError(
            f"{folder}: no preprocessor_config.json (the image processor settings)")
    try:
        tile = int((pre.get("max_image_size") or {}).get("longest_edge", vcfg.image_size))
        size = pre.get("size") or {}
        longest = int(size.get("longest_edge", 4 * tile)) if pre.get("do_resize", True) else 0
        seq_len = int(proc.get("image_seq_len", vcfg.image_seq_len))
        image_token_id = int(cfg.get("image_token_id", -1))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{folder}: malformed image processor settings ({exc})") from exc
    if "longest_edge" not in size and pre.get("do_resize", True) and size:
        raise UnsupportedModelError(f"{folder}: image processor size {size!r} has no longest_edge")
    if tile != vcfg.image_size:
        raise UnsupportedModelError(
            f"{folder}: tiles of {tile} px (max_image_size) differ from the encoder's image_size "
            f"{vcfg.image_size}; only equal sizes are supported")
    if seq_len != vcfg.image_seq_len:
        raise ModelLoadError(
            f"{folder}: image_seq_len {seq_len} does not match the encoder "
            f"({vcfg.patches_per_side}^2 patches / scale_factor^2 = {vcfg.image_seq_len})")
    pc = ImageProcessorConfig(
        tile_size=tile, image_seq_len=seq_len, longest_edge=longest,
        do_image_splitting=bool(pre.get("do_image_splitting", True)),
        resample=int(pre.get("resample", 1)),
        do_rescale=bool(pre.get("do_rescale", True)),
        rescale_factor=float(pre.get("rescale_factor", 1.0 / 255.0)),
        do_normalize=bool(pre.get("do_normalize", True)),
        image_mean=_three(pre.get("image_mean", 0.5), "image_mean", folder),
        image_std=_three(pre.get("image_std", 0.5), "image_std", folder),
        image_token_id=image_token_id,
    )
    ids = _added_token_ids(folder)
    for token in (pc.image_token, pc.fake_image_token, pc.global_image_token, "<row_1_col_1>"):
        if token not in ids:
            raise ModelLoadError(f"{folder}/tokenizer.json lacks the image token {token!r}")
    if ids[pc.image_token] != image_token_id:
        raise ModelLoadError(f"{folder}: config.json image_token_id {image_token_id} but the "
                             f"tokenizer maps {pc.image_token} to {ids[pc.image_token]}")
    return pc


def _three(value: Any, name: str, folder: str) -> Tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return float(value[0]), float(value[1]), float(value[2])
    raise ModelLoadError(f"{folder}: {name} must be a number or 3 numbers, got {value!r}")


def _read_vlm_config(folder: str) -> Dict[str, Any]:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ModelLoadError(f"{folder!r} is not a folder")
    cfg = _read_json(os.path.join(folder, "config.json"))
    model_type = cfg.get("model_type")
    if model_type not in VLM_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{folder}: model_type {model_type!r} is not a vision-language model we run "
            f"(supported: {', '.join(VLM_MODEL_TYPES)})")
    return cfg


def _safetensors_files(folder: str) -> list:
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors files")
    return files


def _is_vision_tensor(name: str) -> bool:
    return name.startswith("model." + VISION_PREFIX) or name == "model." + CONNECTOR_WEIGHT


def load_vision(folder: str) -> Tuple[VisionWeights, ImageProcessorConfig]:
    """Only the vision tower and the image processor settings of a SmolVLM / Idefics3 folder."""
    cfg = _read_vlm_config(folder)
    vcfg = vision_config_from_hf(cfg, folder)
    proc = processor_config_from_hf(folder, cfg, vcfg)       # cheap checks before the weights
    vision: Dict[str, np.ndarray] = {}
    for path in _safetensors_files(folder):
        for name, arr in read_safetensors(path).items():
            if _is_vision_tensor(name):
                vision[name[len("model."):]] = np.ascontiguousarray(arr, dtype=np.float32)
    vweights = VisionWeights(config=vcfg, tensors=vision, source=folder,
                             meta={"model_type": cfg["model_type"]})
    vweights.check()
    return vweights, proc


def load_vlm(folder: str) -> Tuple[ModelWeights, VisionWeights, ImageProcessorConfig]:
    """Read a SmolVLM / Idefics3 folder: (text model, vision tower, image processor settings)."""
    folder = os.fspath(folder)
    cfg = _read_vlm_config(folder)
    vcfg = vision_config_from_hf(cfg, folder)
    tc = dict(cfg["text_config"])
    tc.setdefault("model_type", "llama")
    tc.setdefault("rms_norm_eps", 1e-5)           # Idefics3Config's default for its Llama
    tcfg = config_from_hf(tc, folder)
    proc = processor_config_from_hf(folder, cfg, vcfg)       # cheap checks before the weights
    if not 0 <= proc.image_token_id < tcfg.vocab_size:
        raise ModelLoadError(f"{folder}: image_token_id {proc.image_token_id} is outside the "
                             f"vocabulary ({tcfg.vocab_size})")
    text: Dict[str, np.ndarray] = {}
    vision: Dict[str, np.ndarray] = {}
    for path in _safetensors_files(folder):
        for name, arr in read_safetensors(path).items():
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            if name.startswith("model.text_model."):
                if not name.endswith("rotary_emb.inv_freq"):
                    text[name[len("model.text_model."):]] = arr
            elif name == "lm_head.weight":
                text[name] = arr
            elif _is_vision_tensor(name):
                vision[name[len("model."):]] = arr
    # transformers ties the LM head by the top-level flag (text_config's is not read)
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in text
    if tied:
        text.pop("lm_head.weight", None)
    tcfg = ModelConfig.from_dict({**tcfg.to_dict(), "tie_word_embeddings": tied})
    weights = ModelWeights(config=tcfg, tensors=text, source=folder,
                           tokenizer_source=("hf", folder))
    weights.check()
    vweights = VisionWeights(config=vcfg, tensors=vision, source=folder,
                             meta={"model_type": cfg["model_type"]})
    vweights.check()
    return weights, vweights, proc


def save_vision_json(folder: str, vcfg: VisionConfig, proc: ImageProcessorConfig) -> str:
    """Write ``vision.json`` (vision config + processor settings) into an engine folder."""
    path = os.path.join(folder, VISION_JSON)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"vision": vcfg.to_dict(), "processor": proc.to_dict()}, f, indent=1)
    return path


def read_vision_json(folder: str) -> Optional[Tuple[VisionConfig, ImageProcessorConfig]]:
    """The configs kept in an engine folder's ``vision.json``; None when it has none."""
    path = os.path.join(folder, VISION_JSON)
    if not os.path.isfile(path):
        return None
    d = _read_json(path)
    try:
        return VisionConfig.from_dict(d["vision"]), ImageProcessorConfig.from_dict(d["processor"])
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: malformed ({exc})") from exc
