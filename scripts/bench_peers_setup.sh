#!/usr/bin/env bash
# The peer runtimes of benchmarks/cpu_bench.py (benchmark-only, never needed by
# the package or its tests), in their own virtual environment .venv-peers/:
#   1. llama-cpp-python, compiled from source for this CPU (native, no GPU
#      backend; about 6 minutes on 2 cores), and onnxruntime-genai with what its
#      model builder needs (torch for the CPU, transformers), all pinned in
#      requirements/bench-peers.txt;
#   2. the peers' model files, built once from the embedded GGUF into
#      ~/.cache/edgellm_ros/peers/ (benchmarks/peer_models.py, run with the
#      repository's .venv: run scripts/setup.sh first).
# Then: python benchmarks/cpu_bench.py. Each step is skipped when done.
# Environment: EDGELLM_PYTHON picks the interpreter (default python3);
# EDGELLM_TORCH_INDEX adds a package index for torch==2.13.0+cpu where the
# configured ones lack it (e.g. https://download.pytorch.org/whl/cpu).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
VENV="$ROOT/.venv-peers"
PY="$VENV/bin/python"
BASE_PY="${EDGELLM_PYTHON:-python3}"
REQ="$ROOT/requirements/bench-peers.txt"
# A native CPU build of llama.cpp with every GPU backend off.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
T0=$SECONDS

log() { printf '[bench-peers %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf '[bench-peers] error: %s\n' "$*" >&2; exit 1; }

command -v "$BASE_PY" >/dev/null || die "$BASE_PY not found (set EDGELLM_PYTHON)"
for tool in cmake cc c++; do
  command -v "$tool" >/dev/null || die "$tool not found: llama-cpp-python compiles llama.cpp (Debian: apt-get install cmake build-essential)"
done
[ -x "$ROOT/.venv/bin/python" ] || die "the repository's .venv is missing: run bash scripts/setup.sh first"

# --- 1. .venv-peers -------------------------------------------------------------
if [ "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null)" != "$VENV" ]; then
  log "creating $VENV"
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
fi
KEY="$( { "$PY" -VV; cat "$REQ"; echo "$LLAMA_CMAKE_ARGS"; } | sha256sum | cut -c1-32)"
if [ "$(cat "$VENV/.edgellm-requirements" 2>/dev/null)" != "$KEY" ]; then
  log "installing requirements/bench-peers.txt (llama-cpp-python compiles for minutes)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  "$PY" -m pip install -q pip==26.3
  extra=()
  [ -z "${EDGELLM_TORCH_INDEX:-}" ] || extra=(--extra-index-url "$EDGELLM_TORCH_INDEX")
  # --no-cache-dir: a wheel of llama-cpp-python built for another CPU or with
  # other CMake options must not be taken from pip's cache.
  if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$PY" -m pip install -q --no-cache-dir "${extra[@]}" -r "$REQ"; then
    die "pip install failed; torch==2.13.0+cpu comes from the PyTorch CPU index: set EDGELLM_TORCH_INDEX=https://download.pytorch.org/whl/cpu if yours lacks it"
  fi
  "$PY" -c 'import llama_cpp, onnxruntime_genai, torch, transformers' \
    || die "the peers' packages do not import"
  echo "$KEY" > "$VENV/.edgellm-requirements"
else
  log "requirements up to date"
fi

# --- 2. peer models ---------------------------------------------------------------
log "peer models (built once)"
PYTHONPATH="$ROOT" "$ROOT/.venv/bin/python" benchmarks/peer_models.py --peers-python "$PY" >&2
log "done: python benchmarks/cpu_bench.py"
