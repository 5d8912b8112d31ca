#!/usr/bin/env bash
# The peer runtimes of benchmarks/cpu_bench.py (benchmark-only, never needed by
# the package or its tests), in their own virtual environment .venv-peers/:
#   1. llama-cpp-python, compiled from source for this CPU (no GPU backend;
#      about 6 minutes on 2 cores) with the instruction sets this machine can
#      actually run (benchmarks/peer_cpu_flags.py probes each one; GGML_NATIVE
#      is off: a CPU that reports AMX it does not let a process use killed a
#      native build with SIGILL), and onnxruntime-genai with what its model
#      builder needs (torch for the CPU, transformers), all pinned in
#      requirements/bench-peers.txt; the built llama.cpp must load the embedded
#      model and generate a token before this script reports success;
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
T0=$SECONDS

log() { printf '[bench-peers %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf '[bench-peers] error: %s\n' "$*" >&2; exit 1; }

command -v "$BASE_PY" >/dev/null || die "$BASE_PY not found (set EDGELLM_PYTHON)"
for tool in cmake cc c++; do
  command -v "$tool" >/dev/null || die "$tool not found: llama-cpp-python compiles llama.cpp (Debian: apt-get install cmake build-essential)"
done
[ -x "$ROOT/.venv/bin/python" ] || die "the repository's .venv is missing: run bash scripts/setup.sh first"

# llama.cpp for the CPU only, GGML_NATIVE off, each instruction set on where a probe ran it here.
LLAMA_CMAKE_ARGS="$("$BASE_PY" "$ROOT/benchmarks/peer_cpu_flags.py")" || die "the instruction-set probe failed"
log "llama.cpp CMake flags: $LLAMA_CMAKE_ARGS"

# The built llama.cpp loads the embedded GGUF and generates one token (a build that uses an
# instruction this CPU cannot run dies here with SIGILL, not in the middle of a benchmark).
llama_generates() {
  local gguf
  gguf="$(PYTHONPATH="$ROOT" "$ROOT/.venv/bin/python" -c \
    'from edgellm_ros.loaders import resolve_model_source; print(resolve_model_source(""))')" \
    || die "the embedded model was not found (run bash scripts/setup.sh)"
  "$PY" - "$gguf" <<'PYEOF'
import sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
ids = llm.tokenize(b"The robot")
tok = next(iter(llm.generate(ids, temp=0.0, top_k=1, reset=True)))
print(f"llama.cpp {llama_cpp.__version__} generated token {tok} after {len(ids)} prompt tokens; "
      + llama_cpp.llama_print_system_info().decode(errors="replace").strip(), file=sys.stderr)
PYEOF
}

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
  llama_generates || die "the built llama.cpp does not generate a token on this CPU (exit $?; 132 = SIGILL: an instruction set this CPU cannot run); flags: $LLAMA_CMAKE_ARGS"
  echo "$KEY" > "$VENV/.edgellm-requirements"
else
  log "requirements up to date"
  llama_generates || die "llama.cpp in $VENV does not generate a token on this CPU (exit $?; 132 = SIGILL); remove $VENV/.edgellm-requirements to rebuild it"
fi

# --- 2. peer models ---------------------------------------------------------------
log "peer models (built once)"
PYTHONPATH="$ROOT" "$ROOT/.venv/bin/python" benchmarks/peer_models.py --peers-python "$PY" >&2
log "done: python benchmarks/cpu_bench.py"
