"""ONNX Runtime A against B on the default fused int4 graph: prints (and writes) one JSON object.

    python benchmarks/ort_versions_bench.py --python-a VENV_A/bin/python --python-b VENV_B/bin/python \
        [--rounds 3] [--runs 3] [--threads 2] [--out benchmarks/results/DATE-ort-versions.json]

Runs benchmarks/runtime_bench.py (prefill of a 512-token prompt, decode of 128 tokens,
medians over --runs) under each interpreter in turn, A B A B ..., --rounds times, so
that the machine's drift (other processes, frequency) hits both alike; reports each
side's median over the rounds, the ratio of the medians B / A and the median of
each round's B / A (robust to load that changes between rounds). The two interpreters should
differ only in onnxruntime (same Python, numpy and edgellm_ros); each one's versions
are read and recorded. Both use the same engine folder (XDG_CACHE_HOME as given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = ("prefill_tokens_per_s", "decode_tokens_per_s", "python_overhead_us_per_token",
           "ttft_s_cold_prompt_cache", "ttft_s_warm_prompt_cache")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def versions(python: str) -> dict:
    code = ("import json, sys, numpy, onnxruntime, edgellm_ros; print(json.dumps({'python': sys.version.split()[0], "
            "'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


# --cpu-time: one ONNX Runtime thread, CPU seconds (time.process_time) instead of wall
# seconds: what each token costs the CPU, insensitive to other processes on a shared
# machine (wall-clock tokens/s are not, there).
CPU_TIME_CODE = r"""
import json, sys, time
from edgellm_ros.config import EngineConfig, GenerationRequest
from edgellm_ros.engine import Engine
runs = int(sys.argv[1])
eng = Engine.load(EngineConfig(max_seq_len=1024, prefill_chunk=512, num_threads=1, eagle_draft=""),
                  log=lambda m: None)
ids = eng.tokenizer.encode("The robot drives along the aisle and checks every shelf for misplaced boxes. " * 60)[:512]
eng.decoder.forward(0, ids)
prefill, decode = [], []
for _ in range(runs):
    t = time.process_time()
    eng.decoder.forward(0, ids)
    prefill.append(512 / (time.process_time() - t))
for _ in range(runs):
    first = []
    res = eng.generate(GenerationRequest(prompt="Tell me about warehouse robots.", max_new_tokens=64,
                                         ignore_eos=True),
                       on_token=lambda ev: first.append(time.process_time()) if not first else None)
    decode.append((res.generated_tokens - 1) / (time.process_time() - first[0]))
med = lambda x: sorted(x)[len(x) // 2]
print(json.dumps({"prefill_tokens_per_s": round(med(prefill), 1), "decode_tokens_per_s": round(med(decode), 1)}))
"""


def bench(python: str, a: argparse.Namespace) -> dict:
    if a.cpu_time:
        out = subprocess.run([python, "-c", CPU_TIME_CODE, str(a.runs)], check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out[out.index("{"):])
    cmd = [python, os.path.join(HERE, "runtime_bench.py"), "--runs", str(a.runs), "--threads", str(a.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--python-a", required=True)
    ap.add_argument("--python-b", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread, CPU seconds per token (prefill of 512 tokens, decode of 64)")
    a = ap.parse_args()
    sides = {"a": {"interpreter": a.python_a, **versions(a.python_a), "runs": []},
             "b": {"interpreter": a.python_b, **versions(a.python_b), "runs": []}}
    for r in range(a.rounds):
        for k in ("a", "b"):
            res = bench(sides[k]["interpreter"], a)
            sides[k]["runs"].append({f: res[f] for f in FIGURES if f in res})
            print(f"round {r + 1} {k} (onnxruntime {sides[k]['onnxruntime']}): "
                  f"prefill {res['prefill_tokens_per_s']} tok/s, decode {res['decode_tokens_per_s']} tok/s",
                  file=sys.stderr, flush=True)
    for s in sides.values():
        s["median"] = {f: statistics.median(x[f] for x in s["runs"]) for f in FIGURES if f in s["runs"][0]}
    out = {
        "what": "benchmarks/runtime_bench.py (default fused int4 graph, embedded SmolLM2-135M Q4_1) "
                "under two onnxruntime versions, runs alternated",
        "date": datetime.date.today().isoformat(), "cpu": cpu_name(), "cores": os.cpu_count(),
        "measure": ("CPU seconds (time.process_time), 1 thread" if a.cpu_time
                    else f"wall seconds, {a.threads} threads"),
        "threads": 1 if a.cpu_time else a.threads, "rounds": a.rounds, "runs_per_round": a.runs,
        "a": sides["a"], "b": sides["b"],
        "ratio_b_over_a": {f: round(sides["b"]["median"][f] / sides["a"]["median"][f], 3)
                           for f in ("prefill_tokens_per_s", "decode_tokens_per_s")},
        # each round's B / A (adjacent runs share the machine's load), then their median
        "ratio_b_over_a_paired_median": {
            f: round(statistics.median(b[f] / a_[f] for a_, b in zip(sides["a"]["runs"], sides["b"]["runs"])), 3)
            for f in ("prefill_tokens_per_s", "decode_tokens_per_s")},
    }
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
