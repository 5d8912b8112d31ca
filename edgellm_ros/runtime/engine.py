"""The engine: one loaded model ready to answer, owned by the node or the CLI.

``Engine.load`` does all the heavy work once (export when needed, graph load,
KV-cache allocation); ``generate`` runs one request; ``close`` frees it all.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Callable, Optional

import numpy as np

from .config import EngineConfig, GenerationRequest
from .engine_dir import ensure_engine, ensure_family, graph_name
from ..contract import read_manifest
from ..errors import BackendUnavailable, ConfigError, ModelLoadError
from .generation import GenerationResult, Generator, TokenEvent
from ..models.spec import ModelConfig
from .lora import LoraRegistry, load_adapter, parse_adapter_spec
from ..models.eagle import load_draft
from .prompt_cache import PromptCache
from .resources import read_draft_config, resolve_draft
from .speculative import Drafter, EagleConfig, EagleLimits, SpecStats

Log = Callable[[str], None]


def select_backend(requested: str, log: Log = print) -> str:
    """Resolve "auto" to a concrete backend and say why."""
    if requested == "onnxruntime":
        return requested
    if requested in ("auto", "tensorrt"):
        from ..backends.tensorrt.engines import tensorrt_availability
        ok, reason = tensorrt_availability()
        if ok:
            log(f"backend {requested} -> tensorrt: {reason}")
            return "tensorrt"
        if requested == "tensorrt":
            raise BackendUnavailable(f"backend 'tensorrt' is unavailable: {reason}")
        log(f"backend auto -> onnxruntime: {reason}")
        return "onnxruntime"
    raise BackendUnavailable(f"unknown backend {requested!r}")


def manifest_head(folder: str, mcfg: ModelConfig) -> np.ndarray:
    """The base LM head [V, H] (EAGLE-1 drafts use it): the tied embedding or lm_head.npy."""
    path = os.path.join(folder, "lm_head.npy")
    if os.path.exists(path):
        return np.load(path, mmap_mode="r")
    return np.load(os.path.join(folder, "embeddings.npy"), mmap_mode="r")


def export_draft_graphs(cfg, weights, draft_dir: str, folder: str, base_head: np.ndarray,
                        quantization: str = "none") -> str:
    """The draft's graph folder in the engine folder, exported once:
    drafts/draft-<hash>-f<format>[-int8] (quantization: see export_draft)."""
    from .engine_dir import EXPORT_FORMAT, source_hash
    from ..export.draft import export_draft

    suffix = "" if quantization == "none" else f"-{quantization}"
    sub = os.path.join(folder, "drafts",
                       f"draft-{source_hash(draft_dir)[:16]}-f{EXPORT_FORMAT}{suffix}")
    if not os.path.exists(os.path.join(sub, "draft.onnx")):
        tmp = sub + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_draft(cfg, weights, np.asarray(base_head), tmp, quantization)
        os.replace(tmp, sub)
    return sub


def draft_quantization(config: EngineConfig, backend: str) -> str:
    """The CPU draft (INT8, fused ops) next to a quantized CPU decoder, float32 otherwise.

    On a CPU a draft step is memory-bound like a base step (the base step
    has just pushed the draft's weights out of the caches): INT8 reads a
    quarter of the bytes (measured 2.1 -> 1.0 ms per step on 2 cores), and
    the fused ops (GroupQueryAttention, packed matmuls) take another
    ~0.24 ms off (1.0 -> 0.75 ms). The draft only proposes tokens, so this
    changes speed and acceptance, never the output. TensorRT builds the
    plain float graph in its own precision.
    """
    return "int8" if backend == "onnxruntime" and config.quantization != "none" else "none"


def make_drafter(cfg, weights, draft_dir: str, folder: str, embeddings: np.ndarray,
                 base_head: np.ndarray, config: EngineConfig, limits: EagleLimits,
                 chunk: int, backend: str = "onnxruntime", log: Log = print, table=None) -> Drafter:
    """Export (once) and load the draft graphs; the draft KV cache is sized here.

    backend "tensorrt": the draft's engines (built when missing or stale) on the GPU,
    sharing ``table`` (the TensorRT decoder's device embedding table) when given."""
    from ..backends.onnxruntime import OrtDraft, make_session

    sub = export_draft_graphs(cfg, weights, draft_dir, folder, base_head,
                              draft_quantization(config, backend))
    if backend == "tensorrt":
        from ..backends.tensorrt.draft import load_trt_draft
        trt_step, trt_fc = load_trt_draft(folder, os.path.relpath(sub, folder), cfg, embeddings,
                                          config.max_seq_len + limits.max_expanded,
                                          max(chunk, limits.max_top_k), log, table)
        return Drafter(cfg, weights, trt_step, trt_fc, limits)
    vocab = cfg.draft_vocab_size if cfg.layout == "eagle3" else cfg.vocab_size
    step = OrtDraft(os.path.join(sub, "draft.onnx"), cfg, vocab, embeddings,
                    config.max_seq_len + limits.max_expanded, max(chunk, limits.max_top_k),
                    config.num_threads)
    fc: Optional[Callable[[np.ndarray], np.ndarray]] = None
    if cfg.layout == "eagle3":
        fc_sess = make_session(os.path.join(sub, "draft_fc.onnx"), config.num_threads, spin=False)
        fc = lambda feats: fc_sess.run(  # noqa: E731
            None, {"features": np.ascontiguousarray(feats)[None]})[0][0]
    return Drafter(cfg, weights, step, fc, limits)


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
        self.eagle_limits = EagleLimits(config.eagle_max_top_k, config.eagle_max_step,
                                        config.eagle_max_tree)
        self.eagle = EagleConfig()
        self.drafter: Optional[Drafter] = None
        self.eagle_totals = SpecStats()
        self.vision = None  # VisionPipeline of a vision-language model
        self.generator = Generator(decoder, tokenizer, self.prompt_cache,
                                   adapter=lambda: self._adapter, eagle=lambda: self.eagle)

    @classmethod
    def load(cls, config: EngineConfig, log: Log = print) -> "Engine":
        """Export (when missing or stale) and load the engine; allocate the KV cache."""
        from ..backends.onnxruntime import OrtDecoder
        from .tokenizer import Tokenizer

        t0 = time.perf_counter()
        backend = select_backend(config.backend, log)
        limits = EagleLimits(config.eagle_max_top_k, config.eagle_max_step, config.eagle_max_tree)
        draft_dir = resolve_draft(config.eagle_draft, config.model)
        draft_cfg = read_draft_config(draft_dir) if draft_dir else None
        layers = (draft_cfg.get("target_layer_ids") or (draft_cfg.get("eagle_config") or {}).get(
            "eagle_aux_hidden_state_layer_ids")) if draft_cfg else None
        folder = ensure_engine(config.model, config.engine_dir, log,
                               feature_layers=layers if layers else None)
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
        draft = None
        if draft_dir:
            draft = load_draft(draft_dir, mcfg)
            log(f"EAGLE draft {draft[0].layout} loaded from {draft_dir} "
                f"(draft vocabulary {draft[0].draft_vocab_size})")
        eagle3 = draft is not None and draft[0].layout == "eagle3"
        if eagle3 and list(manifest.get("feature_layers", [])) != list(draft[0].target_layer_ids):
            raise ModelLoadError(f"{folder}: exported features {manifest.get('feature_layers')} "
                                 f"do not match the draft's {list(draft[0].target_layer_ids)}")
        # the CPU graph uses ONNX Runtime's fused kernels; TensorRT builds the plain-op one. The
        # fused int4 graph keeps Q4_1's offsets in 8-bit blocks: the exact mode (int4_compute
        # float32) runs the plain graph, whose offsets are float32
        fused = config.fused_ops and backend == "onnxruntime" and not (
            config.quantization == "int4" and config.int4_compute == "float32")
        if config.quantization != "none" or fused:
            manifest = ensure_family(folder, config.quantization, fused, log)
        graph = graph_name(bool(adapters), eagle3, config.quantization, fused)
        entry = manifest["graphs"][graph]
        if fused and config.max_seq_len + limits.max_expanded > entry["rope_rows"]:
            raise ConfigError(f"max_seq_len={config.max_seq_len} (+{limits.max_expanded} EAGLE rows) "
                              f"exceeds the {entry['rope_rows']} positions of {graph}'s rotary "
                              "tables; lower it or set fused_ops false")
        mods = entry["lora_modules"]
        slots = [(i, m) for i in range(mcfg.num_layers) for m in mods]
        if backend == "tensorrt":
            from ..backends.tensorrt.decoder import TrtDecoder
            decoder = TrtDecoder.from_engine_folder(folder, graph, mcfg, np.asarray(embeddings), config.max_seq_len,
                                                    max(chunk, 1 + limits.max_tree), config.max_lora_rank,
                                                    slots, log)
        else:
            decoder = OrtDecoder(os.path.join(folder, graph + ".onnx"), mcfg, np.asarray(embeddings),
                                 config.max_seq_len, max(chunk, 1 + limits.max_tree),
                                 config.num_threads, lora_slots=slots, int4_compute=config.int4_compute)
        log(f"decoder graph {graph} ({config.quantization} weights"
            f"{', ' + config.int4_compute + ' compute' if config.quantization != 'none' else ''}"
            f"{', fused ops' if fused else ''})")
        for ad in adapters:
            decoder.add_adapter(ad.name, ad.weights)
        drafter = None
        if draft is not None:
            drafter = make_drafter(draft[0], draft[1], draft_dir, folder, np.asarray(embeddings),
                                   manifest_head(folder, mcfg), config, limits, chunk, backend, log,
                                   getattr(decoder, "embedding_table", None))
        log(f"engine ready in {time.perf_counter() - t0:.1f} s: {mcfg.num_layers} layers, "
            f"KV cache {decoder.kv.nbytes / 2**20:.1f} MiB for {config.max_seq_len} tokens, "
            f"backend {backend}")
        engine = cls(config, folder, mcfg, tokenizer, decoder, backend, registry)
        if os.path.exists(os.path.join(folder, "vision.json")):
            from .vision import VisionPipeline
            engine.vision = VisionPipeline.from_folder(
                folder, config.num_threads, split_images=None if config.split_images else False,
                backend=backend, log=log)
            log(f"vision encoder loaded ({engine.vision.backend})")
        else:
            log("text-only model: requests with images are refused")
        engine.attach_drafter(drafter)
        return engine

    def attach_drafter(self, drafter: Optional[Drafter]) -> None:
        self.drafter = drafter
        self.generator = Generator(self.decoder, self.tokenizer, self.prompt_cache,
                                   adapter=lambda: self._adapter, drafter=drafter,
                                   eagle=lambda: self.eagle, vision=self.vision)

    def set_eagle(self, eagle: EagleConfig) -> None:
        """EAGLE settings of the next requests; ConfigError when outside the configured tree."""
        eagle.check(self.eagle_limits)
        if eagle.enabled and self.drafter is None:
            raise ConfigError("eagle.enabled needs an EAGLE draft (eagle_draft), none is loaded")
        self.eagle = eagle

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
        res = self.generator.generate(request, on_token, cancel)
        if res.eagle is not None:
            self.eagle_totals.add(res.eagle)
        return res

    def close(self) -> None:
        """Free the KV cache, the session and the prompt cache."""
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        if self.drafter is not None:     # the TensorRT draft's and encoder's device memory
            self.drafter.step.close()
            getattr(self.drafter.fc, "close", lambda: None)()
        if self.vision is not None and getattr(self.vision, "encoder", None) is not None:
            self.vision.encoder.close()
        if self.decoder is not None:
            self.decoder.close()
        self.decoder = None
        self.generator = None  # type: ignore[assignment]
