"""A small ONNX graph builder: named nodes, constants and external weights.

Node names follow ``/model/layers.{i}/attn/q_proj/MatMul`` so a profile or a
TensorRT layer report points back at the model. Weights go to one external
data file written as the graph is built (no second in-memory copy).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConfigError, UnsupportedModelError

ALIGN = 4096


def pack_int(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed values as ONNX stores them.

    int8 as is; INT4 two per byte, element 2i in the low nibble and 2i+1 in the
    high nibble of byte i (row-major order).
    """
    flat = np.ascontiguousarray(q, dtype=np.int8).reshape(-1)
    if bits == 8:
        return flat
    if bits != 4:
        raise ConfigError(f"packed integers have 4 or 8 bits, got {bits}")
    if flat.size % 2:
        raise UnsupportedModelError(f"cannot pack an odd number of 4-bit values ({flat.size})")
    u = flat.view(np.uint8) & 0x0F
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


class WeightFile:
    """One external-data file shared by several graphs of an engine folder.

    A weight stored once (by name) is referenced again, not rewritten, so the
    decoder with and without LoRA slots share the same bytes on disk.
    """

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "wb")
        self.index: Dict[str, Tuple[int, int]] = {}

    def put(self, name: str, arr: np.ndarray) -> Tuple[int, int]:
        if name not in self.index:
            pad = (-self._f.tell()) % ALIGN
            if pad:
                self._f.write(b"\0" * pad)
            offset = self._f.tell()
            self._f.write(np.ascontiguousarray(arr).tobytes())
            self.index[name] = (offset, arr.nbytes)
        return self.index[name]

    def close(self) -> None:
        self._f.close()


class GraphBuilder:
    """Accumulates nodes, initializers and I/O of one ONNX graph."""

    def __init__(self, name: str, weights: Optional[WeightFile] = None, opset: int = 17):
        self.name = name
        self.opset = opset
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[TensorProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._consts: Dict[Any, str] = {}
        self._names: Dict[str, int] = {}
        self._weights: set = set()
        self._data = weights

    # -- naming -------------------------------------------------------------
    def _unique(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def op(self, op_type: str, inputs: Sequence[str], scope: str, n_out: int = 1,
           unused: Sequence[int] = (), **attrs: Any) -> Any:
        """Add one node named ``{scope}/{op_type}``; returns its output name(s).

        unused: indices of optional outputs left unnamed (""), so the kernel
        neither computes nor allocates them.
        """
        name = self._unique(f"{scope}/{op_type}")
        outs = ["" if i in unused else f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    @contextmanager
    def branch(self) -> Iterator[List[onnx.NodeProto]]:
        """Collect the nodes added inside the ``with`` block as a subgraph's (for ``if_op``).

        Constants and weights still go to the main graph, which the branch reads.
        """
        saved, self.nodes = self.nodes, []
        try:
            yield self.nodes
        finally:
            self.nodes = saved

    def if_op(self, cond: str, branches: Sequence[Tuple[List[onnx.NodeProto], str]], scope: str,
              elem: int, shape: Sequence[Any]) -> str:
        """``If(cond)``: the (nodes, output) pair ``branches[0]`` when true, else ``branches[1]``."""
        then_b, else_b = (helper.make_graph(nodes, f"{scope}/{kind}", [],
                                            [helper.make_tensor_value_info(out, elem, list(shape))])
                          for (nodes, out), kind in zip(branches, ("then", "else")))
        return self.op("If", [cond], scope, then_branch=then_b, else_branch=else_b)

    # -- tensors ------------------------------------------------------------
    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant initializer, deduplicated by value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = f"/model/constants/{arr.dtype.name}_{len(self._consts)}"
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def weight(self, name: str, arr: np.ndarray, elem_type: Optional[int] = None,
               dims: Optional[Sequence[int]] = None) -> str:
        """A large initializer, stored in the external data file when there is one.

        elem_type/dims describe ``arr``'s bytes when they are not its own dtype
        and shape (packed INT4: see pack_int). A name given again refers to
        the initializer made the first time.
        """
        if name in self._weights:
            return name
        self._weights.add(name)
        if elem_type is None and (self._data is None or arr.nbytes < 1024):
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
            return name
        if self._data is None:
            raise ConfigError(f"{name}: packed weights need an external weights file")
        offset, length = self._data.put(name, arr)
        t = TensorProto()
        t.name = name
        t.data_type = elem_type if elem_type is not None else helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(dims if dims is not None else arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", os.path.basename(self._data.path)),
                     ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        return name

    def input(self, name: str, elem: int, shape: Sequence[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, value: str, name: str, elem: int, shape: Sequence[Any]) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"/model/outputs/{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    # -- finish -------------------------------------------------------------
    def save(self, onnx_path: str, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        if any(n.domain == "com.microsoft" for n in self.nodes):
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        model = helper.make_model(graph, opset_imports=opsets,
                                  producer_name="edgellm_ros", doc_string=doc)
        model.ir_version = 10 if self.opset >= 21 else 8   # INT4 needs IR 10
        onnx.save_model(model, onnx_path)
        return model
