"""Stand-ins for a TensorRT engine, to test TrtDecoder on a GPU without TensorRT.

TensorRT itself cannot run on any machine we have (ENVIRONMENT.md). These two
classes offer the part of the ICudaEngine / IExecutionContext API that TrtDecoder
uses (tensor names, modes, dtypes and shapes; set_input_shape,
set_tensor_address, execute_async_v3), so everything around the engine call —
device KV cache, address binding, kernels, CUDA graphs, LoRA switching — runs
for real with cuda-python:

* ``OrtEngine``: the real decoder graph run by ONNX Runtime on the CPU. Its
  execute_async_v3 synchronizes the stream, reads every input from the device
  addresses it was given, runs, and writes every output to its address. Exact
  numbers, so TrtDecoder's outputs can be compared with OrtDecoder's; it cannot
  be captured in a CUDA graph (a host synchronization), which exercises the
  fallback path.
* ``ToyEngine``: a made-up model computed by two CUDA kernels on the stream, so it
  can be captured and replayed; ``toy_logits_reference`` is its NumPy twin.
  present_key.l[t] = embeds[t][:W] * (l + 1) + position[t];
  present_value.l[t] = -embeds[t][:W]; hidden = embeds;
  logits[i][v] = sum of key.0 rows j with mask[lidx[i], j] == 0, column v % W
  (+ lora.0.q_proj.a[0, 0] when the graph has LoRA inputs); W = KVH * D <= H.

``stand_in_tensorrt`` makes ``Engine.load(backend="tensorrt")`` run on a GPU without
TensorRT: the plans asked of tensorrt_engines become OrtEngines over the same graphs, each
checking the shapes it is given against the profiles the build would have used (a shape
outside them is refused, as TensorRT refuses it).
"""

from __future__ import annotations

import enum
import os
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgellm_ros.backends.tensorrt.cuda_rt import check, import_cuda


class TensorIOMode(enum.Enum):
    INPUT = 0
    OUTPUT = 1


#: What TrtDecoder reads from the ``tensorrt`` module, for the fakes.
FAKE_TRT = types.SimpleNamespace(__name__="fake_tensorrt", __version__="0", TensorIOMode=TensorIOMode,
                                 nptype=lambda dt: np.dtype(dt))

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}


class _Engine:
    """Tensor table: name -> (is input, dtype, shape with -1 for dynamic dims)."""

    io: Dict[str, Tuple[bool, np.dtype, Tuple[int, ...]]]
    #: input -> (min, opt, max) of the build's optimization profile; None accepts any shape
    profile: Optional[Dict[str, Any]] = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if self.io[name][0] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return self.io[name][1]

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return self.io[name][2]


class _Context:
    def __init__(self, engine: _Engine):
        self.engine = engine
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.addrs: Dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        if name not in self.engine.io or not self.engine.io[name][0]:
            return False
        shape = tuple(int(d) for d in shape)
        prof = self.engine.profile
        if prof is not None:
            lo, _, hi = prof.get(name, (self.engine.io[name][2],) * 3)
            if len(shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi)):
                self.engine.refused.append((name, shape))
                return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.io:
            return False
        self.addrs[name] = int(ptr)
        return True

    def _read(self, name: str) -> np.ndarray:
        cu = import_cuda()[0]
        out = np.empty(self.shapes[name], self.engine.io[name][1])
        if out.nbytes:
            check(cu.cuMemcpyDtoH(out.ctypes.data, self.addrs[name], out.nbytes), f"read {name}")
        return out


class OrtEngine(_Engine):
    """A decoder ONNX graph run by ONNX Runtime behind TensorRT's engine API (not capturable)."""

    def __init__(self, onnx_path: str, profile: Optional[Dict[str, Any]] = None):
        from edgellm_ros.backends.onnxruntime import make_session
        self.session = make_session(onnx_path)
        self.profile = profile
        self.refused: List[Tuple[str, Tuple[int, ...]]] = []
        self.io = {}
        for is_input, items in ((True, self.session.get_inputs()), (False, self.session.get_outputs())):
            for it in items:
                shape = tuple(d if isinstance(d, int) else -1 for d in it.shape)
                self.io[it.name] = (is_input, np.dtype(_ORT_TYPES[it.type]), shape)

    def create_execution_context(self, *args: Any) -> "OrtContext":
        return OrtContext(self)


class OrtContext(_Context):
    engine: OrtEngine

    def execute_async_v3(self, stream_handle: int) -> bool:
        cu = import_cuda()[0]
        check(cu.cuStreamSynchronize(stream_handle), "cuStreamSynchronize (OrtEngine)")
        feeds = {n: self._read(n) for n, (inp, _, _) in self.engine.io.items() if inp}
        names = [n for n, (inp, _, _) in self.engine.io.items() if not inp]
        for name, value in zip(names, self.engine.session.run(names, feeds)):
            value = np.ascontiguousarray(value, self.engine.io[name][1])
            if value.nbytes:
                check(cu.cuMemcpyHtoD(self.addrs[name], value.ctypes.data, value.nbytes), f"write {name}")
        self.executions += 1
        return True


TOY_SOURCE = r"""
extern "C" __global__ void toy_present(const float* emb, const long long* pos, float* pk, float* pv,
                                       float* hidden, int h, int w, float scale, int write_hidden) {
    const int r = blockIdx.x;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float e = emb[r * h + c];
        if (c < w) { pk[r * w + c] = e * scale + (float)pos[r]; pv[r * w + c] = -e; }
        if (write_hidden) hidden[r * h + c] = e;
    }
}
extern "C" __global__ void toy_logits(const float* past_k0, const float* present_k0, const float* mask,
                                      const long long* lidx, const float* lora, float* logits,
                                      int p, int t, int w, int v) {
    const int i = blockIdx.x;
    const long long row = lidx[i];
    const int s = p + t;
    for (int col = threadIdx.x; col < v; col += blockDim.x) {
        float acc = lora ? lora[0] : 0.0f;
        for (int j = 0; j < s; ++j)
            if (mask[row * s + j] == 0.0f)
                acc += j < p ? past_k0[j * w + col % w] : present_k0[(j - p) * w + col % w];
        logits[i * v + col] = acc;
    }
}
"""


class ToyEngine(_Engine):
    """The toy model of the module docstring, as CUDA kernels behind TensorRT's engine API."""

    def __init__(self, config: Any, lora_modules: Sequence[str] = ()):
        from edgellm_ros.backends.tensorrt.cuda_kernels import compile_kernels
        from edgellm_ros.backends.tensorrt.cuda_rt import Device
        from edgellm_ros.contract import module_shapes
        c = self.config = config
        H, W, V = c.hidden_size, c.num_kv_heads * c.head_dim, c.vocab_size
        if W > H:
            raise ValueError(f"the toy needs KVH * D <= H, got {W} > {H}")
        f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
        kv = (1, -1, c.num_kv_heads, c.head_dim)
        self.io = {"inputs_embeds": (True, f32, (1, -1, H)), "position_ids": (True, i64, (1, -1)),
                   "attention_mask": (True, f32, (1, 1, -1, -1)), "logits_index": (True, i64, (-1,))}
        for i in range(c.num_layers):
            self.io[f"past_key.{i}"] = self.io[f"past_value.{i}"] = (True, f32, kv)
        shapes = module_shapes(c)
        for i in range(c.num_layers):
            for m in lora_modules:
                self.io[f"lora.{i}.{m}.a"] = (True, f32, (shapes[m][0], -1))
                self.io[f"lora.{i}.{m}.b"] = (True, f32, (-1, shapes[m][1]))
        self.io["logits"] = (False, f32, (-1, V))
        self.io["hidden_states"] = (False, f32, (1, -1, H))
        for i in range(c.num_layers):
            self.io[f"present_key.{i}"] = self.io[f"present_value.{i}"] = (False, f32, kv)
        self.lora_input = f"lora.0.{lora_modules[0]}.a" if lora_modules else ""
        cu = import_cuda()[0]
        self.module = check(cu.cuModuleLoadData(compile_kernels(Device.get(0).sm, TOY_SOURCE)), "toy module")
        self.fn = {n: check(cu.cuModuleGetFunction(self.module, n.encode()), n) for n in ("toy_present", "toy_logits")}

    def create_execution_context(self, *args: Any) -> "ToyContext":
        return ToyContext(self)


class ToyContext(_Context):
    engine: ToyEngine

    def _launch(self, name: str, grid: int, args: List[Any], stream: int) -> None:
        holders = [np.array(a) for a in args]
        params = np.array([h.ctypes.data for h in holders], np.uint64)
        check(import_cuda()[0].cuLaunchKernel(self.engine.fn[name], grid, 1, 1, 128, 1, 1, 0, stream,
                                              params.ctypes.data, 0), name)

    def execute_async_v3(self, stream_handle: int) -> bool:
        c, a = self.engine.config, self.addrs
        t = self.shapes["inputs_embeds"][1]
        p = self.shapes["past_key.0"][1]
        n_logits = self.shapes["logits_index"][0]
        H, W, V = c.hidden_size, c.num_kv_heads * c.head_dim, c.vocab_size
        u64 = np.uint64
        for i in range(c.num_layers):
            self._launch("toy_present", t, [u64(a["inputs_embeds"]), u64(a["position_ids"]),
                                            u64(a[f"present_key.{i}"]), u64(a[f"present_value.{i}"]),
                                            u64(a["hidden_states"]), np.int32(H), np.int32(W),
                                            np.float32(i + 1), np.int32(i == 0)], stream_handle)
        lora = a[self.engine.lora_input] if self.engine.lora_input else 0
        self._launch("toy_logits", n_logits, [u64(a["past_key.0"]), u64(a["present_key.0"]),
                                              u64(a["attention_mask"]), u64(a["logits_index"]), u64(lora),
                                              u64(a["logits"]), np.int32(p), np.int32(t), np.int32(W),
                                              np.int32(V)], stream_handle)
        self.executions += 1
        return True


def toy_logits_reference(embeddings: np.ndarray, tokens: Sequence[int], kv_width: int,
                         lora: float = 0.0) -> np.ndarray:
    """Logits [n, V] of the toy after each of ``tokens`` (positions 0..n-1, causal)."""
    V = embeddings.shape[0]
    k0 = np.stack([embeddings[tok][:kv_width] + j for j, tok in enumerate(tokens)])   # [n, W]
    sums = np.cumsum(k0, axis=0)                                                       # [n, W]
    return sums[:, np.arange(V) % kv_width] + lora


def stand_in_tensorrt(patch: Any) -> Dict[str, Any]:
    """Route the TensorRT backend's engine loading to OrtEngines (``patch``: a pytest MonkeyPatch).

    TensorRT counts as available; tensorrt_engines.ensure_plan records the graph and
    profiles asked for and returns the graph's ONNX file as the "plan"; load_engine gives an
    OrtEngine over it that checks the shapes against those profiles; import_tensorrt gives
    FAKE_TRT. Returns the record: graph name -> its profiles (and "engines": graph -> OrtEngine).
    """
    from edgellm_ros.backends.tensorrt import build as tensorrt_build, decoder as tensorrt, engines as tensorrt_engines

    asked: Dict[str, Any] = {"engines": {}}
    by_path: Dict[str, str] = {}

    def ensure_plan(folder: str, graph: str, profiles: Sequence[Dict[str, Any]], precision: str = "fp16",
                    *a: Any, **k: Any) -> Tuple[str, Dict[str, Any]]:
        path = os.path.join(folder, graph + ".onnx")
        asked[graph] = list(profiles)
        by_path[path] = graph
        return path, {"graph": graph, "profiles": list(profiles), "trt": FAKE_TRT.__name__,
                      "precision": precision, "applied_precision": "as-graph", "size": os.path.getsize(path)}

    def load_engine(path: str, trt: Any = None, log: Callable[[str], None] = print) -> Tuple[Any, OrtEngine]:
        graph = by_path[path]
        engine = asked["engines"][graph] = OrtEngine(path, profile=asked[graph][0])
        return None, engine

    patch.setattr(tensorrt_engines, "tensorrt_availability", lambda: (True, "the ONNX Runtime stand-in"))
    patch.setattr(tensorrt_engines, "ensure_plan", ensure_plan)
    patch.setattr(tensorrt, "load_engine", load_engine)
    patch.setattr(tensorrt_build, "import_tensorrt", lambda *a, **k: FAKE_TRT)
    return asked
