"""A TensorRT engine of one input and one output, called like a function on host arrays.

What the EAGLE-3 draft's fc (``draft_fc.onnx``: features [1, T, F] -> hidden [1, T, H])
and the vision encoder (``vision.onnx``: pixel_values [N, C, S, S] -> image_embeds
[N, Q, H]) need: one dimension varies (``axis``: T, N), every other is fixed by the
engine. Allocated once: a device input and output of ``max_rows`` along that axis and
pinned host staging for both. A call with more rows runs in chunks of ``max_rows``
(both graphs treat rows independently), each one:

    host array -> pinned -> device (async, our stream)
    set_input_shape (when the row count changes), addresses bound once
    execute_async_v3; device -> pinned -> the returned array (float32)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from ...errors import BackendError, InvalidRequest, ModelLoadError
from .cuda_rt import Device, DeviceBuffer, PinnedBuffer, Stream


class TrtFunction:
    """``f(x)``: x [n, *inner_in] host -> [n, *inner_out] float32, through one engine."""

    def __init__(self, engine: Any, input_name: str, output_name: str, max_rows: int, axis: int = 0,
                 trt: Any = None, device: Optional[Device] = None, runtime: Any = None):
        from .decoder import Binding
        if trt is None:
            from .build import import_tensorrt
            trt = import_tensorrt()
        self.trt, self.engine, self.runtime = trt, engine, runtime
        self.input_name, self.output_name = input_name, output_name
        self.axis, self.max_rows = axis, max(1, int(max_rows))
        self.device = device or Device.get(0)
        self.stream = Stream()
        self.in_inner, self.in_dtype = self._fixed(input_name, True)
        self.out_inner, self.out_dtype = self._fixed(output_name, False)
        n = self.max_rows
        self._d_in = DeviceBuffer.empty((n,) + self.in_inner, self.in_dtype)
        self._d_out = DeviceBuffer.empty((n,) + self.out_inner, self.out_dtype)
        self._h_in = PinnedBuffer((n,) + self.in_inner, self.in_dtype)
        self._h_out = PinnedBuffer((n,) + self.out_inner, self.out_dtype)
        ctx = engine.create_execution_context()
        if ctx is None:
            raise BackendError(f"TensorRT could not create an execution context for {input_name} -> {output_name}")
        self._bind = Binding(ctx)
        self._bind.addr(input_name, self._d_in.ptr)
        self._bind.addr(output_name, self._d_out.ptr)

    @classmethod
    def from_plan(cls, plan_path: str, input_name: str, output_name: str, max_rows: int, axis: int = 0,
                  trt: Any = None, log: Callable[[str], object] = print) -> "TrtFunction":
        from . import decoder as trt_decoder
        from .build import import_tensorrt
        trt = trt or import_tensorrt()
        device = Device.get(0)   # the context TensorRT will use is current before deserializing
        runtime, engine = trt_decoder.load_engine(plan_path, trt, log)
        return cls(engine, input_name, output_name, max_rows, axis, trt, device=device, runtime=runtime)

    def _fixed(self, name: str, is_input: bool) -> Tuple[Tuple[int, ...], np.dtype]:
        """The tensor's dims other than ``axis`` (all fixed, the leading 1s of axis > 0 dropped)."""
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        if name not in names or (e.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT) != is_input:
            raise ModelLoadError(f"the engine has no {'input' if is_input else 'output'} {name!r} (it has {names})")
        shape = tuple(int(d) for d in e.get_tensor_shape(name))
        lead, inner = shape[:self.axis], shape[self.axis + 1:]
        if len(shape) <= self.axis or any(d != 1 for d in lead) or any(d < 0 for d in inner):
            raise ModelLoadError(f"engine tensor {name} has shape {list(shape)}: only axis {self.axis} may vary")
        return inner, np.dtype(self.trt.nptype(e.get_tensor_dtype(name)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 1 + len(self.in_inner) or x.shape[1:] != self.in_inner or not x.shape[0]:
            raise InvalidRequest(f"{self.input_name} must be [n, {', '.join(map(str, self.in_inner))}] "
                                 f"with n >= 1, got {list(x.shape)}")
        self.device.make_current()
        out = np.empty((x.shape[0],) + self.out_inner, np.float32)
        s, lead = self.stream, (1,) * self.axis
        for a in range(0, x.shape[0], self.max_rows):
            m = min(self.max_rows, x.shape[0] - a)
            self._h_in.array[:m] = x[a:a + m]
            self._d_in.upload(self._h_in.array[:m], s)
            self._bind.shape(self.input_name, lead + (m,) + self.in_inner)
            if not self._bind.ctx.execute_async_v3(s.handle):
                raise BackendError(f"TensorRT execute_async_v3 failed ({self.input_name} of {m} rows)")
            self._d_out.download(self._h_out.array[:m], s)
            s.synchronize()
            out[a:a + m] = self._h_out.array[:m]
        return out

    def close(self) -> None:
        for buf in (self._d_in, self._d_out, self._h_in, self._h_out):
            buf.free()
        self._bind = None  # type: ignore[assignment]
        self.stream.destroy()


def load_trt_vision(folder: str, vision_cfg: Any, max_tiles: int, log: Callable[[str], object] = print) -> TrtFunction:
    """The engine folder's vision encoder on TensorRT.

    trt/vision.plan is built when missing or stale (tiles 1..max_tiles a run)
    and loaded as pixel_values [n, C, S, S] -> image_embeds [n, Q, H].
    """
    from .engines import ensure_vision_plan

    plan = ensure_vision_plan(folder, vision_cfg, max_tiles, log=log)
    enc = TrtFunction.from_plan(plan, "pixel_values", "image_embeds", max_tiles, axis=0, log=log)
    log(f"vision encoder on TensorRT: {plan} (up to {max_tiles} tiles a run)")
    return enc
