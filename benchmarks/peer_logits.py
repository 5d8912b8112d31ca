"""Next-token logits of a peer runtime at every position of a token sequence (quality_bench's peers).

    .venv-peers/bin/python benchmarks/peer_logits.py <kind> <model> <ids.json> <out.npy> [--threads N]

kind: ``llama.cpp`` (llama-cpp-python on the GGUF file as is, ``logits_all``)
or ``onnx`` (an onnxruntime-genai builder folder's ``model.onnx`` run by the
onnxruntime it ships with, its KV cache fed back chunk by chunk). Writes a
float32 [len(ids), vocab] array. Runs in the peers' venv
(scripts/bench_peers_setup.sh); benchmarks/quality_bench.py calls it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

CHUNK = 128   # tokens per forward, as quality_bench feeds ours


def llama_cpp_logits(gguf: str, ids, threads: int) -> np.ndarray:
    import llama_cpp
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=len(ids) + 8, n_batch=CHUNK, n_ubatch=CHUNK,
                          n_threads=threads, n_threads_batch=threads, logits_all=True, seed=0, verbose=False)
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], np.float32)


def onnx_logits(folder: str, ids, threads: int) -> np.ndarray:
    import onnxruntime as ort
    with open(os.path.join(folder, "genai_config.json"), encoding="utf-8") as f:
        dec = json.load(f)["model"]["decoder"]
    names = dec["inputs"]
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(os.path.join(folder, dec["filename"]), so, providers=["CPUExecutionProvider"])
    empty = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)   # [B, KVH, past, D]
    past = {names[kind] % i: empty for i in range(dec["num_hidden_layers"])
            for kind in ("past_key_names", "past_value_names")}
    outs, n = [], 0
    for start in range(0, len(ids), CHUNK):
        part = np.asarray(ids[start:start + CHUNK], np.int64)[None]
        n += part.shape[1]
        feed = {names["input_ids"]: part, names["attention_mask"]: np.ones((1, n), np.int64), **past}
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        outs.append(res[dec["outputs"]["logits"]][0])
        for i in range(dec["num_hidden_layers"]):
            past[names["past_key_names"] % i] = res[dec["outputs"]["present_key_names"] % i]
            past[names["past_value_names"] % i] = res[dec["outputs"]["present_value_names"] % i]
    return np.concatenate(outs).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["llama.cpp", "onnx"])
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with open(a.ids, encoding="utf-8") as f:
        ids = json.load(f)
    fn = llama_cpp_logits if a.kind == "llama.cpp" else onnx_logits
    logits = fn(a.model, ids, a.threads)
    if logits.shape[0] != len(ids):
        sys.exit(f"{a.kind}: {logits.shape[0]} rows of logits for {len(ids)} tokens")
    np.save(a.out, logits)


if __name__ == "__main__":
    main()
