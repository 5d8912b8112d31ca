"""Build serialized TensorRT engines from the exported ONNX graphs.

One code path for the robot and for CI:

* on the robot (Jetson, JetPack 6) ``import tensorrt`` gives full TensorRT 10.x;
* in CI (no GPU) the TensorRT-RTX wheels (``tensorrt-rtx-cu13-bindings``, module
  ``tensorrt_rtx_bindings``) give the same Builder / OnnxParser / BuilderConfig API
  and build engines on the CPU for a named compute capability.

Differences handled here:

* TensorRT-RTX networks are always strongly typed: it has no ``BuilderFlag.FP16``
  / ``BF16``, and the precision of an engine is the precision of the ONNX tensors.
  ``precision`` sets the builder flags where they exist (full TensorRT); on
  TensorRT-RTX a float32 graph builds a float32 engine, and ``info["precision"]``
  says which precision was actually applied.
* TensorRT-RTX needs a target compute capability when no GPU is present
  (``compute_capability``, default SM86 when the builder reports none).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib
import os
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ...errors import BackendUnavailable, ConfigError, ModelLoadError

Shape = Tuple[int, ...]
Profile = Dict[str, Tuple[Shape, Shape, Shape]]

_TRT: Any = None


def _preload_rtx_libs() -> None:
    """Load (dlopen) the TensorRT-RTX shared libraries from their wheel, so LD_LIBRARY_PATH is not needed."""
    try:
        import tensorrt_rtx_libs  # noqa: F401  (its __init__ already tries to load them)
        folder = os.path.dirname(tensorrt_rtx_libs.__file__)
    except ImportError:
        return
    # the builder library first: the ONNX parser links against it
    for lib in sorted(glob.glob(os.path.join(folder, "*.so*")), key=lambda p: "onnxparser" in p):
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


def import_tensorrt(prefer: Sequence[str] = ("tensorrt", "tensorrt_rtx_bindings")) -> Any:
    """The TensorRT Python module: full TensorRT if importable, else TensorRT-RTX.

    Raises BackendUnavailable naming every module tried and why it failed.
    """
    global _TRT
    if _TRT is not None and _TRT.__name__ in prefer:
        return _TRT
    reasons: List[str] = []
    for name in prefer:
        try:
            if name != "tensorrt":
                _preload_rtx_libs()
            mod = importlib.import_module(name)
            for attr in ("Builder", "OnnxParser", "Logger"):
                if not hasattr(mod, attr):
                    raise ImportError(f"module has no {attr}")
        except Exception as e:  # ImportError, OSError from a missing .so, ...
            reasons.append(f"{name}: {type(e).__name__}: {e}")
            continue
        _TRT = mod
        return mod
    raise BackendUnavailable("TensorRT cannot be imported (" + "; ".join(reasons) + ")")


def is_rtx(trt: Any) -> bool:
    return "rtx" in trt.__name__


def trt_version(trt: Any) -> str:
    return f"{trt.__name__} {getattr(trt, '__version__', '?')}"


# ---------------------------------------------------------------- profiles

def _decoder_like(inputs: Iterable[str], kv: Tuple[int, int], hidden: int,
                  max_seq_len: int, max_chunk: int, max_logits: int, max_lora_rank: int,
                  lora_shapes: Mapping[str, Tuple[int, int]] = {}, extra_hidden: Sequence[str] = ()
                  ) -> Profile:
    """min/opt/max for the decoder and draft graphs (batch 1).

    T (new tokens) in [1, max_chunk], P (past) in [0, max_seq_len - 1], P + T <= max_seq_len
    is what the runtime sends; the profile covers the box T <= max_chunk, P <= max_seq_len.
    opt: one decode step (T=1) with a half-full cache; that is the shape that runs most.
    """
    KVH, D = kv
    T, P = max_chunk, max_seq_len
    opt_p = max(1, P // 2)
    prof: Profile = {}
    for name in inputs:
        if name in ("inputs_embeds",) or name in extra_hidden:
            prof[name] = ((1, 1, hidden), (1, 1, hidden), (1, T, hidden))
        elif name == "position_ids":
            prof[name] = ((1, 1), (1, 1), (1, T))
        elif name == "attention_mask":
            prof[name] = ((1, 1, 1, 1), (1, 1, 1, opt_p + 1), (1, 1, T, P + T))
        elif name == "logits_index":
            prof[name] = ((1,), (1,), (max_logits,))
        elif name.startswith(("past_key", "past_value")):
            prof[name] = ((1, 0, KVH, D), (1, opt_p, KVH, D), (1, P, KVH, D))
        elif name.startswith("lora.") and name.rsplit(".", 1)[1] in ("a", "b"):
            module = name.split(".")[2]
            n_in, n_out = lora_shapes[module]
            r = max(1, max_lora_rank)
            if name.endswith(".a"):
                prof[name] = ((n_in, 1), (n_in, r), (n_in, r))
            else:
                prof[name] = ((1, n_out), (r, n_out), (r, n_out))
        else:
            raise ConfigError(f"no profile rule for input {name!r}")
    return prof


def decoder_profiles(graph_io: Mapping[str, Any], model_config: Mapping[str, Any], max_seq_len: int,
                     max_chunk: int, max_lora_rank: int = 0, max_logits: int = 0) -> List[Profile]:
    """Optimization profile of a decoder variant, from its manifest entry and the model config.

    ``graph_io`` is ``manifest["graphs"][name]`` (its "inputs"), ``model_config`` is
    ``manifest["model"]``. ``max_chunk`` must cover both the prefill chunk and 1 + the largest
    EAGLE tree; ``max_logits`` defaults to max_chunk (every row of an EAGLE verify step);
    ``max_lora_rank`` is the largest rank of any loaded adapter (rank-1 zeros = no adapter).
    """
    from ...contract import module_shapes
    from ...models.spec import ModelConfig

    cfg = model_config if isinstance(model_config, ModelConfig) else ModelConfig.from_dict(dict(model_config))
    shapes = module_shapes(cfg)
    return [_decoder_like(graph_io["inputs"], (cfg.num_kv_heads, cfg.head_dim), cfg.hidden_size,
                          max_seq_len, max_chunk, max_logits or max_chunk, max_lora_rank, shapes)]


def draft_profiles(draft_cfg: Any, max_seq_len: int, max_chunk: int, max_logits: int = 0) -> List[Profile]:
    """Profile of draft.onnx (EAGLE-1/3); its own KV cache holds max_seq_len (+ the expanded tree)."""
    inputs = ["inputs_embeds", "hidden_in", "position_ids", "attention_mask", "logits_index",
              "past_key", "past_value"]
    return [_decoder_like(inputs, (draft_cfg.num_kv_heads, draft_cfg.head_dim), draft_cfg.hidden_size,
                          max_seq_len, max_chunk, max_logits or max_chunk, 0, extra_hidden=("hidden_in",))]


def draft_fc_profiles(draft_cfg: Any, max_chunk: int) -> List[Profile]:
    """Profile of draft_fc.onnx (EAGLE-3): features [1, T, F]."""
    F = draft_cfg.feature_size
    return [{"features": ((1, 1, F), (1, 1, F), (1, max_chunk, F))}]


def vision_profiles(vision_config: Any, max_tiles: int) -> List[Profile]:
    """Profile of vision.onnx: pixel_values [N, C, S, S], N in [1, max_tiles]."""
    S = vision_config.image_size
    C = getattr(vision_config, "num_channels", 3)
    return [{"pixel_values": ((1, C, S, S), (1, C, S, S), (max_tiles, C, S, S))}]


# ---------------------------------------------------------------- build

def make_logger(trt: Any, log: Callable[[str], object]) -> Any:
    sev = trt.Logger.Severity if hasattr(trt.Logger, "Severity") else trt.ILogger.Severity

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)
                log(f"TensorRT error: {msg}")
            elif severity == sev.WARNING:
                log(f"TensorRT warning: {msg}")

    return _Logger()


def _make_progress(trt: Any, log: Callable[[str], object]) -> Optional[Any]:
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: Dict[str, int] = {}
            self.last = 0.0

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                log(f"TensorRT build: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last > 5.0:
                self.last = now
                log(f"TensorRT build: {phase_name} {step + 1}/{self.steps.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Progress()


def _parse_errors(parser: Any, onnx_path: str) -> str:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = []
        for attr, label in (("node_name", "node"), ("node_operator", "op"), ("node", "index")):
            try:
                v = getattr(e, attr)()
            except Exception:
                continue
            if v not in ("", None, -1):
                where.append(f"{label} {v}")
        try:
            desc = e.desc()
        except Exception:
            desc = str(e)
        lines.append(f"{', '.join(where) or 'graph'}: {desc}")
    return f"TensorRT cannot parse {onnx_path}: " + "; ".join(lines or ["unknown parser error"])


#: Node-name pieces of the layers that must stay float32 when building fp16/bf16: the RMSNorm
#: x*x and mean overflow fp16 for activations above ~256, and rotary angles position * inv_freq
#: lose whole radians in fp16 beyond position 2048.
FP32_SCOPES = ("layernorm/", "/norm/", "hidden_norm/", "/rotary/", "/Cos", "/Sin")


def keep_fp32_layers(network: Any) -> List[int]:
    """Indices of the network layers named by FP32_SCOPES."""
    return [i for i in range(network.num_layers)
            if any(s in network.get_layer(i).name for s in FP32_SCOPES)]


def write_whole(path: str, data: Union[bytes, memoryview]) -> None:
    """Write ``path`` whole or not at all.

    The data goes into a temporary sibling of its own name, moved into place once
    written; on any failure (a full disk, an exception) the temporary file is removed
    and ``path`` keeps what it had.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_external_data(onnx_path: str) -> None:
    """Name a missing external weights file (TensorRT's parser only names the first initializer)."""
    try:
        import onnx
        model = onnx.load(onnx_path, load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: not a readable ONNX file ({e})") from e
    folder = os.path.dirname(os.path.abspath(onnx_path))
    for t in model.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location" and not os.path.isfile(os.path.join(folder, kv.value)):
                raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: its external weights file "
                                     f"{kv.value} (initializer {t.name}) is not in {folder}")


def build_engine(onnx_path: str, out_path: str, profiles: Union[Profile, Sequence[Profile]],
                 precision: str = "fp16", timing_cache: str = "",
                 log: Callable[[str], object] = print, compute_capability: str = "",
                 workspace_mib: int = 0, trt: Any = None) -> Dict[str, Any]:
    """Parse ``onnx_path`` (external weights next to it), build, write the plan to ``out_path``.

    ``profiles``: one dict per optimization profile, input name -> (min, opt, max) shape;
    a single dict is accepted too. Returns {"trt", "version", "precision", "seconds", "size",
    "path"}. Parse failures raise ModelLoadError naming the file and the failing node; a
    failed build raises ModelLoadError with TensorRT's own error lines.
    """
    if precision not in ("fp16", "bf16", "fp32"):
        raise ConfigError(f"precision must be fp16, bf16 or fp32, not {precision!r}")
    trt = trt or import_tensorrt()
    if isinstance(profiles, Mapping):
        profiles = [dict(profiles)]
    t0 = time.perf_counter()
    logger = make_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # explicit batch is the only mode in 10.x / RTX
    parser = trt.OnnxParser(network, logger)
    if not os.path.isfile(onnx_path):
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: no such file")
    _check_external_data(onnx_path)
    # parse_from_file resolves external data (weights.data) relative to the model's folder
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        raise ModelLoadError(_parse_errors(parser, onnx_path))
    log(f"parsed {os.path.basename(onnx_path)}: {network.num_inputs} inputs, "
        f"{network.num_outputs} outputs, {network.num_layers} layers")

    config = builder.create_builder_config()
    applied = "fp32"
    if precision != "fp32":
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is not None:
            config.set_flag(flag)
            applied = precision
        else:
            applied = "as-graph"   # strongly typed (TensorRT-RTX): the ONNX dtypes decide
            log(f"{trt_version(trt)} is strongly typed: no {precision.upper()} flag, "
                "the engine keeps the graph's dtypes")
    if applied in ("fp16", "bf16"):
        kept = keep_fp32_layers(network)
        for i in kept:
            layer = network.get_layer(i)
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"{applied}: {len(kept)} norm/rotary layers kept in float32")
    if workspace_mib and hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if is_rtx(trt) and hasattr(config, "set_compute_capability"):
        cc = compute_capability or os.environ.get("EDGELLM_TRT_COMPUTE_CAPABILITY", "SM86")
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, cc.upper()), 0)
    progress = _make_progress(trt, log)
    if progress is not None:
        config.progress_monitor = progress

    shapes = {network.get_input(i).name: tuple(network.get_input(i).shape)
              for i in range(network.num_inputs)}
    names = set(shapes)
    for prof in profiles:
        missing = sorted(n for n, s in shapes.items() if n not in prof and any(d < 0 for d in s))
        if missing:
            raise ConfigError(f"{onnx_path}: profile has no shapes for dynamic inputs {missing}")
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in prof.items():
            if name not in names:
                raise ConfigError(f"{onnx_path}: profile names {name!r}, which is not an input")
            p.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
        config.add_optimization_profile(p)

    cache = None
    if timing_cache and is_rtx(trt):
        # TensorRT-RTX picks tactics at run time (its runtime cache); building with no GPU,
        # creating a timing cache fails with a CUDA error, so none is used.
        log(f"{trt_version(trt)}: no timing cache (tactics are chosen at run time)")
    elif timing_cache and hasattr(config, "create_timing_cache"):
        blob = b""
        if os.path.exists(timing_cache):
            with open(timing_cache, "rb") as f:
                blob = f.read()
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=True)

    plan = builder.build_serialized_network(network, config)
    if plan is None or plan.nbytes == 0:
        raise ModelLoadError(f"TensorRT failed to build {onnx_path}: "
                             + ("; ".join(logger.errors[-5:]) or "no engine returned"))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_whole(out_path, memoryview(plan))
    if cache is not None:
        write_whole(timing_cache, memoryview(config.get_timing_cache().serialize()))
    info = {"trt": trt.__name__, "version": getattr(trt, "__version__", "?"), "precision": applied,
            "timing_cache": timing_cache if cache is not None else "",
            "seconds": round(time.perf_counter() - t0, 3), "size": os.path.getsize(out_path),
            "path": out_path}
    log(f"built {out_path} with {trt_version(trt)} in {info['seconds']:.1f} s, {info['size']} bytes")
    return info
