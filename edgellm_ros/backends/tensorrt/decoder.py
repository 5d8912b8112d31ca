"""TensorRT executor of the decoder graph, run through cuda-python.

The same interface as OrtDecoder (backends/onnxruntime.py): ``forward``, ``kv``
(a DeviceKVCache: snapshot / restore / move_rows), ``embeds_buffer``, ``hidden``,
``add_adapter`` / ``set_adapter``, so the generator and EAGLE code run unchanged.

Everything is allocated once, here: the KV cache and its scratch rows, the
embedding table, every I/O tensor on the device, pinned host staging for what
crosses to and from the host. A plain step:

    host staging -> device (ids or embeddings, positions, mask, logits index)
    gather_rows kernel (token ids -> inputs_embeds) when ids are given
    set_input_shape / set_tensor_address: past = cache rows [0, P) (bound at the
        buffer's start), present = rows [P, P+T) in place when that address is 256-byte
        aligned (TensorRT's rule for tensor addresses), else the scratch rows, then
        one copy_rows launch moves them to [P, P+T) in every layer
    execute_async_v3 on our stream; logits rows [0, L) copied back (L = 1 when decoding)

A decode step (T = 1, ids, last logits) with ``cuda_graphs`` runs as a CUDA graph keyed
by (bucket, adapter): the past is bound as ``Pb`` rows (P rounded up to ``graph_bucket``)
with rows [P, Pb) masked out by the decode_mask kernel, present goes to the scratch and
is committed to row P by copy_rows, and P and the token come from device memory, so one
captured graph serves every step of the bucket. Each key has its own execution context
(its shapes never change after capture; they share one activation memory when TensorRT
offers user-managed allocation), run plainly once to flush TensorRT's deferred work,
captured at its second step, replayed after. When capture fails the key runs without a
graph, and the log says so once.

LoRA: each adapter's A and B tensors are uploaded once (add_adapter); switching re-points
the ``lora.*`` tensor addresses (and rank shapes) of the context; modules an adapter does
not touch bind rank-1 zeros.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import BackendError, ModelLoadError
from ...models.spec import ModelConfig
from .cuda_kernels import device_kernels
from .cuda_kv import DeviceKVCache
from .cuda_rt import Device, DeviceBuffer, GraphCache, PinnedBuffer, Stream
from ..step_inputs import causal_upper, check_step, fill_step

#: TensorRT requires tensor addresses aligned to this many bytes.
TRT_ALIGNMENT = 256


def load_engine(plan_path: str, trt: Any = None, log: Callable[[str], object] = print) -> Tuple[Any, Any]:
    """Deserialize a plan: (runtime, engine). ModelLoadError with TensorRT's messages on failure."""
    from .build import make_logger, import_tensorrt

    trt = trt or import_tensorrt()
    logger = make_logger(trt, log)
    runtime = trt.Runtime(logger)
    try:
        with open(plan_path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise ModelLoadError(f"cannot read TensorRT engine {plan_path}: {exc}") from exc
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise ModelLoadError(f"TensorRT cannot deserialize {plan_path}: "
                             + ("; ".join(logger.errors[-3:]) or "no engine returned"))
    return runtime, engine


class Binding:
    """What a context has bound: the shapes and addresses of its tensors (skips repeats)."""

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.addrs: Dict[str, int] = {}

    def shape(self, name: str, shape: Tuple[int, ...]) -> None:
        if self.shapes.get(name) != shape:
            if not self.ctx.set_input_shape(name, shape):
                raise BackendError(f"TensorRT refused shape {shape} for {name}")
            self.shapes[name] = shape

    def addr(self, name: str, ptr: int) -> None:
        if self.addrs.get(name) != ptr:
            if ptr % TRT_ALIGNMENT:
                raise BackendError(f"address {ptr:#x} of {name} is not {TRT_ALIGNMENT}-byte aligned")
            if not self.ctx.set_tensor_address(name, ptr):
                raise BackendError(f"TensorRT refused address {ptr:#x} for {name}")
            self.addrs[name] = ptr


class TrtDecoder:
    """The base model's decoder engine on the GPU, with optional LoRA slots.

    Subclasses (TrtDraft) name their own KV tensors (``kv_names``), hidden output and
    ``extra_inputs``: [1, T, H] inputs with a device buffer and pinned host staging each,
    which the caller fills (``self._h[name]``) and each plain step uploads and binds.
    """

    hidden_output = "hidden_states"
    #: Inputs of [1, T, H] besides inputs_embeds that the caller fills per step (the draft's hidden_in).
    extra_inputs: Tuple[str, ...] = ()

    @staticmethod
    def kv_names(layer: int) -> Tuple[str, str, str, str]:
        """(past key, past value, present key, present value) tensor names of a layer."""
        return (f"past_key.{layer}", f"past_value.{layer}", f"present_key.{layer}", f"present_value.{layer}")

    def __init__(self, engine: Any, config: ModelConfig, embeddings: np.ndarray, max_seq_len: int,
                 max_chunk: int, lora_slots: Sequence[Tuple[int, str]] = (), trt: Any = None,
                 log: Callable[[str], object] = print, cuda_graphs: bool = True, graph_bucket: int = 64,
                 device: Optional[Device] = None, runtime: Any = None, table: Optional[DeviceBuffer] = None):
        """Open the engine's contexts and buffers.

        ``table``: a device copy of ``embeddings`` to share (another engine's
        ``embedding_table``, same dtype), instead of uploading one more.
        """
        if trt is None:
            from .build import import_tensorrt
            trt = import_tensorrt()
        self.trt, self.engine, self.runtime, self.log = trt, engine, runtime, log
        c = self.config = config
        self.max_seq_len, self.max_chunk = max_seq_len, max_chunk
        self.embeddings = embeddings                                    # [V, H] host (vision merge)
        self.cuda_graphs = cuda_graphs
        self.graph_bucket = max(1, graph_bucket)
        self.device = device or Device.get(0)
        self.stream = Stream()
        self._io = self._read_io()
        self._check_io(c)
        dt = self._dtype
        self.feature_size = int(engine.get_tensor_shape(self.hidden_output)[-1])   # F
        width = int(engine.get_tensor_shape("logits")[-1])
        self.vocab = width if width > 0 else c.vocab_size                        # V (the draft's Vd)
        H, V, F, T = c.hidden_size, self.vocab, self.feature_size, max_chunk
        S = max_seq_len + max_chunk
        kv_dtype = dt(self.kv_names(0)[0])
        self.kv = DeviceKVCache(self.device, self.stream, c.num_layers, max_seq_len, c.num_kv_heads,
                                c.head_dim, kv_dtype, scratch_rows=max_chunk)
        # device tensors
        want = (embeddings.shape, np.dtype(dt("inputs_embeds")))
        self.owns_table = table is None or (tuple(table.shape), table.dtype) != want
        self._table: DeviceBuffer = DeviceBuffer.from_host(np.asarray(embeddings, dt("inputs_embeds"))) \
            if self.owns_table or table is None else table                                   # [V, H]
        self._d = {
            "ids": DeviceBuffer.empty((T,), np.int64),
            "inputs_embeds": DeviceBuffer.empty((T, H), dt("inputs_embeds")),
            "position_ids": DeviceBuffer.empty((T,), np.int64),
            "attention_mask": DeviceBuffer.empty((T * S,), np.float32),
            "logits_index": DeviceBuffer.empty((T,), np.int64),
            "logits": DeviceBuffer.empty((T, V), dt("logits")),
            self.hidden_output: DeviceBuffer.empty((T, F), dt(self.hidden_output)),
            "args": DeviceBuffer.empty((4,), np.int32),
            "zero_index": DeviceBuffer.from_host(np.zeros(1, np.int64)),
        }
        # pinned host staging
        self._h = {
            "ids": PinnedBuffer((T,), np.int64),
            "inputs_embeds": PinnedBuffer((T, H), np.float32),
            "position_ids": PinnedBuffer((T,), np.int64),
            "attention_mask": PinnedBuffer((T * S,), np.float32),
            "logits_index": PinnedBuffer((T,), np.int64),
            "logits": PinnedBuffer((T, V), dt("logits")),
            self.hidden_output: PinnedBuffer((T, F), dt(self.hidden_output)),
            "args": PinnedBuffer((4,), np.int32),
        }
        if dt("inputs_embeds") != np.float32:
            self._h["embeds_cast"] = PinnedBuffer((T, H), dt("inputs_embeds"))
        for name in self.extra_inputs:                                           # [T, H]
            self._d[name] = DeviceBuffer.empty((T, H), dt(name))
            self._h[name] = PinnedBuffer((T, H), dt(name))
        self._tri = causal_upper(T)
        self._hidden_rows = 0            # rows of the last step's hidden output not yet on the host
        self._hidden_host = np.zeros((T, F), np.float32)
        # contexts: the main one, and one per CUDA-graph key
        self._ctx_memory: Optional[DeviceBuffer] = None
        self._main = Binding(self._new_context())
        self._slots: Dict[Tuple[int, str], Binding] = {}
        self.graphs = GraphCache(self.stream, log)
        # LoRA: per adapter, (a name, b name, a, b) for every slot
        self.lora_slots = list(lora_slots)
        self._adapters: Dict[str, List[Tuple[str, str, DeviceBuffer, DeviceBuffer]]] = {}
        self._zeros: Dict[Tuple[int, int], Tuple[DeviceBuffer, DeviceBuffer]] = {}
        self.active_adapter: Optional[str] = None
        self._main_adapter: Optional[str] = None
        if self.lora_slots:
            self.add_adapter("", {})
            self.set_adapter("")
        self.stream.synchronize()

    @classmethod
    def from_plan(cls, plan_path: str, config: ModelConfig, embeddings: np.ndarray, max_seq_len: int,
                  max_chunk: int, lora_slots: Sequence[Tuple[int, str]] = (), trt: Any = None,
                  log: Callable[[str], object] = print, **kw: Any) -> "TrtDecoder":
        from .build import import_tensorrt
        trt = trt or import_tensorrt()
        device = Device.get(0)   # the context TensorRT will use is current before deserializing
        runtime, engine = load_engine(plan_path, trt, log)
        return cls(engine, config, embeddings, max_seq_len, max_chunk, lora_slots, trt, log,
                   device=device, runtime=runtime, **kw)

    @classmethod
    def from_engine_folder(cls, folder: str, graph: str, config: ModelConfig, embeddings: np.ndarray,
                           max_seq_len: int, max_chunk: int, max_lora_rank: int,
                           lora_slots: Sequence[Tuple[int, str]] = (), log: Callable[[str], object] = print,
                           **kw: Any) -> "TrtDecoder":
        """Build (when missing or stale) the plan of ``graph`` in the engine folder and load it."""
        from .engines import ensure_decoder_plan
        plan, _ = ensure_decoder_plan(folder, graph, max_seq_len, max_chunk, max_lora_rank, log=log)
        return cls.from_plan(plan, config, embeddings, max_seq_len, max_chunk, lora_slots, log=log, **kw)

    # -- engine I/O ----------------------------------------------------------------
    def _read_io(self) -> Dict[str, Tuple[bool, np.dtype]]:
        e, trt = self.engine, self.trt
        out = {}
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            is_input = e.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            out[name] = (is_input, np.dtype(trt.nptype(e.get_tensor_dtype(name))))
        return out

    def _dtype(self, name: str) -> np.dtype:
        return self._io[name][1]

    def _check_io(self, c: ModelConfig) -> None:
        need = {"inputs_embeds": True, "position_ids": True, "attention_mask": True, "logits_index": True,
                "logits": False, self.hidden_output: False, **{n: True for n in self.extra_inputs}}
        for i in range(c.num_layers):
            names = self.kv_names(i)
            need.update({names[0]: True, names[1]: True, names[2]: False, names[3]: False})
        for name, is_input in need.items():
            if name not in self._io or self._io[name][0] != is_input:
                raise ModelLoadError(f"the engine has no {'input' if is_input else 'output'} {name!r} "
                                     f"(it has {sorted(self._io)})")
        for name, want in (("position_ids", np.int64), ("logits_index", np.int64),
                           ("attention_mask", np.float32)):
            if self._dtype(name) != want:
                raise ModelLoadError(f"engine input {name} is {self._dtype(name)}, expected {np.dtype(want)}")
        if self._dtype(self.kv_names(0)[0]) != self._dtype(self.kv_names(0)[2]):
            raise ModelLoadError("the engine's past and present KV dtypes differ")

    def _new_context(self, shared: bool = False) -> Any:
        """An execution context.

        ``shared``: a graph-key context; those share one activation memory (they
        run one at a time on one stream) when TensorRT offers user-managed memory.
        """
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        if not shared or strategy is None:
            ctx = self.engine.create_execution_context()
        else:
            if self._ctx_memory is None:
                size = getattr(self.engine, "device_memory_size_v2", 0) or \
                    getattr(self.engine, "device_memory_size", 0)
                self._ctx_memory = DeviceBuffer(int(size), np.uint8)
            ctx = self.engine.create_execution_context(strategy.USER_MANAGED)
            if ctx is not None:
                if hasattr(ctx, "set_device_memory"):          # TensorRT >= 10.1
                    ctx.set_device_memory(self._ctx_memory.ptr, self._ctx_memory.nbytes)
                else:
                    ctx.device_memory = self._ctx_memory.ptr
        if ctx is None:
            raise BackendError("TensorRT could not create an execution context")
        return ctx

    # -- LoRA ----------------------------------------------------------------------
    def add_adapter(self, name: str, weights: Dict[Tuple[int, str], Tuple[np.ndarray, np.ndarray]]) -> None:
        """Upload the adapter's A [in, r] and B [r, out] once (zeros rank 1 where it has none)."""
        from ...contract import lora_input_names, module_shapes
        shapes = module_shapes(self.config)
        self.device.make_current()
        table = []
        for layer, module in self.lora_slots:
            a_name, b_name = lora_input_names(layer, module)
            pair = weights.get((layer, module))
            if pair is None:
                key = shapes[module]
                if key not in self._zeros:
                    self._zeros[key] = (DeviceBuffer.from_host(np.zeros((key[0], 1), self._dtype(a_name))),
                                        DeviceBuffer.from_host(np.zeros((1, key[1]), self._dtype(b_name))))
                a, b = self._zeros[key]
            else:
                a = DeviceBuffer.from_host(np.asarray(pair[0], self._dtype(a_name)))
                b = DeviceBuffer.from_host(np.asarray(pair[1], self._dtype(b_name)))
            table.append((a_name, b_name, a, b))
        self._adapters[name] = table

    def set_adapter(self, name: str) -> None:
        """Run the next steps with ``name``'s tensors (addresses re-pointed at the next step)."""
        if name not in self._adapters:
            raise BackendError(f"adapter {name!r} was not prepared for this decoder")
        self.active_adapter = name

    def _bind_lora(self, b: Binding, name: Optional[str]) -> None:
        for a_name, b_name, a, bb in self._adapters.get(name or "", []):
            b.shape(a_name, a.shape)
            b.shape(b_name, bb.shape)
            b.addr(a_name, a.ptr)
            b.addr(b_name, bb.ptr)

    # -- buffers the caller may fill before a step --------------------------------
    @property
    def has_fast_head(self) -> bool:
        """Never: TensorRT builds the plain graph, whose LM head is always whole."""
        return False

    def set_fast_head(self, fast: bool) -> None:
        """No two-pass LM head here: every logit is exact already."""

    def set_features(self, on: bool) -> None:
        """Nothing to choose: TensorRT runs the one engine it built."""

    def set_row_padding(self, on: bool) -> None:
        """Not applied: which TensorRT tactics round a one-row step differently is not known here."""

    def embeds_buffer(self, t: int) -> np.ndarray:
        """[t, H] host (pinned) view of the embeddings input, for callers that bring their own."""
        return self._h["inputs_embeds"].array[:t]

    @property
    def embedding_table(self) -> DeviceBuffer:
        """The device copy of the embedding table [V, H] (a draft on the same GPU shares it)."""
        return self._table

    @property
    def hidden(self) -> np.ndarray:
        """[max_chunk, F] hidden output of the last step (rows [0, T) valid), copied back on first use."""
        if self._hidden_rows:
            n, self._hidden_rows = self._hidden_rows, 0
            self.device.make_current()
            h = self._h[self.hidden_output].array[:n]
            self._d[self.hidden_output].download(h, self.stream)
            self.stream.synchronize()
            self._hidden_host[:n] = h
        return self._hidden_host

    def buffer_addresses(self) -> dict:
        out = {k: v.ptr for k, v in self._d.items()}
        for i, (k, v) in enumerate(zip(self.kv.keys, self.kv.values)):
            out[f"k{i}"], out[f"v{i}"] = k.ptr, v.ptr
        return out

    # -- one step ------------------------------------------------------------------
    def forward(self, n_past: int, token_ids: Optional[Sequence[int]] = None, *,
                num_tokens: int = 0, positions: Optional[np.ndarray] = None,
                logits_rows: Union[str, Sequence[int]] = "last",
                mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Run T new tokens after ``n_past`` cached rows; returns logits [L, V] (a host view)."""
        t = len(token_ids) if token_ids is not None else num_tokens
        p = n_past
        check_step(t, p, self.max_chunk, self.max_seq_len)
        self.device.make_current()
        h, d, s = self._h, self._d, self.stream
        if token_ids is not None:
            ids = np.asarray(token_ids, np.int64)
            if ids.min() < 0 or ids.max() >= len(self.embeddings):
                raise BackendError(f"token ids {ids.tolist()} are outside [0, {len(self.embeddings)})")
            h["ids"].array[:t] = ids
            if self.cuda_graphs and t == 1 and positions is None and mask is None and logits_rows == "last" \
                    and not self.extra_inputs:
                return self._decode_graph(p)
            d["ids"].upload(h["ids"].array[:t], s)
            device_kernels(self.device).gather_rows(self._table, d["ids"].ptr, t, d["inputs_embeds"].ptr, s)
        else:
            src = h["inputs_embeds"].array[:t]
            if "embeds_cast" in h:
                h["embeds_cast"].array[:t] = src
                src = h["embeds_cast"].array[:t]
            d["inputs_embeds"].upload(src, s)
        pos, lidx = h["position_ids"].array, h["logits_index"].array
        n_logits = fill_step(pos, h["attention_mask"].array, lidx, self._tri, p, t, positions, mask, logits_rows)
        width = p + t
        m = h["attention_mask"].array[:t * width]
        d["position_ids"].upload(pos[:t], s)
        d["attention_mask"].upload(m, s)
        d["logits_index"].upload(lidx[:n_logits], s)
        for name in self.extra_inputs:
            d[name].upload(h[name].array[:t], s)
        in_place = (p * self.kv.row_nbytes) % TRT_ALIGNMENT == 0
        b = self._main
        self._bind_step(b, t, p, width, n_logits, d["attention_mask"].ptr, d["logits_index"].ptr,
                        present_row=p if in_place else None)
        if self._main_adapter != self.active_adapter:
            self._bind_lora(b, self.active_adapter)
            self._main_adapter = self.active_adapter
        if not b.ctx.execute_async_v3(s.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed (P={p}, T={t})")
        if not in_place:
            h["args"].array[:2] = (t, p)
            d["args"].upload(h["args"].array, s)
            self.kv.commit_scratch(d["args"].ptr)
        out = h["logits"].array[:n_logits]
        d["logits"].download(out, s)
        s.synchronize()
        self._hidden_rows = t
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def _bind_step(self, b: Binding, t: int, past: int, width: int, n_logits: int, mask_ptr: int,
                   lidx_ptr: int, present_row: Optional[int]) -> None:
        """Shapes and addresses of one step; present_row None = the scratch rows."""
        c, d, kv = self.config, self._d, self.kv
        b.shape("inputs_embeds", (1, t, c.hidden_size))
        b.shape("position_ids", (1, t))
        b.shape("attention_mask", (1, 1, t, width))
        b.shape("logits_index", (n_logits,))
        b.addr("inputs_embeds", d["inputs_embeds"].ptr)
        b.addr("position_ids", d["position_ids"].ptr)
        b.addr("attention_mask", mask_ptr)
        b.addr("logits_index", lidx_ptr)
        b.addr("logits", d["logits"].ptr)
        b.addr(self.hidden_output, d[self.hidden_output].ptr)
        for name in self.extra_inputs:
            b.shape(name, (1, t, c.hidden_size))
            b.addr(name, d[name].ptr)
        past_shape = (1, past, c.num_kv_heads, c.head_dim)
        offset = (present_row or 0) * kv.row_nbytes
        for i in range(c.num_layers):
            pk, pv, nk, nv = self.kv_names(i)
            for src, dst, bufs, scratch in ((pk, nk, kv.keys, kv.scratch_keys), (pv, nv, kv.values, kv.scratch_values)):
                b.shape(src, past_shape)
                b.addr(src, bufs[i].ptr)
                b.addr(dst, bufs[i].ptr + offset if present_row is not None else scratch[i].ptr)

    # -- decode steps as CUDA graphs --------------------------------------------
    def _decode_graph(self, p: int) -> np.ndarray:
        """One token at position p, through the graph of (bucket, adapter)."""
        pb = min(-(-p // self.graph_bucket) * self.graph_bucket, self.max_seq_len)
        key = (pb, self.active_adapter or "")
        h = self._h
        h["args"].array[:2] = (1, p)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = Binding(self._new_context(shared=True))
            self._bind_step(slot, 1, pb, pb + 1, 1, self._d["attention_mask"].ptr,
                            self._d["zero_index"].ptr, present_row=None)
            self._bind_lora(slot, key[1])
        self.graphs.run(key, lambda stream: self._decode_ops(slot, pb, stream), warmup=True)
        self.stream.synchronize()
        self._hidden_host[0] = h[self.hidden_output].array[0]
        self._hidden_rows = 0
        out = h["logits"].array[:1]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def _decode_ops(self, slot: Binding, pb: int, s: Stream) -> None:
        """The launches of a bucketed decode step (what the graph holds)."""
        d, h, k = self._d, self._h, device_kernels(self.device)
        d["ids"].upload(h["ids"].array[:1], s)
        d["args"].upload(h["args"].array, s)
        k.gather_rows(self._table, d["ids"].ptr, 1, d["inputs_embeds"].ptr, s)
        k.decode_mask(d["args"].ptr, d["attention_mask"].ptr, d["position_ids"].ptr, pb, s)
        if not slot.ctx.execute_async_v3(s.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed (decode graph, bucket {pb})")
        self.kv.commit_scratch(d["args"].ptr)
        d["logits"].download(h["logits"].array[:1], s)
        d[self.hidden_output].download(h[self.hidden_output].array[:1], s)

    def close(self) -> None:
        if self.graphs is not None:
            self.graphs.clear()
        self._slots.clear()
        self._main = None  # type: ignore[assignment]
        for table in self._adapters.values():
            for _, _, a, b in table:
                a.free()
                b.free()
        self._adapters.clear()
        own = [self._table] if self.owns_table else []
        for buf in list(self._d.values()) + own + ([self._ctx_memory] if self._ctx_memory else []):
            buf.free()
        for pin in self._h.values():
            pin.free()
        if self.kv is not None:
            self.kv.close()
        self.kv = None  # type: ignore[assignment]
        self.stream.destroy()
