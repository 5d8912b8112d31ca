"""The runtime's exception family.

Every error the runtime raises on purpose derives from :class:`EdgeLLMError`;
vendor exceptions (gguf, onnxruntime, tensorrt, OpenCV) are wrapped at the
boundary so callers, the ROS node included, can map them to an error code
without knowing which library failed.
"""

from __future__ import annotations


class EdgeLLMError(Exception):
    """Base of every error the runtime raises on purpose."""

    #: Stable short name, used by the ROS layer to pick a service error code.
    code = "internal"


class ConfigError(EdgeLLMError, ValueError):
    """A configuration value is out of range or inconsistent."""

    code = "config"


class ModelLoadError(EdgeLLMError):
    """A model, tokenizer or engine file is missing, corrupt or unsupported."""

    code = "model_load"


class CorruptModelError(ModelLoadError):
    """The file is truncated, has a bad header, or a tensor cannot be decoded."""

    code = "corrupt_model"


class UnsupportedModelError(ModelLoadError):
    """The file is readable but describes an architecture we do not run."""

    code = "unsupported_model"


class BackendUnavailable(EdgeLLMError):
    """The requested inference backend cannot be imported or has no device."""

    code = "backend_unavailable"


class InvalidRequest(EdgeLLMError, ValueError):
    """A generation request is malformed (empty prompt, bad sampling value)."""

    code = "invalid_request"


class UnknownAdapter(InvalidRequest):
    """A LoRA adapter name that was not loaded at configure."""

    code = "unknown_adapter"


class ContextFull(InvalidRequest):
    """The prompt does not fit in the KV cache (max_seq_len)."""

    code = "context_full"


class BackendError(EdgeLLMError):
    """The backend failed while running a graph."""

    code = "backend"


class TemplateLimitExceeded(InvalidRequest):
    """The model's chat template passed a bound on time, output size or memory (runtime/chat_template.py)."""

    code = "invalid_request"
