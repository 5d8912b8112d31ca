#!/bin/bash
# Mutation testing (issue 20), a benchmark-style script, not run in CI:
# mutmut over edgellm_ros/runtime/{sampling,lora,speculative}.py with the fast
# unit tests of those files (no test that loads the real 135M model: on a
# 2-core machine each mutant would reload it), for one git revision.
#
#   bash benchmarks/mutation_run.sh [REV] [OUT_JSON]
#
# REV (default HEAD) is exported to a scratch folder, so the work tree is never
# touched; the tests run are those of REV that exist among TESTS below. mutmut
# (requirements/mutation.txt, pinned) goes into a scratch venv that sees the
# project's .venv. Prints and writes {"killed", "survived", "no_tests",
# "timeout", "surviving_share", per file} as JSON.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
REV="${1:-HEAD}"
OUT="${2:-}"
PROJECT_VENV="${PROJECT_VENV:-$ROOT/.venv}"
MUT_VENV="${MUT_VENV:-${TMPDIR:-/tmp}/edgellm-mutmut-venv}"
FILES="edgellm_ros/runtime/sampling.py edgellm_ros/runtime/lora.py edgellm_ros/runtime/speculative.py"
# The fast unit tests of those files (node ids; missing files at REV are left out).
TESTS="test/test_sampling_rules.py
test/test_eagle_speculative.py::test_acceptance_rule_preserves_the_base_distribution
test/test_eagle_speculative.py::test_acceptance_rule_detects_a_biased_rule
test/test_sampler_applies_top_k_then_top_p.py
test/test_eagle_sampling_matches_plain_sampling.py
test/test_lora_scale_from_raw_adapter.py::test_graph_inputs_are_lora_A_and_scale_times_lora_B
test/test_lora_scale_from_raw_adapter.py::test_the_demo_adapter_adds_twice_B_A"

if [ ! -x "$MUT_VENV/bin/mutmut" ]; then
  py="$(readlink -f "$PROJECT_VENV/bin/python")"
  "$py" -m venv "$MUT_VENV"
  site="$("$PROJECT_VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  echo "$site" > "$("$MUT_VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/_project_venv.pth"
  "$MUT_VENV/bin/pip" install -q -r "$ROOT/requirements/mutation.txt"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgellm-mutation.XXXXXX")"
git -C "$ROOT" archive "$REV" | tar -x -C "$WORK"
cd "$WORK"
selected=()
while read -r t; do
  [ -f "${t%%::*}" ] && selected+=("$t")
done <<< "$TESTS"
{
  echo "[mutmut]"
  echo "source_paths = edgellm_ros"
  echo "also_copy = adapters"
  echo "only_mutate ="
  for f in $FILES; do echo "    $f"; done
  echo "pytest_add_cli_args = -p no:cacheprovider -q"
  echo "pytest_add_cli_args_test_selection ="
  for t in "${selected[@]}"; do echo "    $t"; done
} >> setup.cfg
start=$(date +%s)
"$MUT_VENV/bin/mutmut" run > "$WORK/mutmut_run.log" 2>&1 || true
"$MUT_VENV/bin/mutmut" results --all true > "$WORK/mutmut_results.txt" 2>&1 || true
secs=$(( $(date +%s) - start ))
"$PROJECT_VENV/bin/python" - "$WORK/mutmut_results.txt" "$REV" "$(git -C "$ROOT" rev-parse "$REV")" \
    "$secs" "${OUT:-}" "${selected[@]}" <<'PY'
import collections, json, re, sys
results, rev, sha, secs, out, *tests = sys.argv[1:]
per = collections.defaultdict(collections.Counter)
for line in open(results, encoding="utf-8"):
    m = re.match(r"\s*([\w.]+)__mutmut_\d+:\s*(.+?)\s*$", line)
    if not m:
        continue
    module = re.sub(r"\.x[_\u01c1].*$", "", m.group(1))   # mutmut names: module.x_func, module.xǁClassǁmethod
    per[module][m.group(2)] += 1
def share(c):
    total = sum(c.values())
    alive = total - c.get("killed", 0) - c.get("timeout", 0)
    return {"mutants": total, **dict(c), "surviving_share": round(alive / total, 3) if total else None}
summary = collections.Counter()
for c in per.values():
    summary.update(c)
report = {"revision": rev, "commit": sha, "tool": "mutmut 3.8.1", "seconds": int(secs),
          "tests": tests, "total": share(summary), "per_file": {k: share(v) for k, v in sorted(per.items())},
          "note": "surviving = not killed and not timed out (survived, no tests, suspicious, skipped)"}
text = json.dumps(report, indent=2)
print(text)
if out:
    with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
PY
echo "scratch copy, logs and mutants: $WORK" >&2
