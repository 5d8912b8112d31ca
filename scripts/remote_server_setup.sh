#!/usr/bin/env bash
# The test-only OpenAI-compatible server of the remote backend's tests
# (test/test_remote_*.py): llama-cpp-python's server (`python -m llama_cpp.server`)
# in its own venv, .venv-remote-server/, pinned in requirements/remote-test.txt.
# llama.cpp is compiled from the sdist (about 6-8 minutes on 2 cores) WITHOUT
# native CPU flags, so the build runs on any x86-64 machine with AVX2 (a native
# build dies with SIGILL on a VM whose CPU reports AMX it cannot use); the wheel is
# kept in ${XDG_CACHE_HOME:-~/.cache}/edgellm_ros/wheels/<key>/, keyed by the
# pinned version, the Python and the flags, so a fresh clone on the same machine
# installs it in seconds. scripts/setup.sh starts this script in the background.
# Each step is skipped when done. Environment: EDGELLM_PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
VENV="$ROOT/.venv-remote-server"
PY="$VENV/bin/python"
BASE_PY="${EDGELLM_PYTHON:-python3}"
REQ="$ROOT/requirements/remote-test.txt"
# x86-64 with AVX2/FMA/F16C (any machine since 2013), no AVX-512/AMX, no GPU.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF"
T0=$SECONDS

log() { printf '[remote-server %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf '[remote-server] error: %s\n' "$*" >&2; exit 1; }

command -v "$BASE_PY" >/dev/null || die "$BASE_PY not found (set EDGELLM_PYTHON)"
for tool in cmake cc c++; do
  command -v "$tool" >/dev/null || die "$tool not found: llama-cpp-python compiles llama.cpp (Debian: apt-get install cmake build-essential)"
done
if [ "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null)" != "$VENV" ]; then
  log "creating $VENV"
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
fi
KEY="$( { "$PY" -VV; cat "$REQ"; echo "$LLAMA_CMAKE_ARGS"; } | sha256sum | cut -c1-32)"
if [ "$(cat "$VENV/.edgellm-requirements" 2>/dev/null)" = "$KEY" ]; then
  log "up to date"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$PY" -m pip install -q pip==26.3
LLAMA_PIN="$(grep -oE '^llama-cpp-python[^ ]*==[0-9.]+' "$REQ" | sed 's/\[[a-z,]*\]//')"
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/edgellm_ros/wheels/llama-cpp-$( { "$PY" -VV; echo "$LLAMA_PIN"; echo "$LLAMA_CMAKE_ARGS"; } | sha256sum | cut -c1-16)"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  log "compiling $LLAMA_PIN without native CPU flags (minutes; wheel kept in $WHEELS)"
  mkdir -p "$WHEELS.tmp"
  # --no-cache-dir: pip's own wheel cache does not key by CMAKE_ARGS.
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    nice -n 5 "$PY" -m pip wheel -q --no-cache-dir --no-deps -w "$WHEELS.tmp" "$LLAMA_PIN" \
    || die "compiling $LLAMA_PIN failed"
  rm -rf "$WHEELS"
  mv "$WHEELS.tmp" "$WHEELS"
else
  log "using the cached wheel in $WHEELS"
fi
log "installing requirements/remote-test.txt"
"$PY" -m pip install -q --find-links "$WHEELS" --only-binary=llama-cpp-python -r "$REQ"
"$PY" -c 'import llama_cpp.server.app' || die "llama_cpp.server does not import"
echo "$KEY" > "$VENV/.edgellm-requirements"
log "done"
