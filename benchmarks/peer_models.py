"""The peer runtimes' model files, built once from the embedded GGUF.

    python benchmarks/peer_models.py [--model PATH] [--peers-python .venv-peers/bin/python]

Runs in the repository's .venv (it reads the GGUF with our loader). Builds,
under ``~/.cache/edgellm_ros/peers/<gguf sha256[:16]>/``:

- ``hf/``: a local Hugging Face folder (there is no access to the Hub here):
  ``config.json`` (LlamaForCausalLM), ``model.safetensors`` holding the GGUF's
  weights dequantized to float32 by ``edgellm_ros.loaders.load_model`` (Q/K
  rows in Hugging Face order; the embedding is tied, so no ``lm_head``), the
  tokenizer rebuilt from the GGUF metadata and ``generation_config.json``;
- ``ort-genai-int4/`` and ``ort-genai-fp32/``: onnxruntime-genai models made by
  its model builder (``python -m onnxruntime_genai.models.builder``, in the
  peers' venv) from ``hf/``, for the CPU: int4 = MatMulNBits with block 32,
  re-quantized from those float weights (the builder's defaults otherwise:
  symmetric, accuracy_level 4, the tied embedding / LM head quantized too);
  fp32 = the float weights as they are.

llama.cpp loads the GGUF file itself and needs nothing here. Each folder is
written under a temporary name and renamed when complete, so an interrupted
build is redone, a finished one never.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_PYTHON = os.path.join(ROOT, ".venv-peers", "bin", "python")
#: onnxruntime-genai model variants: name -> builder arguments after -i/-o.
ORT_GENAI_BUILDS: Dict[str, List[str]] = {
    "ort-genai-int4": ["-p", "int4", "-e", "cpu", "--extra_options", "block_size=32"],
    "ort-genai-fp32": ["-p", "fp32", "-e", "cpu"],
}


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgellm_ros", "peers")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir(gguf_path: str) -> str:
    """The cache folder of one GGUF's peer models."""
    return os.path.join(cache_root(), file_sha256(gguf_path)[:16])


def hf_config(cfg, bos_id, eos_id) -> dict:
    """config.json of a LlamaForCausalLM with our ModelConfig's hyper-parameters."""
    if cfg.architecture != "llama" or cfg.attention_bias or cfg.rope_scaling:
        raise SystemExit(f"peer models: only plain llama models are handled, got {cfg}")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "bos_token_id": bos_id, "eos_token_id": eos_id,
        "pad_token_id": eos_id, "torch_dtype": "float32", "dtype": "float32",
    }


def make_hf_folder(model: str, out: str) -> None:
    """Write the GGUF's dequantized weights, config and tokenizer as a Hugging Face folder."""
    import numpy as np
    from safetensors.numpy import save_file

    from edgellm_ros.loaders import load_model
    from edgellm_ros.runtime.tokenizer import Tokenizer

    w = load_model(model)
    kind, md = w.tokenizer_source
    if kind != "gguf":
        raise SystemExit(f"peer models: expected a GGUF model, got a {kind} source")
    tok = Tokenizer.from_gguf_metadata(md)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tensors = {"model." + name: np.ascontiguousarray(t, dtype=np.float32) for name, t in w.tensors.items()
               if name != "lm_head.weight"}
    if "lm_head.weight" in w.tensors:
        tensors["lm_head.weight"] = np.ascontiguousarray(w.tensors["lm_head.weight"], dtype=np.float32)
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(w.config, tok.bos_id, tok.eos_id), f, indent=1)
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id}, f)
    tok.save_hf_folder(tmp)
    os.replace(tmp, out)


def build_ort_genai(hf: str, out: str, args: List[str], peers_python: str, log=print) -> None:
    """Run onnxruntime-genai's model builder in the peers' venv."""
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [peers_python, "-m", "onnxruntime_genai.models.builder", "-i", hf, "-o", tmp,
           "-c", tmp + "-cache"] + args
    log("running: " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shutil.rmtree(tmp + "-cache", ignore_errors=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-6000:])
        raise SystemExit(f"onnxruntime-genai builder failed (exit {proc.returncode}): {' '.join(cmd)}")
    with open(os.path.join(tmp, "edgellm_build.json"), "w", encoding="utf-8") as f:
        json.dump({"builder_args": args, "source": hf, "seconds": round(time.perf_counter() - t0, 1)}, f)
    os.replace(tmp, out)


def ensure_peer_models(model: str = "", peers_python: str = PEERS_PYTHON,
                       which=tuple(ORT_GENAI_BUILDS), log=print) -> Dict[str, str]:
    """Build what is missing; returns {"gguf": path, "hf": folder, <variant>: folder}."""
    from edgellm_ros.loaders import resolve_model_source

    gguf = resolve_model_source(model)
    if os.path.isdir(gguf):
        raise SystemExit(f"peer models are built from a GGUF file, {gguf} is a folder")
    base = model_dir(gguf)
    out = {"gguf": gguf, "hf": os.path.join(base, "hf")}
    if which and not os.path.exists(os.path.join(out["hf"], "config.json")):  # llama.cpp alone needs none
        log(f"writing the Hugging Face folder {out['hf']}")
        os.makedirs(base, exist_ok=True)
        make_hf_folder(model, out["hf"])
    for name in which:
        out[name] = os.path.join(base, name)
        if not os.path.exists(os.path.join(out[name], "genai_config.json")):
            if not os.path.exists(peers_python):
                raise SystemExit(f"{peers_python} is missing: run bash scripts/bench_peers_setup.sh")
            log(f"building {name} into {out[name]}")
            build_ort_genai(out["hf"], out[name], ORT_GENAI_BUILDS[name], peers_python, log)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="GGUF file ('' = the embedded default)")
    ap.add_argument("--peers-python", default=PEERS_PYTHON)
    ap.add_argument("--only", default=",".join(ORT_GENAI_BUILDS), help="onnxruntime-genai models to build")
    a = ap.parse_args()
    which = [x for x in a.only.split(",") if x]
    for x in which:
        if x not in ORT_GENAI_BUILDS:
            ap.error(f"unknown model {x!r}; known: {', '.join(ORT_GENAI_BUILDS)}")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    print(json.dumps(ensure_peer_models(a.model, a.peers_python, which,
                                        log=lambda m: print(m, file=sys.stderr)), indent=1))


if __name__ == "__main__":
    main()
