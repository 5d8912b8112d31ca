"""benchmarks/cpu_bench.py assembles its JSON from real worker output (our runtime only).

Two rounds, few tokens, no peers: the driver starts our worker process, takes
the prompt ids from our tokenizer, measures, and reports medians/min/max, the
float path's ids (checked here against a greedy decode of the same prompt ids
by the test's own engine) and their agreement across rounds, the peers as
skipped and no ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_bench_json_from_our_worker(engine):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "cpu_bench.py"), "--rounds", "2", "--warmup", "0",
         "--new-tokens", "6", "--prefill-tokens", "40", "--ours", "none", "--peers", "", "--pause", "0",
         "--ours-python", sys.executable, "--quiet-timeout", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["settings"]["prompt_tokens"] == 46          # the chat prompt
    assert out["settings"]["prefill_prompt_tokens"] == 40
    ours = out["runtimes"]["ours[none]"]
    assert ours["rounds"] == 2
    for metric in ("decode_tok_s", "prefill_tok_s", "ttft_s"):
        m = ours["metrics"][metric]
        assert 0 < m["min"] <= m["median"] <= m["max"], (metric, m)
    assert ours["engine_config"].get("quantization", "none") == "none"  # the float path
    assert ours["engine_config"]["prompt_cache_bytes"] == 0  # nothing cached between rounds
    ids = [int(t) for t in ours["agreement"].pop("ids").split()]
    prompt = [int(t) for t in out["settings"]["prompt_ids"].split()]
    row, want = engine.decoder.forward(0, prompt)[0], []
    for pos in range(len(prompt), len(prompt) + 6):   # greedy, as the worker's float path
        want.append(int(row.argmax()))
        row = engine.decoder.forward(pos, want[-1:])[0]
    assert ids == want, f"the worker's float path gave {ids}, a greedy decode of its prompt {want}"
    # the reference agrees when its rounds gave the same ids (nothing else to compare it with)
    assert ours["agreement"] == {"identical_in_every_round": True, "expected_identical": True, "agrees": True}
    assert out["agreement_problems"] == []
    assert out["ratios"] == {"note": "no peer was measured"}
    assert list(out["runtimes"]) == ["ours[none]"]
