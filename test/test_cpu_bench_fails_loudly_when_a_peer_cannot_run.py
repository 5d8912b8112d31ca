"""benchmarks/cpu_bench.py stops with a non-zero exit when a requested peer cannot run (issue 23).

It used to skip such a peer and compare ours against the others, so a llama.cpp
that died with SIGILL left a benchmark that silently had one peer fewer. Two
ways a peer's runtime is missing: the peers' interpreter does not exist, or it
exists and lacks the runtime's package (here: the project's own .venv, which
has no llama-cpp-python). Both must end the run with exit status 3 before our
runtime is measured, naming the peer and the reason on stderr and in the JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support import REPO

BENCH = os.path.join(REPO, "benchmarks", "cpu_bench.py")


def _run(peers_python: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, BENCH, "--rounds", "1", "--warmup", "0", "--new-tokens", "4", "--prefill-tokens", "16",
         "--ours", "none", "--peers", "llama.cpp", "--peers-python", peers_python, "--ours-python", sys.executable,
         "--quiet-timeout", "0", "--pause", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("case", ["no peers interpreter", "interpreter without llama-cpp-python"])
def test_a_missing_peer_runtime_ends_the_run_with_its_reason(tmp_path, case):
    if case == "no peers interpreter":
        python = str(tmp_path / "no-venv" / "bin" / "python")
        reason = "is missing: run bash scripts/bench_peers_setup.sh"
    else:
        python, reason = sys.executable, "llama-cpp-python is not installed"
    proc = _run(python)
    assert proc.returncode == 3, f"exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    assert "error: requested peer llama.cpp cannot run" in proc.stderr and reason in proc.stderr, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert reason in out["peers_failed"]["llama.cpp"]
    assert "llama.cpp" in out["error"]
    assert "runtimes" not in out            # nothing was measured against fewer peers
    assert "loading ours[none]" not in proc.stderr   # it stopped before loading ours
