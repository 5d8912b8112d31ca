"""ONNX Runtime (CPU) executor of the decoder graph.

Every buffer the graph reads or writes is allocated once, here: the KV cache,
the embeddings / positions / mask / logits-index inputs and the logits /
hidden-state outputs. Each step binds views of them by address through
``IOBinding``: past = cache rows [0, P), present = cache rows [P, P+T), so ONNX
Runtime writes the new keys and values straight into the cache.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..contract import (HEAD_FAST_INPUT, HEAD_FLOAT_INPUT, HEAD_INT8_INPUT, HEAD_ROWS_INPUT, MASK_VALUE, AdapterWeights,
                        ArrayFunction, DecoderStep, DraftStep, LoraSlots, Log, lora_input_names, module_shapes)
from ..errors import BackendError, BackendUnavailable, ModelLoadError
from ..models.spec import ModelConfig
from .kv_cache import KVCache
from .step_inputs import causal_upper, check_step, fill_step


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime cannot be imported: {exc}") from exc
    return onnxruntime


#: ONNX Runtime's MatMulNBits accuracy level per EngineConfig.int4_compute.
INT4_ACCURACY = {"int8": "4", "float32": "1"}


def make_session(onnx_path: str, num_threads: int = 0, spin: bool = True,
                 int4_compute: str = "int8") -> Any:
    """An InferenceSession on the CPU with full graph optimisation.

    spin=False stops the session's threads from busy-waiting after a run:
    right for graphs that alternate with another session (the EAGLE draft),
    whose spinning threads would otherwise take the cores from the base
    model's next step; the base model keeps spinning, which plain decoding
    needs (docs/EAGLE.md has the figures).

    int4_compute: INT4 graphs' DequantizeLinear + MatMul pairs are fused by
    the optimizer into MatMulNBits, which computes with int8-quantized
    activations ("int8", accuracy level 4) or in float32 ("float32").
    """
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", INT4_ACCURACY[int4_compute])
    try:
        return ort.InferenceSession(onnx_path, sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc


class _BoundStep:
    """Shared machinery of a graph step on preallocated, address-bound buffers.

    Inputs every step graph has: inputs_embeds [1, T, H], position_ids [1, T],
    attention_mask [1, 1, T, P+T], logits_index [L]; outputs: logits [L, V'],
    a hidden output [1, T, F] and per-layer present K/V written into a
    KVCache of ``layers`` layers.
    """

    hidden_output = "hidden_states"

    def __init__(self, onnx_path: str, hidden_size: int, vocab: int, layers: int, kv_heads: int,
                 head_dim: int, embeddings: np.ndarray, max_seq_len: int, max_chunk: int,
                 num_threads: int = 0, spin: bool = True, int4_compute: str = "int8"):
        self.max_seq_len = max_seq_len
        self.max_chunk = max_chunk
        self.onnx_path = onnx_path
        #: one-token steps run as two rows (set_row_padding): ONNX Runtime's kernels have
        #: one-row paths whose rounding differs from their many-row paths
        self.row_padding = False
        self.session = make_session(onnx_path, num_threads, spin, int4_compute)
        self.embeddings = embeddings                                         # [V, H]
        past_shape = {i.name: i.shape for i in self.session.get_inputs()}[self.kv_names(0)[0]]
        # fused graph (GroupQueryAttention): head-major buffers bound whole, once
        self.fused = isinstance(past_shape[2], str)
        # one spare row: the padding row of a one-token step at P = max_seq_len - 1
        self.kv = KVCache(layers, max_seq_len + 1, kv_heads, head_dim, head_major=self.fused)
        max_chunk = max(max_chunk, 2)
        self._embeds = np.zeros((max_chunk, hidden_size), np.float32)        # [T, H]
        self._pos = np.zeros(max_chunk, np.int64)                             # [T]
        self._mask = np.zeros(max_chunk * (max_seq_len + 1), np.float32)      # [T * S]
        self._lidx = np.zeros(max_chunk, np.int64)                            # [L]
        self._logits = np.zeros((max_chunk, vocab), np.float32)               # [L, V']
        feat = {o.name: o.shape for o in self.session.get_outputs()}[self.hidden_output][-1]
        self.feature_size = int(feat)                                         # F
        self._hidden = np.zeros((max_chunk, self.feature_size), np.float32)   # [T, F]
        self._tri = causal_upper(max_chunk)                                  # [T, T]
        self._binding = self.session.io_binding()
        # the C-level binder and the CPU device, made once: the public wrappers
        # build an OrtDevice per call (~1 us each, x 6 per step)
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice
        self._cpu = OrtDevice.make("cpu", 0)._get_c_device()
        self._c_run = self.session._sess.run_with_iobinding
        self._bound: Dict[int, Tuple[int, int]] = {}   # id(binding) -> (T, L) last bound
        self._kv_shape = (kv_heads, head_dim)
        self._width = (hidden_size, vocab)
        # addresses are read once: binding is then integer arithmetic only
        self._addr = {n: getattr(self, n).ctypes.data for n in
                      ("_embeds", "_pos", "_mask", "_lidx", "_logits", "_hidden")}
        self._kv_addr = [self.kv_names(i) + (k.ctypes.data, v.ctypes.data)
                         for i, (k, v) in enumerate(zip(self.kv.keys, self.kv.values))]
        # the fused graph of a tied model reads the embedding table as lm_head_rows and
        # chooses its LM head by three bound flags
        # (export.lm_head.head_modes): the whole head until set_fast_head(True)
        self._head_rows = None
        self._head_float_compute = int4_compute == "float32"
        self._head_flags = {HEAD_FAST_INPUT: np.zeros((), np.bool_),
                            HEAD_INT8_INPUT: np.array(not self._head_float_compute, np.bool_),
                            HEAD_FLOAT_INPUT: np.array(self._head_float_compute, np.bool_)}
        if HEAD_ROWS_INPUT in {i.name for i in self.session.get_inputs()}:
            self._head_rows = np.ascontiguousarray(embeddings, dtype=np.float32)  # no copy if it is
        self._bind_static(self._binding)

    def _bind_static(self, binding: Any) -> None:
        """Bind what never changes.

        That is the whole KV buffers of a fused graph (past = present) and the
        embedding table as the LM head's rescoring rows.
        """
        if self._head_rows is not None:
            binding.bind_input(HEAD_ROWS_INPUT, "cpu", 0, np.float32, self._head_rows.shape,
                               self._head_rows.ctypes.data)
            for name, flag in self._head_flags.items():
                binding.bind_input(name, "cpu", 0, np.bool_, (), flag.ctypes.data)
        if not self.fused:
            return
        shape = (1,) + self.kv.keys[0].shape
        for pk, pv, nk, nv, ka, va in self._kv_addr:
            for name, addr in ((pk, ka), (pv, va)):
                binding.bind_input(name, "cpu", 0, np.float32, shape, addr)
            for name, addr in ((nk, ka), (nv, va)):
                binding.bind_output(name, "cpu", 0, np.float32, shape, addr)

    @property
    def fast_head(self) -> bool:
        """Whether the next steps run the two-pass LM head."""
        return bool(self._head_flags[HEAD_FAST_INPUT])

    @property
    def has_fast_head(self) -> bool:
        """Whether this graph has the two-pass LM head (export.lm_head.head_modes)."""
        return self._head_rows is not None

    def set_row_padding(self, on: bool) -> None:
        """Run one-token steps as two rows from now on (on), or as one row.

        ONNX Runtime's CPU kernels take special one-row paths (MLAS: the 4-bit
        MatMulNBits int8-compute kernel for blocks of 32 and more, the sgemm of
        GroupQueryAttention's probabilities x V) whose float rounding differs
        from their many-row paths, while a row of a many-row step gets the same
        bits whatever the row count. With int8 activations such one-ulp
        differences flip roundings and grow to ~1 logit, so a step of T rows
        (EAGLE's verification) and T one-token steps part at near-ties. Padded,
        a one-token step runs the token and a copy of it (causal: row 0 never
        sees the copy, whose KV row at P+1 the next step overwrites) and reads
        row 0's logits: bit for bit what a T-row step gives that token's row.
        """
        self.row_padding = bool(on)

    def set_fast_head(self, fast: bool) -> None:
        """The next steps' LM head: two-pass or whole.

        Two-pass: exact logits for the HEAD_CANDIDATES best tokens, 4-bit
        estimates for the rest (enough for greedy decoding); whole: every logit
        exact. Writes the bound flag: no rebinding. No-op without one.
        """
        fast = bool(fast) and self._head_rows is not None
        f = self._head_flags
        f[HEAD_FAST_INPUT][()] = fast
        f[HEAD_INT8_INPUT][()] = not fast and not self._head_float_compute
        f[HEAD_FLOAT_INPUT][()] = not fast and self._head_float_compute

    @staticmethod
    def kv_names(layer: int) -> Tuple[str, str, str, str]:
        return (f"past_key.{layer}", f"past_value.{layer}", f"present_key.{layer}",
                f"present_value.{layer}")

    # -- buffers the caller may fill before a step --------------------------------
    def embeds_buffer(self, t: int) -> np.ndarray:
        """[t, H] view of the embeddings input, for callers that bring their own."""
        return self._embeds[:t]

    @property
    def hidden(self) -> np.ndarray:
        """[max_chunk, F] hidden output of the last step (rows [0, T) valid)."""
        return self._hidden

    def buffer_addresses(self) -> dict:
        """Data addresses of every bound buffer (tests prove they never change)."""
        out = dict(self._addr)
        for i, (k, v) in enumerate(zip(self.kv.keys, self.kv.values)):
            out[f"k{i}"], out[f"v{i}"] = k.ctypes.data, v.ctypes.data
        return out

    # -- one step ----------------------------------------------------------------
    def forward(self, n_past: int, token_ids: Optional[Sequence[int]] = None, *,
                num_tokens: int = 0, positions: Optional[np.ndarray] = None,
                logits_rows: Union[str, Sequence[int]] = "last",
                mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Run T new tokens after ``n_past`` cached rows; returns logits [L, V] (a view).

        token_ids: looked up in the embedding table; or pass num_tokens after
        filling ``embeds_buffer(num_tokens)``. positions default to
        P..P+T-1; mask defaults to causal ([T, P+T], additive).
        """
        t = len(token_ids) if token_ids is not None else num_tokens
        p = n_past
        check_step(t, p, self.max_chunk, self.max_seq_len)
        if token_ids is not None:
            if t == 1:
                self._embeds[0] = self.embeddings[token_ids[0]]
            else:
                np.take(self.embeddings, token_ids, axis=0, out=self._embeds[:t])
        if t == 1 and self.row_padding:
            return self._padded_step(p, positions, mask)
        n_logits = fill_step(self._pos, self._mask, self._lidx, self._tri, p, t, positions, mask,
                             logits_rows)
        self._run(p, t, n_logits)
        return self._logits[:n_logits]

    def _padded_step(self, p: int, positions: Optional[np.ndarray], mask: Optional[np.ndarray]
                     ) -> np.ndarray:
        """The one-token step as two rows: the token and its copy (see set_row_padding)."""
        self._embeds[1] = self._embeds[0]
        if positions is not None:
            positions = np.array([positions[0], positions[0] + 1])
        if mask is not None:     # the token's row as given, the copy's row sees it too
            wide = np.zeros((2, p + 2), np.float32)
            wide[:, :p + 1] = mask[0]
            wide[0, p + 1] = MASK_VALUE
            mask = wide
        fill_step(self._pos, self._mask, self._lidx, self._tri, p, 2, positions, mask, "last")
        self._lidx[0] = 0        # row 0's logits: one row, as the unpadded step returns
        self._run(p, 2, 1)
        return self._logits[:1]

    def _bind_extra(self, t: int) -> None:
        """Subclasses bind their own extra inputs here."""

    def _hidden_binding(self) -> Tuple[int, int]:
        """(width, address) of the hidden output's buffer."""
        return self.feature_size, self._addr["_hidden"]

    def _run(self, p: int, t: int, n_logits: int) -> None:
        a, dev = self._addr, self._cpu
        b = self._binding._iobinding
        hsize, vocab = self._width
        f32, i64 = np.float32, np.int64
        b.bind_input("attention_mask", dev, f32, (1, 1, t, p + t), a["_mask"])
        # the other bindings depend on (T, L) only: rebound when those change
        # (a binding costs ~20 us; decode steps keep T = L = 1)
        if self._bound.get(id(b)) != (t, n_logits):
            b.bind_input("inputs_embeds", dev, f32, (1, t, hsize), a["_embeds"])
            b.bind_input("position_ids", dev, i64, (1, t), a["_pos"])
            b.bind_input("logits_index", dev, i64, (n_logits,), a["_lidx"])
            b.bind_output("logits", dev, f32, (n_logits, vocab), a["_logits"])
            width, addr = self._hidden_binding()
            b.bind_output(self.hidden_output, dev, f32, (1, t, width), addr)
            self._bind_extra(t)
            self._bound[id(b)] = (t, n_logits)
        if not self.fused:
            self._bind_kv_rows(b, p, t)
        try:
            self._c_run(b, None)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime step failed (P={p}, T={t}): {exc}") from exc

    def _bind_kv_rows(self, b: Any, p: int, t: int) -> None:
        """Past is cache rows [0, P), present rows [P, P+T) of each layer's buffer (C binder)."""
        f32, dev = np.float32, self._cpu
        offset = p * self.kv.row_nbytes
        past_shape = (1, p) + self._kv_shape
        new_shape = (1, t) + self._kv_shape
        for pk, pv, nk, nv, ka, va in self._kv_addr:
            b.bind_input(pk, dev, f32, past_shape, ka)
            b.bind_input(pv, dev, f32, past_shape, va)
            b.bind_output(nk, dev, f32, new_shape, ka + offset)
            b.bind_output(nv, dev, f32, new_shape, va + offset)

    def close(self) -> None:
        self._binding = None
        self.session = None
        self.kv = None  # type: ignore[assignment]


class OrtDecoder(_BoundStep):
    """The base model's decoder graph, with optional LoRA slots.

    plain_path: the plain variant of the same family (no LoRA slots, no
    EAGLE features), opened as a second session on the same KV cache and
    input buffers, its binding made once. It runs the steps while no adapter
    is selected and no features are wanted (set_features): the LoRA graph
    with zero adapters gives the same bits (x @ W + 0), at the cost of its
    630 extra small kernels a step, and the features graph its Concat.
    """

    def __init__(self, onnx_path: str, config: ModelConfig, embeddings: np.ndarray,
                 max_seq_len: int, max_chunk: int, num_threads: int = 0,
                 lora_slots: Sequence[Tuple[int, str]] = (), int4_compute: str = "int8",
                 plain_path: str = ""):
        c = self.config = config
        super().__init__(onnx_path, c.hidden_size, c.vocab_size, c.num_layers, c.num_kv_heads,
                         c.head_dim, embeddings, max_seq_len, max_chunk, num_threads,
                         int4_compute=int4_compute)
        self._main = (self._binding, self._c_run)
        self._plain: Optional[Tuple[Any, Any]] = None
        self._plain_session: Any = None
        self.features = True            # whether the next steps must output hidden_states (F)
        self.prefer_plain = True        # False: the main session always (benchmarks, tests)
        if plain_path:
            self._plain_session = make_session(plain_path, num_threads, True, int4_compute)
            self._hidden_plain = np.zeros((self._hidden.shape[0], c.hidden_size), np.float32)  # [T, H]
            binding = self._plain_session.io_binding()
            self._bind_static(binding)
            self._plain = (binding, self._plain_session._sess.run_with_iobinding)
        # LoRA: one binding table per adapter, built once; "" binds rank-1 zeros
        self.lora_slots = list(lora_slots)
        self._lora_tables: Dict[str, Tuple[Any, list]] = {}
        self._lora_zeros: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}
        self.active_adapter: Optional[str] = None
        if self.lora_slots:
            self.add_adapter("", {})
            self.set_adapter("")
        self._select()

    # -- the session of the next steps -----------------------------------------------
    @property
    def runs_plain(self) -> bool:
        """Whether the next steps run the plain session (no adapter, no features)."""
        return self._plain is not None and self.prefer_plain and not self.features and not self.active_adapter

    def set_features(self, on: bool) -> None:
        """Whether the next steps must output the EAGLE features (EAGLE on); no rebinding."""
        self.features = bool(on)
        self._select()

    def _select(self) -> None:
        if self.runs_plain:
            assert self._plain is not None
            self._binding, self._c_run = self._plain
        elif self.lora_slots:
            self._binding, self._c_run = self._lora_tables[self.active_adapter or ""][0], self._main[1]
        else:
            self._binding, self._c_run = self._main

    @property
    def hidden(self) -> np.ndarray:
        """[max_chunk, F] hidden output of the last step ([max_chunk, H] from the plain session)."""
        return self._hidden_plain if self.runs_plain else self._hidden

    def _hidden_binding(self) -> Tuple[int, int]:
        return (self.config.hidden_size, self._hidden_plain.ctypes.data) if self.runs_plain else \
            (self.feature_size, self._addr["_hidden"])

    # -- LoRA ----------------------------------------------------------------------
    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        """Give the adapter its own IOBinding with its preloaded tensors bound, once.

        Every LoRA input is bound here, by address; switching adapters then
        only selects which binding the next steps run with.
        """
        shapes = module_shapes(self.config)
        binding, keep, f32 = self.session.io_binding(), [], np.float32
        for layer, module in self.lora_slots:
            pair = weights.get((layer, module))
            if pair is None:
                n_in, n_out = shapes[module]
                if (n_in, n_out) not in self._lora_zeros:
                    self._lora_zeros[(n_in, n_out)] = (np.zeros((n_in, 1), np.float32),
                                                       np.zeros((1, n_out), np.float32))
                pair = self._lora_zeros[(n_in, n_out)]
            a, b = pair
            a_name, b_name = lora_input_names(layer, module)
            binding.bind_input(a_name, "cpu", 0, f32, a.shape, a.ctypes.data)
            binding.bind_input(b_name, "cpu", 0, f32, b.shape, b.ctypes.data)
            keep.append(pair)
        self._bind_static(binding)
        self._lora_tables[name] = (binding, keep)

    def set_adapter(self, name: str) -> None:
        """Run the next steps with the adapter's binding (no copy, no rebinding).

        "" runs the plain session when there is one and no features are wanted.
        """
        if name not in self._lora_tables:
            raise BackendError(f"adapter {name!r} was not prepared for this decoder")
        self.active_adapter = name
        self._select()

    def close(self) -> None:
        if self._lora_tables:
            self._lora_tables.clear()
        self._plain = self._main = None  # type: ignore[assignment]
        self._plain_session = None
        super().close()


class OrtDraft(_BoundStep):
    """An EAGLE draft step graph: one layer, its own KV cache, a hidden_in input."""

    hidden_output = "hidden_out"

    @staticmethod
    def kv_names(layer: int) -> Tuple[str, str, str, str]:
        return ("past_key", "past_value", "present_key", "present_value")

    def __init__(self, onnx_path: str, cfg: Any, vocab: int, embeddings: np.ndarray,
                 max_seq_len: int, max_chunk: int, num_threads: int = 0):
        super().__init__(onnx_path, cfg.hidden_size, vocab, 1, cfg.num_kv_heads, cfg.head_dim,
                         embeddings, max_seq_len, max_chunk, num_threads, spin=False)
        self._hidden_in = np.zeros((max_chunk, cfg.hidden_size), np.float32)  # [T, H]
        self._addr["_hidden_in"] = self._hidden_in.ctypes.data

    def hidden_in_buffer(self, t: int) -> np.ndarray:
        """[t, H] view of the hidden_in input, filled by the caller before forward()."""
        return self._hidden_in[:t]

    def _bind_extra(self, t: int) -> None:
        self._binding.bind_input("hidden_in", "cpu", 0, np.float32, (1, t, self._width[0]),
                                 self._addr["_hidden_in"])


class OrtFunction:
    """A one-input, one-output graph as a function (contract.ArrayFunction).

    The vision encoder and EAGLE-3's fc. Batch-first input; the batch dimension
    is the graph's own.
    """

    def __init__(self, onnx_path: str, input_name: str, output_name: str, num_threads: int = 0,
                 batch_axis: int = 0, spin: bool = False):
        self.session = make_session(onnx_path, num_threads, spin)
        self.input_name, self.output_name = input_name, output_name
        self.batch_axis = batch_axis     # 1: the graph takes [1, n, ...] (the fc's features)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        try:
            if self.batch_axis:
                return self.session.run([self.output_name], {self.input_name: x[None]})[0][0]
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise BackendError(f"{self.output_name} graph failed on {self.input_name} "
                               f"{list(x.shape)}: {exc}") from exc

    def close(self) -> None:
        self.session = None


class OrtBackend:
    """Opens the graphs of an engine folder in ONNX Runtime on the CPU (contract.Backend)."""

    name = "onnxruntime"

    def __init__(self, num_threads: int = 0, int4_compute: str = "int8", log: Log = print):
        self.num_threads, self.int4_compute, self.log = num_threads, int4_compute, log

    def open_decoder(self, folder: str, graph: str, config: ModelConfig, embeddings: np.ndarray,
                     max_seq_len: int, max_chunk: int, lora_slots: LoraSlots, max_lora_rank: int,
                     plain_graph: str = "") -> DecoderStep:
        return OrtDecoder(os.path.join(folder, graph + ".onnx"), config, embeddings, max_seq_len, max_chunk,
                          self.num_threads, lora_slots=lora_slots, int4_compute=self.int4_compute,
                          plain_path=os.path.join(folder, plain_graph + ".onnx") if plain_graph else "")

    def open_draft(self, folder: str, draft_sub: str, draft_cfg: Any, vocab: int, embeddings: np.ndarray,
                   max_seq_len: int, max_chunk: int, decoder: Optional[DecoderStep] = None
                   ) -> Tuple[DraftStep, Optional[ArrayFunction]]:
        sub = os.path.join(folder, draft_sub)
        step = OrtDraft(os.path.join(sub, "draft.onnx"), draft_cfg, vocab, embeddings, max_seq_len,
                        max_chunk, self.num_threads)
        fc = None
        if draft_cfg.layout == "eagle3":
            fc = OrtFunction(os.path.join(sub, "draft_fc.onnx"), "features", "hidden", self.num_threads,
                             batch_axis=1)
        return step, fc

    def open_vision(self, folder: str, vision_cfg: Any, max_tiles: int) -> ArrayFunction:
        path = os.path.join(folder, "vision.onnx")
        if not os.path.isfile(path):
            raise ModelLoadError(f"{folder} has vision.json but no vision.onnx")
        return OrtFunction(path, "pixel_values", "image_embeds", self.num_threads, spin=True)
