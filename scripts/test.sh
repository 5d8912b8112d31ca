#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): set up from scratch
# when needed, then run the whole test suite.
#   bash scripts/test.sh [pytest arguments...]
# A JUnit XML report goes to build/test-results/pytest.xml and a one-line
# summary ("summary: N passed, N failed, N skipped") closes the output.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
T0=$SECONDS
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
echo "[test] setup took $((SECONDS - T0)) s" >&2

REPORT="$ROOT/build/test-results/pytest.xml"
mkdir -p "$(dirname "$REPORT")"
rm -f "$REPORT"
# Paths given on the command line replace test/ (which setup.cfg names too).
args=("$@")
has_path=0
for a in "$@"; do [[ "$a" == -* ]] || has_path=1; done
[ "$has_path" = 1 ] || args+=(test)
set +e
python -m pytest -ra --durations=15 --junitxml="$REPORT" "${args[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": only possible with a filter that matches
  # nothing; not a failure of the code.
  echo "[test] pytest collected no tests (exit 5); treated as success" >&2
  rc=0
fi
if [ -f "$REPORT" ]; then
  python - "$REPORT" <<'PY'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(f"summary: {total - failed - skipped} passed, {failed} failed, {skipped} skipped")
PY
fi
echo "[test] total $((SECONDS - T0)) s, pytest exit $rc" >&2
exit "$rc"
