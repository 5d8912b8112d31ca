"""Quality of every decoder variant against the float32 graph, on the shipped text sample.

    python benchmarks/quality_bench.py [--model PATH] [--threads N] [--tokens N] [--only KEY,...]
                                       [--peers llama.cpp,ort-genai-int4,ort-genai-fp32]

Teacher-forces benchmarks/data/quality_sample.txt (about 900 tokens) through
the float32 plain-op graph (the reference; its logits match the NumPy reference
and transformers, see the tests) and through each variant (fused graphs of a
tied model also with the two-pass LM head that greedy requests run), and prints one JSON
object: top-1 agreement, perplexity, mean KL and the largest logit difference
per variant (edgellm_ros/evaluation.py), plus the variant's weight origins.
--peers scores the peer runtimes of cpu_bench the same way (their logits at
every position from benchmarks/peer_logits.py in the peers' venv, made by
scripts/bench_peers_setup.sh), against the same float32 reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from edgellm_ros.backends.onnxruntime import OrtDecoder
from edgellm_ros.runtime.engine_dir import ensure_engine, ensure_family, graph_name
from edgellm_ros.contract import read_manifest
from edgellm_ros.evaluation import compare_decoders
from edgellm_ros.models.spec import ModelConfig
from edgellm_ros.runtime.tokenizer import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "data", "quality_sample.txt")
VARIANTS = [  # (quantization, fused ops, int4 compute, two-pass LM head)
    ("none", True, "int8", False),
    ("int4", False, "int8", False),
    ("int4", True, "int8", False),
    ("int4", True, "int8", True),
    ("int4", False, "float32", False),  # the exact mode runs the plain graph
    ("int4-sym", False, "int8", False),
    ("int4-sym", True, "int8", False),
    ("int4-sym", True, "int8", True),
    ("int4-sym", True, "float32", False),
    ("int8", False, "int8", False),
    ("int8", True, "int8", False),
    ("int8", True, "int8", True),
    ("int8", True, "float32", False),
]


class _PeerRows:
    """A peer's precomputed logits behind the decoders' forward(n_past, ids, logits_rows)."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits

    def forward(self, n_past: int, ids, logits_rows: str = "all") -> np.ndarray:
        return self.logits[n_past:n_past + len(ids)]


def peer_logits(peer: str, model: str, ids, threads: int) -> np.ndarray:
    """[len(ids), V] logits of a cpu_bench peer (llama.cpp, ort-genai-int4, ort-genai-fp32)."""
    sys.path.insert(0, HERE)
    from peer_models import ORT_GENAI_BUILDS, PEERS_PYTHON, ensure_peer_models
    if not os.path.exists(PEERS_PYTHON):
        raise SystemExit("the peers' venv is missing: bash scripts/bench_peers_setup.sh")
    paths = ensure_peer_models(model, which=[peer] if peer in ORT_GENAI_BUILDS else [],
                               log=lambda m: print(m, file=sys.stderr))
    kind, path = ("llama.cpp", paths["gguf"]) if peer == "llama.cpp" else ("onnx", paths[peer])
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "ids.json"), "w", encoding="utf-8") as f:
            json.dump([int(t) for t in ids], f)
        out = os.path.join(tmp, "logits.npy")
        subprocess.run([PEERS_PYTHON, os.path.join(HERE, "peer_logits.py"), kind, path,
                        os.path.join(tmp, "ids.json"), out, "--threads", str(threads or 2)], check=True)
        return np.load(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=0, help="score only the first N tokens (0 = all)")
    ap.add_argument("--only", default="", help="comma-separated variant keys to run, e.g. int8/fused/int8")
    ap.add_argument("--peers", default="", help="comma-separated peers to score too: llama.cpp, "
                    "ort-genai-int4, ort-genai-fp32")
    a = ap.parse_args()
    quiet = lambda m: None  # noqa: E731
    folder = ensure_engine(a.model, "", quiet)
    tok = Tokenizer.from_hf_folder(folder)
    with open(SAMPLE, encoding="utf-8") as f:
        ids = tok.encode(f.read())
    if a.tokens:
        ids = ids[:a.tokens]
    emb = np.load(os.path.join(folder, "embeddings.npy"), mmap_mode="r")
    out = {"sample": os.path.relpath(SAMPLE), "tokens": len(ids), "machine": platform.processor() or
           platform.machine(), "cpus": os.cpu_count(), "reference": "decoder (float32, plain ops)",
           "variants": {}}

    mcfg = ModelConfig.from_dict(read_manifest(folder)["model"])

    def decoder(name: str, compute: str = "int8") -> OrtDecoder:
        return OrtDecoder(os.path.join(folder, name + ".onnx"), mcfg, np.asarray(emb),
                          len(ids) + 8, 128, a.threads, int4_compute=compute)

    ref = decoder("decoder")
    for quant, fused, compute, fast in VARIANTS:
        key = f"{quant}{'/fused' if fused else '/plain'}" + (f"/{compute}" if quant != "none" else "") \
            + ("/two-pass-head" if fast else "")
        if a.only and key not in a.only.split(","):
            continue
        manifest = ensure_family(folder, quant, fused, quiet)
        name = graph_name(False, False, quant, fused)
        dec = decoder(name, compute)
        if fast and not dec.has_fast_head:
            continue
        dec.set_fast_head(fast)
        t0 = time.perf_counter()
        res = compare_decoders(ref, dec, ids).as_dict()
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["weight_origins"] = manifest["graphs"][name]["weight_origins"]
        out["variants"][key] = res
        print(f"{key}: {json.dumps(res)}", flush=True)
    for peer in [p for p in a.peers.split(",") if p]:
        t0 = time.perf_counter()
        res = compare_decoders(ref, _PeerRows(peer_logits(peer, a.model, ids, a.threads)), ids).as_dict()
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out["variants"][f"peer:{peer}"] = res
        print(f"peer:{peer}: {json.dumps(res)}", flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
