"""The engine: one loaded model ready to answer, owned by the node or the CLI.

``Engine.load`` does all the heavy work once (export when needed, graph load,
KV-cache allocation); ``generate`` runs one request; ``close`` frees it all.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

import numpy as np

from .config import EngineConfig, GenerationRequest
from .engine_dir import ensure_engine, read_manifest
from .errors import BackendUnavailable, ModelLoadError
from .generation import GenerationResult, Generator, TokenEvent
from .models.spec import ModelConfig
from .prompt_cache import PromptCache

Log = Callable[[str], None]


def select_backend(requested: str, log: Log = print) -> str:
    """Resolve "auto" to a concrete backend and say why."""
    if requested == "onnxruntime":
        return requested
    if requested in ("auto", "tensorrt"):
        reason = "TensorRT backend is not part of this build yet"
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            reason = f"tensorrt cannot be imported ({exc})"
        if requested == "tensorrt":
            raise BackendUnavailable(f"backend 'tensorrt' is unavailable: {reason}")
        log(f"backend auto -> onnxruntime: {reason}")
        return "onnxruntime"
    raise BackendUnavailable(f"unknown backend {requested!r}")


class Engine:
    """A model loaded on a backend, with its KV cache and prompt cache."""

    def __init__(self, config: EngineConfig, folder: str, model_config: ModelConfig,
                 tokenizer, decoder, backend: str):
        self.config = config
        self.folder = folder
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.backend = backend
        self.prompt_cache = PromptCache(config.prompt_cache_bytes) \
            if config.prompt_cache_bytes else None
        self.generator = Generator(decoder, tokenizer, self.prompt_cache)

    @classmethod
    def load(cls, config: EngineConfig, log: Log = print) -> "Engine":
        """Export (when missing or stale) and load the engine; allocate the KV cache."""
        from .backends.onnxruntime import OrtDecoder
        from .tokenizer import Tokenizer

        t0 = time.perf_counter()
        backend = select_backend(config.backend, log)
        folder = ensure_engine(config.model, config.engine_dir, log)
        manifest = read_manifest(folder)
        if manifest is None:
            raise ModelLoadError(f"{folder}: manifest.json is unreadable")
        try:
            mcfg = ModelConfig.from_dict(manifest["model"])
            embeddings = np.load(os.path.join(folder, "embeddings.npy"), mmap_mode="r")
        except (KeyError, TypeError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{folder}: engine files are corrupt ({exc})") from exc
        if embeddings.shape != (mcfg.vocab_size, mcfg.hidden_size):
            raise ModelLoadError(
                f"{folder}: embeddings.npy has shape {embeddings.shape}, "
                f"expected {(mcfg.vocab_size, mcfg.hidden_size)}")
        tokenizer = Tokenizer.from_hf_folder(folder)
        chunk = min(config.prefill_chunk, config.max_seq_len)
        decoder = OrtDecoder(os.path.join(folder, "decoder.onnx"), mcfg, np.asarray(embeddings),
                             config.max_seq_len, chunk, config.num_threads)
        log(f"engine ready in {time.perf_counter() - t0:.1f} s: {mcfg.num_layers} layers, "
            f"KV cache {decoder.kv.nbytes / 2**20:.1f} MiB for {config.max_seq_len} tokens, "
            f"backend {backend}")
        return cls(config, folder, mcfg, tokenizer, decoder, backend)

    def generate(self, request: GenerationRequest,
                 on_token: Optional[Callable[[TokenEvent], None]] = None,
                 cancel: Optional[threading.Event] = None) -> GenerationResult:
        """Answer one request (thread-safe; requests run one at a time)."""
        return self.generator.generate(request, on_token, cancel)

    def close(self) -> None:
        """Free the KV cache, the session and the prompt cache."""
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        if self.decoder is not None:
            self.decoder.close()
        self.decoder = None
        self.generator = None  # type: ignore[assignment]
