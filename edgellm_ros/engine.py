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
from .engine_dir import ensure_engine, graph_name, read_manifest
from .errors import BackendUnavailable, ModelLoadError
from .generation import GenerationResult, Generator, TokenEvent
from .models.spec import ModelConfig
from .lora import LoraRegistry, load_adapter, parse_adapter_spec
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
                 tokenizer, decoder, backend: str, adapters: Optional[LoraRegistry] = None):
        self.config = config
        self.adapters = adapters or LoraRegistry()
        self._adapter = self.adapters.check(config.lora)
        self.folder = folder
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.backend = backend
        self.prompt_cache = PromptCache(config.prompt_cache_bytes) \
            if config.prompt_cache_bytes else None
        self.generator = Generator(decoder, tokenizer, self.prompt_cache,
                                   adapter=lambda: self._adapter)

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
        adapters = []
        for spec in config.lora_adapters:
            name, path = parse_adapter_spec(spec, config.lora_base_dir)
            adapters.append(load_adapter(name, path, mcfg, config.max_lora_rank))
            log(f"LoRA adapter {name!r} loaded from {path} (rank {adapters[-1].rank}, "
                f"{len(adapters[-1].weights)} modules, {adapters[-1].nbytes / 2**20:.2f} MiB)")
        registry = LoraRegistry(adapters)
        registry.check(config.lora)
        graph = graph_name(lora=bool(adapters), eagle3=False)
        mods = manifest["graphs"][graph]["lora_modules"]
        slots = [(i, m) for i in range(mcfg.num_layers) for m in mods]
        decoder = OrtDecoder(os.path.join(folder, graph + ".onnx"), mcfg, np.asarray(embeddings),
                             config.max_seq_len, chunk, config.num_threads, lora_slots=slots)
        for ad in adapters:
            decoder.add_adapter(ad.name, ad.weights)
        log(f"engine ready in {time.perf_counter() - t0:.1f} s: {mcfg.num_layers} layers, "
            f"KV cache {decoder.kv.nbytes / 2**20:.1f} MiB for {config.max_seq_len} tokens, "
            f"backend {backend}")
        return cls(config, folder, mcfg, tokenizer, decoder, backend, registry)

    @property
    def adapter(self) -> str:
        """The LoRA adapter the next request uses ("" = the base model)."""
        return self._adapter

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the adapter of the next requests (a running one keeps its own).

        Raises UnknownAdapter (with the list of loaded adapters) for a name
        that was not loaded at configure. Costs a name check and an
        assignment: the tensors are bound by address when the request starts.
        """
        self._adapter = self.adapters.check(name)

    def generate(self, request: GenerationRequest,
                 on_token: Optional[Callable[[TokenEvent], None]] = None,
                 cancel: Optional[threading.Event] = None) -> GenerationResult:
        """Answer one request (thread-safe; requests run one at a time)."""
        if request.adapter is not None:
            self.adapters.check(request.adapter)
        return self.generator.generate(request, on_token, cancel)

    def close(self) -> None:
        """Free the KV cache, the session and the prompt cache."""
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        if self.decoder is not None:
            self.decoder.close()
        self.decoder = None
        self.generator = None  # type: ignore[assignment]
