#!/usr/bin/env bash
# The README's main command: set up (first run only), start the edgellm node on
# the embedded default model, ask it one question, stream the answer.
#   bash scripts/demo.sh ["your question"] [--max-new-tokens N] [--params-file F]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
exec python -m edgellm_ros.ros.demo "$@"
