"""What a T-row step costs ONNX Runtime's quantized matmul kernels, for the decoder's shapes.

    python benchmarks/matmul_rows_bench.py [--rows 1,2,3,4,6,8,16] [--threads 2] [--rounds 5]
        [--kernels int4,int4-zp,int8,int8-channel]

EAGLE verifies a tree of T tokens in one decoder step, so it pays off only
where a T-row step costs much less than T one-row steps. This builds, for
the default model's shapes (30 layers of packed q/k/v, o, packed gate/up,
down, then the 49152-wide LM head), a graph of nothing but those matmuls
with random weights, and times it for each row count. Kernels:

- ``int4``: MatMulNBits, 4-bit blocks of 32, int8 compute (accuracy level 4),
  what the ``int4`` / ``int4-sym`` graphs run; LM head 8-bit blocks (Q8_0).
- ``int4-zp``: the same with a 4-bit zero point per block (Q4_1 with its
  offsets rounded to whole steps would run this).
- ``int4-q4_1``: what the fused ``int4`` graph runs for a Q4_1 projection
  (export.projections.Projections.offset_augmented_matmul): the block sums S from a
  0/1 INT4 MatMulNBits, a Concat to [x, S, S], one INT4 MatMulNBits over
  K + 2 * 32 * ceil(K / 1024) inputs (the offsets as hi/lo 4-bit rows).
- ``int4-fzp``: Q4_1 in one MatMulNBits with float zero points (scale d,
  zero point -m / d), which ONNX Runtime runs on its unpacked path.
- ``int8``: MatMulNBits with 8-bit blocks everywhere.
- ``int8-channel``: DynamicQuantizeMatMul, int8 weights per output channel
  and the activations quantized per tensor (one scale for all T rows).
- ``float32``: plain MatMul (the float32 graph's projections).

Prints one JSON object: the median ms per step for each kernel and row
count, and each kernel's cost of T rows in one-row steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Dict, List, Tuple

import numpy as np
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort

KERNELS = ("int4", "int4-zp", "int4-q4_1", "int4-fzp", "int8", "int8-channel", "float32")


def _matmul(kind: str, x: str, name: str, k: int, n: int, rng: np.random.Generator,
            inits: List, nodes: List) -> str:
    """One [*, k] @ [k, n] node of ``kind``; returns its output name."""
    y = f"{name}.y"
    if kind == "float32":
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32),
                                             f"{name}.w"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [y]))
    elif kind == "int8-channel":
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), f"{name}.q"),
                  numpy_helper.from_array((rng.random(n) * 2e-3).astype(np.float32), f"{name}.s")]
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [x, f"{name}.q", f"{name}.s"], [y],
                                      domain="com.microsoft"))
    elif kind == "int4-q4_1":
        nb = k // 32
        kp = -(-nb // 32) * 32
        ones = np.zeros((kp, nb, 16), np.uint8) + 0x88                   # INT4 zero (q - 8 = 0) ...
        ones[np.arange(nb), np.arange(nb)] = 0x99                        # ... and one on block b of row b
        inits += [numpy_helper.from_array(ones, f"{name}.ones"),
                  numpy_helper.from_array(np.ones(kp * nb, np.float32), f"{name}.ones_s")]
        nodes.append(helper.make_node("MatMulNBits", [x, f"{name}.ones", f"{name}.ones_s"], [f"{name}.sums"],
                                      domain="com.microsoft", K=k, N=kp, bits=4, block_size=32, accuracy_level=4))
        nodes.append(helper.make_node("Concat", [x, f"{name}.sums", f"{name}.sums"], [f"{name}.wide"], axis=-1))
        return _matmul("int4", f"{name}.wide", name, k + 2 * kp, n, rng, inits, nodes)
    else:
        bits, blocks = (8 if kind == "int8" else 4), k // 32
        inits += [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, 32 * bits // 8)).astype(np.uint8),
                                          f"{name}.q"),
                  numpy_helper.from_array((rng.random(n * blocks) * 2e-3).astype(np.float32), f"{name}.s")]
        ins = [x, f"{name}.q", f"{name}.s"]
        if kind == "int4-zp":
            inits.append(numpy_helper.from_array(
                rng.integers(0, 256, n * ((blocks + 1) // 2)).astype(np.uint8), f"{name}.z"))
            ins.append(f"{name}.z")
        elif kind == "int4-fzp":
            inits.append(numpy_helper.from_array((rng.random(n * blocks) * 15).astype(np.float32), f"{name}.z"))
            ins.append(f"{name}.z")
        nodes.append(helper.make_node("MatMulNBits", ins, [y], domain="com.microsoft", K=k, N=n,
                                      bits=bits, block_size=32, accuracy_level=4))
    return y


def build(kind: str, threads: int, layers: int = 30, hidden: int = 576, kv: int = 192,
          mlp: int = 1536, vocab: int = 49152) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    inits: List = []
    nodes: List = []
    head_kind = "int8" if kind.startswith("int4") else kind   # the LM head: Q8_0
    const = {"zero": [0], "h": [hidden], "m": [mlp], "last": [-1]}
    inits += [numpy_helper.from_array(np.array(v, np.int64), f"c.{k}") for k, v in const.items()]
    x = "x"
    for i in range(layers):
        qkv = _matmul(kind, x, f"l{i}.qkv", hidden, hidden + 2 * kv, rng, inits, nodes)
        nodes.append(helper.make_node("Slice", [qkv, "c.zero", "c.h", "c.last"], [f"l{i}.att"]))
        o = _matmul(kind, f"l{i}.att", f"l{i}.o", hidden, hidden, rng, inits, nodes)
        gu = _matmul(kind, o, f"l{i}.gate_up", hidden, 2 * mlp, rng, inits, nodes)
        nodes.append(helper.make_node("Slice", [gu, "c.zero", "c.m", "c.last"], [f"l{i}.act"]))
        x = _matmul(kind, f"l{i}.act", f"l{i}.down", mlp, hidden, rng, inits, nodes)
    y = _matmul(head_kind, x, "lm_head", hidden, vocab, rng, inits, nodes)
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", hidden])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["T", vocab])], inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,2,3,4,6,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is printed")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per round and row count")
    ap.add_argument("--kernels", default="int4,int4-zp,int8,int8-channel")
    a = ap.parse_args()
    rows = [int(r) for r in a.rows.split(",")]
    kinds = a.kernels.split(",")
    for k in kinds:
        if k not in KERNELS:
            ap.error(f"unknown kernel {k!r}; one of {', '.join(KERNELS)}")
    sessions = {k: build(k, a.threads) for k in kinds}
    rng = np.random.default_rng(1)
    times: Dict[Tuple[str, int], List[float]] = {(k, t): [] for k in kinds for t in rows}
    for _ in range(a.rounds):
        for k, sess in sessions.items():
            for t in rows:
                x = (rng.standard_normal((t, 576)) * 0.5).astype(np.float32)
                for _ in range(3):
                    sess.run(None, {"x": x})
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    sess.run(None, {"x": x})
                times[(k, t)].append((time.perf_counter() - t0) / a.steps * 1e3)
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "threads": a.threads, "onnxruntime": ort.__version__, "rounds": a.rounds, "kernels": {}}
    for k in kinds:
        ms = {t: float(np.median(times[(k, t)])) for t in rows}
        one = ms[rows[0]] if rows[0] == 1 else None
        out["kernels"][k] = {"ms": {str(t): round(v, 2) for t, v in ms.items()},
                             "in_one_row_steps": {str(t): round(v / one, 2) for t, v in ms.items()}
                             if one else None}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
