"""The engine: one loaded model ready to answer, owned by the node or the CLI.

``Engine.load`` does all the heavy work once (export when needed, graph load,
KV-cache allocation); ``generate`` runs one request; ``close`` frees it all.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, cast

import numpy as np

from ..backends import open_backend
from ..contract import Backend, DecoderStep, TextTokenizer, read_manifest
from ..errors import ConfigError, ModelLoadError
from ..loaders import resolve_model_source
from ..models.eagle import draft_layers, load_draft, read_config
from ..models.spec import ModelConfig
from .chat import probe_template
from .config import EngineConfig, GenerationRequest, parse_adapter_spec
from .constraints import Constraint, GrammarCompiler
from .engine_dir import EXPORT_FORMAT, ensure_engine, ensure_family, graph_name, source_hash
from .generation import GenerationResult, Generator, TokenEvent
from .lora import LoraRegistry, load_adapter
from .prompt_cache import PromptCache
from .resources import resolve_draft
from .speculative import Drafter, EagleConfig, EagleLimits, SpecStats
from .staging import folder_lock, publish, staging_folder
from .tokenizer import Tokenizer
from .vision import VisionPipeline
from .vocab import VocabReduction, load_vocab_reduction, required_ids, resolve_vocab_path

Log = Callable[[str], object]


def manifest_head(folder: str, mcfg: ModelConfig) -> np.ndarray:
    """The base LM head [V, H] (EAGLE-1 drafts use it): the tied embedding or lm_head.npy."""
    path = os.path.join(folder, "lm_head.npy")
    if os.path.exists(path):
        return np.load(path, mmap_mode="r")
    return np.load(os.path.join(folder, "embeddings.npy"), mmap_mode="r")


def map_resident(table: np.ndarray) -> None:
    """Fault every page of a memory-mapped table into this process now, at configure.

    Otherwise each token seen for the first time maps the page of its embedding row,
    and resident memory creeps up with the variety of prompts (a 1,000-ask soak of new
    prompts: +2-3%) until the whole table is mapped: that is memory the node will hold
    anyway, so it is held from the start, where a memory budget sees it. The pages
    stay file-backed: shared with other processes using the engine, reclaimable.
    """
    if table.ndim == 2 and table.shape[0]:
        per_page = max(1, mmap.PAGESIZE // max(1, table.strides[0]))
        float(np.asarray(table[::per_page, 0], np.float64).sum())   # one read per page


def export_draft_graphs(cfg, weights, draft_dir: str, folder: str, base_head: np.ndarray,
                        quantization: str = "none") -> str:
    """The draft's graph folder in the engine folder, exported once.

    The folder is drafts/draft-<hash>-f<format>[-int8] (quantization: see export_draft).
    """
    from ..export.draft import export_draft

    suffix = "" if quantization == "none" else f"-{quantization}"
    sub = os.path.join(folder, "drafts",
                       f"draft-{source_hash(draft_dir)[:16]}-f{EXPORT_FORMAT}{suffix}")
    if not os.path.exists(os.path.join(sub, "draft.onnx")):
        with folder_lock(sub):
            if not os.path.exists(os.path.join(sub, "draft.onnx")):
                with staging_folder(os.path.dirname(sub), "draft") as tmp:
                    export_draft(cfg, weights, np.asarray(base_head), tmp, quantization)
                    publish(tmp, sub)
    return sub


def draft_quantization(config: EngineConfig, backend: str) -> str:
    """The CPU draft (INT8, fused ops) next to a quantized CPU decoder, float32 otherwise.

    A draft step on a CPU is memory-bound like a base step, so INT8 weights
    make it faster (docs/EAGLE.md has the figures); the draft only proposes
    tokens, so this changes speed and acceptance, never the output. TensorRT
    builds the plain float graph in its own precision.
    """
    return "int8" if backend == "onnxruntime" and config.quantization != "none" else "none"


@dataclass(frozen=True)
class Artifacts:
    """What an engine is made of on disk, resolved before any backend is opened."""

    folder: str                     # the engine folder (exported when missing or stale)
    manifest: Dict[str, Any]
    model_config: ModelConfig
    embeddings: np.ndarray          # [V, H], memory-mapped
    graph: str                      # the decoder variant to run (engine_dir.graph_name)
    plain_graph: str                # the family's plain variant when graph is another one, else ""
    draft_dir: str                  # the EAGLE draft's checkpoint folder, "" = none
    draft: Optional[Tuple[Any, Dict[str, np.ndarray]]]   # (DraftConfig, weights) of it
    has_vision: bool                # vision.json: a vision-language model
    vocab: Optional[VocabReduction] = None   # the ids a reduced LM head keeps, None = all


def read_vocab(path: str, tokenizer: Tokenizer, mcfg: ModelConfig, log: Log = print) -> VocabReduction:
    """The checked vocabulary reduction in ``path``; ConfigError naming the file.

    ``tokenizer`` (the engine folder's) says which ids every kept set must hold.
    """
    need = [i for i in required_ids(tokenizer) if i < mcfg.vocab_size]   # ids the head can give
    vocab = load_vocab_reduction(path, mcfg.vocab_size, need)
    log(f"vocabulary reduction {path}: the LM head keeps {vocab.size} of {mcfg.vocab_size} tokens "
        f"(set {vocab.digest})")
    return vocab


def resolve_artifacts(config: EngineConfig, backend: str, limits: EagleLimits, log: Log = print,
                      tokenizer_of: Optional[Callable[[str], Tokenizer]] = None) -> Artifacts:
    """Export (when missing or stale) and check the files ``config`` asks for on ``backend``.

    tokenizer_of(folder): the engine folder's tokenizer, when a vocabulary reduction needs
    it; Engine.load passes one that keeps what it opened for the engine (opened and closed
    here when None).
    """
    vocab_path = resolve_vocab_path(config.vocab_reduction, config.model)
    draft_dir = resolve_draft(config.eagle_draft, config.model)
    draft_json = os.path.join(draft_dir, "config.json") if draft_dir else ""
    layers = draft_layers(read_config(draft_dir), draft_json) if draft_dir else None
    folder = ensure_engine(config.model, config.engine_dir, log, feature_layers=layers,
                           layers_origin=draft_json)
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
    map_resident(embeddings)
    vocab: Optional[VocabReduction] = None
    if vocab_path:
        tok = (tokenizer_of or Tokenizer.from_hf_folder)(folder)
        try:
            vocab = read_vocab(vocab_path, tok, mcfg, log)
        finally:
            if tokenizer_of is None:
                tok.close()
    digest = vocab.digest if vocab is not None else ""
    draft = load_draft(draft_dir, mcfg) if draft_dir else None
    eagle3 = False
    if draft is not None:
        dcfg = draft[0]
        log(f"EAGLE draft {dcfg.layout} loaded from {draft_dir} (draft vocabulary {dcfg.draft_vocab_size})")
        eagle3 = dcfg.layout == "eagle3"
        if eagle3 and list(manifest.get("feature_layers", [])) != list(dcfg.target_layer_ids):
            raise ModelLoadError(f"{folder}: exported features {manifest.get('feature_layers')} "
                                 f"do not match the draft's {list(dcfg.target_layer_ids)}")
    # the CPU graph uses ONNX Runtime's fused kernels; TensorRT builds the plain-op one. The
    # fused int4 graph keeps Q4_1's offsets in 8-bit blocks: the exact mode (int4_compute
    # float32) runs the plain graph, whose offsets are float32
    fused = config.fused_ops and backend == "onnxruntime" and not (
        config.quantization == "int4" and config.int4_compute == "float32")
    if config.quantization != "none" or fused or vocab is not None:
        manifest = ensure_family(folder, config.quantization, fused, log,
                                 rope_rows=config.max_seq_len + limits.max_expanded,
                                 source=resolve_model_source(config.model), vocab=vocab)
    graph = graph_name(bool(config.lora_adapters), eagle3, config.quantization, fused, digest)
    plain = graph_name(False, False, config.quantization, fused, digest)
    entry = manifest["graphs"][graph]
    if (entry.get("vocab_reduction") or {}).get("sha256", "") != digest:
        raise ModelLoadError(f"{folder}: {graph} was exported with vocabulary reduction "
                             f"{entry.get('vocab_reduction')}, expected set {digest or 'none'}")
    if fused and config.max_seq_len + limits.max_expanded > entry["rope_rows"]:
        raise ConfigError(f"max_seq_len={config.max_seq_len} (+{limits.max_expanded} EAGLE rows) "
                          f"exceeds the {entry['rope_rows']} positions of {graph}'s rotary "
                          "tables; lower it or set fused_ops false")
    log(f"decoder graph {graph} ({config.quantization} weights"
        f"{', ' + config.int4_compute + ' compute' if config.quantization != 'none' else ''}"
        f"{', fused ops' if fused else ''}{f', LM head of {vocab.size} tokens' if vocab else ''})")
    return Artifacts(folder, manifest, mcfg, embeddings, graph,
                     plain if plain != graph and plain in manifest["graphs"] else "", draft_dir, draft,
                     os.path.exists(os.path.join(folder, "vision.json")), vocab)


def load_adapters(config: EngineConfig, mcfg: ModelConfig, log: Log = print) -> LoraRegistry:
    """The LoRA adapters named at configure, loaded and scaled once."""
    adapters = []
    for spec in config.lora_adapters:
        name, path = parse_adapter_spec(spec, config.lora_base_dir)
        adapters.append(load_adapter(name, path, mcfg, config.max_lora_rank))
        log(f"LoRA adapter {name!r} loaded from {path} (rank {adapters[-1].rank}, "
            f"{len(adapters[-1].weights)} modules, {adapters[-1].nbytes / 2**20:.2f} MiB)")
    return LoraRegistry(adapters)


def open_drafter(art: Artifacts, backend: Backend, decoder: DecoderStep, config: EngineConfig,
                 limits: EagleLimits, chunk: int) -> Drafter:
    """Export (once) and open the draft graphs on ``backend``; the draft KV cache is sized here."""
    assert art.draft is not None
    cfg, weights = art.draft
    sub = export_draft_graphs(cfg, weights, art.draft_dir, art.folder, manifest_head(art.folder, art.model_config),
                              draft_quantization(config, backend.name))
    vocab = cfg.draft_vocab_size if cfg.layout == "eagle3" else cfg.vocab_size
    step, fc = backend.open_draft(art.folder, os.path.relpath(sub, art.folder), cfg, vocab,
                                  np.asarray(art.embeddings), config.max_seq_len + limits.max_expanded,
                                  max(chunk, limits.max_top_k), decoder)
    kept = art.vocab.mask(art.model_config.vocab_size) if art.vocab is not None else None
    return Drafter(cfg, weights, step, fc, limits, kept)


class Engine:
    """A model loaded on a backend, with its KV cache and prompt cache."""

    def __init__(self, config: EngineConfig, folder: str, model_config: ModelConfig,
                 tokenizer: TextTokenizer, decoder: DecoderStep, backend: str,
                 adapters: Optional[LoraRegistry] = None, drafter: Optional[Drafter] = None,
                 vision: Optional[VisionPipeline] = None):
        self.config = config
        self.adapters = adapters or LoraRegistry()
        self._adapter = self.adapters.check(config.lora)
        self.folder = folder
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.decoder: Optional[DecoderStep] = decoder
        self.backend = backend
        self.prompt_cache = PromptCache(config.prompt_cache_bytes) \
            if config.prompt_cache_bytes else None
        self.eagle_limits = config.eagle_limits
        self.eagle = EagleConfig()
        self.eagle_totals = SpecStats()
        self.vision = vision            # VisionPipeline of a vision-language model
        self.drafter: Optional[Drafter] = None
        self.attach_drafter(drafter)
        self._grammar: Optional[GrammarCompiler] = None   # built by the first constrained request
        self._grammar_lock = threading.Lock()

    @classmethod
    def load(cls, config: EngineConfig, log: Log = print) -> "Engine":
        """Load an engine: the composition root.

        Choose the backend, resolve the artifacts (export when missing or stale), then open
        the decoder, the draft and the vision encoder on that backend and allocate the KV
        cache. Nothing else chooses a backend.
        """
        t0 = time.perf_counter()
        backend = open_backend(config.backend, config.num_threads, config.int4_compute, log)
        limits = config.eagle_limits
        opened: Dict[str, Tokenizer] = {}      # one tokenizer per load, read once

        def tokenizer_of(folder: str) -> Tokenizer:
            if folder not in opened:
                opened[folder] = Tokenizer.from_hf_folder(folder)
            return opened[folder]

        try:
            art = resolve_artifacts(config, backend.name, limits, log, tokenizer_of)
            tokenizer = tokenizer_of(art.folder)
        except BaseException:
            for tok in opened.values():
                tok.close()
            raise
        mcfg = art.model_config
        try:
            probe_template(tokenizer, art.has_vision, art.folder)
            registry = load_adapters(config, mcfg, log)
        except BaseException:
            tokenizer.close()
            raise
        chunk = min(config.prefill_chunk, config.max_seq_len)
        mods = art.manifest["graphs"][art.graph]["lora_modules"]
        slots = [(i, m) for i in range(mcfg.num_layers) for m in mods]
        # the plain variant runs the steps that need neither an adapter nor EAGLE's features
        try:
            decoder = backend.open_decoder(art.folder, art.graph, mcfg, np.asarray(art.embeddings),
                                           config.max_seq_len, max(chunk, 1 + limits.max_tree), slots,
                                           config.max_lora_rank, art.plain_graph)
        except BaseException:
            tokenizer.close()
            raise
        # from here on, a failure (a hostile draft, a broken vision encoder) frees what was opened
        engine = cls(config, art.folder, mcfg, tokenizer, decoder, backend.name, registry)
        try:
            for ad in registry.adapters.values():
                decoder.add_adapter(ad.name, ad.weights)
            if art.has_vision:   # before the draft: attach_drafter builds the generator with it
                engine.vision = VisionPipeline.from_folder(
                    art.folder, split_images=None if config.split_images else False, backend=backend)
            engine.attach_drafter(open_drafter(art, backend, decoder, config, limits, chunk)
                                  if art.draft is not None else None)
            log(f"engine ready in {time.perf_counter() - t0:.1f} s: {mcfg.num_layers} layers, "
                f"KV cache {decoder.kv.nbytes / 2**20:.1f} MiB for {config.max_seq_len} tokens, "
                f"backend {backend.name}")
            log(f"vision encoder loaded ({engine.vision.backend})" if engine.vision is not None
                else "text-only model: requests with images are refused")
        except BaseException:
            engine.close()
            raise
        return engine

    @property
    def model_label(self) -> str:
        """What ~/status shows as the model."""
        return self.config.model or "(embedded default)"

    def attach_drafter(self, drafter: Optional[Drafter]) -> None:
        """Run the next requests with this EAGLE draft (None: without one).

        With a draft, one-token steps run padded to two rows
        (DecoderStep.set_row_padding), so that greedy EAGLE's verify rows and
        plain decoding's steps compute each token bit for bit alike and
        eagle.enabled never changes a greedy answer (docs/EAGLE.md: the cause
        and the cost).
        """
        assert self.decoder is not None, "the engine is closed"
        self.decoder.set_row_padding(drafter is not None)
        self.drafter = drafter
        self.generator = Generator(self.decoder, self.tokenizer, self.prompt_cache,
                                   drafter=drafter, vision=self.vision)

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

    @property
    def grammar(self) -> GrammarCompiler:
        """The engine's GrammarCompiler (llguidance's view of the tokenizer).

        Built once, on first use, so a configure that never sees a constrained
        request does not pay for it (docs/RUNTIME.md has the cost).
        """
        with self._grammar_lock:
            if self._grammar is None:
                # Engine.load's tokenizer is a Tokenizer (llguidance reads its tokenizer.json)
                self._grammar = GrammarCompiler(cast(Tokenizer, self.tokenizer), self.model_config.vocab_size)
            return self._grammar

    def compile_constraint(self, request: GenerationRequest) -> Optional[Constraint]:
        """The request's constraint (None without json_schema and grammar).

        Raises InvalidRequest with llguidance's message for a malformed one; cheap
        enough that callers may check a request when it arrives.
        """
        if not (request.json_schema or request.grammar):
            return None
        return self.grammar.compile(request.json_schema, request.grammar)

    def generate(self, request: GenerationRequest,
                 on_token: Optional[Callable[[TokenEvent], None]] = None,
                 cancel: Optional[threading.Event] = None) -> GenerationResult:
        """Answer one request (thread-safe; requests run one at a time)."""
        adapter = self._adapter if request.adapter is None else self.adapters.check(request.adapter)
        constraint = self.compile_constraint(request)
        res = self.generator.generate(request, on_token, cancel, adapter=adapter, eagle=self.eagle,
                                      constraint=constraint)
        if res.eagle is not None:
            self.eagle_totals.add(res.eagle)
        return res

    def cache_answer(self) -> bool:
        """Cache the last conversation with its answer for its next turn (when idle).

        See :meth:`Generator.cache_answer`; generate() does it first when nobody did.
        """
        return self.generator.cache_answer()

    def close(self) -> None:
        """Free the KV cache, the session and the prompt cache."""
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        if self.drafter is not None:     # the TensorRT draft's and encoder's device memory
            self.drafter.step.close()
            if self.drafter.fc is not None:
                self.drafter.fc.close()
        if self.vision is not None:
            self.vision.close()
        if self.decoder is not None:
            self.decoder.close()
        close_tokenizer = getattr(self.tokenizer, "close", None)
        if close_tokenizer is not None:   # the chat template's worker process
            close_tokenizer()
        # drop the references to what is left (adapter and draft weights, the draft and vision
        # objects): a closed engine still referenced somewhere (a finished worker, a frame) then
        # holds nothing of size
        self.decoder = None
        self.generator = None  # type: ignore[assignment]
        self.drafter = None
        self.vision = None
        self.adapters = LoraRegistry()


def open_engine(config: EngineConfig, log: Log = print) -> Any:
    """The engine ``config`` asks for: an Engine, or a RemoteEngine for backend "remote".

    Both answer ``generate(request, on_token, cancel)`` and have the adapter and EAGLE
    setters the node uses; the remote one loads no local model (runtime/remote.py).
    """
    if config.backend == "remote":
        from .remote import RemoteEngine
        return RemoteEngine.load(config, log)
    return Engine.load(config, log)
