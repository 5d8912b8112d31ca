"""EAGLE sweep on the CPU: mean acceptance length and decode tokens/s, on vs off.

    python benchmarks/eagle_bench.py [--prompts 8] [--max-new-tokens 96] [--draft DIR]
        [--quantization none|int4|int4-sym|int8] [--grid 1,1,1/2,4,8,0.2/...] [--rounds N]

Prompts: the held-out ("eval") prompts of tools/data/eagle_prompts.jsonl.
Greedy decoding, so every setting produces the same tokens as EAGLE off
(checked here too: ``identical_to_plain_greedy``). With a draft loaded the
engine runs one-token steps padded to two rows (what makes greedy EAGLE
exact, docs/EAGLE.md); ``unpadded_decode_tokens_per_s`` is EAGLE off with
one-row steps, in the same rounds, and ``padded_over_unpadded`` the padded
baseline's tokens/s over it. Prints one JSON object: the baseline and one row per
(drafting_top_k, drafting_step, verify_tree_size[, confidence_threshold]; 0
when not given), like TensorRT-Edge-LLM's sweep. Mean acceptance length = tokens committed per verify step, bonus
token included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from cpu_bench import machine

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.engine import Engine
from edgellm_ros.runtime.speculative import EagleConfig, SpecStats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = [(1, 4, 4, 0.0), (2, 4, 8, 0.0), (4, 4, 16, 0.0), (4, 6, 24, 0.0), (8, 5, 32, 0.0), (8, 8, 64, 0.0),
        (2, 4, 8, 0.1), (2, 4, 8, 0.2), (2, 4, 8, 0.3), (4, 6, 24, 0.2)]


def load_prompts(n: int):
    path = os.path.join(ROOT, "tools", "data", "eagle_prompts.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["prompt"] for r in rows if r.get("split") == "eval"][:n]


def parse_setting(text: str):
    """'k,d,n' or 'k,d,n,t' -> (top_k, step, tree, threshold)."""
    parts = text.split(",")
    if len(parts) not in (3, 4):
        raise SystemExit(f"--grid: {text!r} is not k,d,n[,t]")
    return int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]) if len(parts) == 4 else 0.0


def run(eng: Engine, prompts, n_new: int):
    tokens = 0
    decode_s = 0.0
    outs = []
    stats = SpecStats()
    for p in prompts:
        r = eng.generate(GenerationRequest(prompt=p, max_new_tokens=n_new))
        outs.append(r.token_ids)
        tokens += max(r.generated_tokens - 1, 0)
        decode_s += r.total_time - r.time_to_first_token
        if r.eagle is not None:
            stats.add(r.eagle)
    return outs, tokens / decode_s, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--draft", default="default")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quantization", default="none",
                    help="EngineConfig.quantization (default none: float32, where EAGLE is exact)")
    ap.add_argument("--grid", default="",
                    help="(top_k, step, tree[, threshold]) settings as k,d,n[,t]/...; default: the sweep grid")
    ap.add_argument("--rounds", type=int, default=1,
                    help="passes over EAGLE off and every setting, the order rotated each pass; "
                    "tokens/s are medians over the passes")
    a = ap.parse_args()
    grid = [parse_setting(g) for g in a.grid.split("/")] if a.grid else GRID
    info = machine()
    eng = Engine.load(EngineConfig(eagle_draft=a.draft, max_seq_len=1024, num_threads=a.threads,
                                   quantization=a.quantization), log=lambda m: None)
    prompts = load_prompts(a.prompts)
    t0 = time.perf_counter()
    settings = [None, "unpadded"] + grid   # None: EAGLE off; "unpadded": and one-row steps
    tps: dict = {s: [] for s in settings}
    outs, stats = {}, {}
    for r in range(max(a.rounds, 1)):
        shift = r % len(settings)
        for setting in settings[shift:] + settings[:shift]:
            eng.set_eagle(EagleConfig(True, *setting) if isinstance(setting, tuple) else EagleConfig(False))
            eng.decoder.set_row_padding(setting != "unpadded")
            out, speed, st = run(eng, prompts, a.max_new_tokens)
            tps[setting].append(speed)
            outs.setdefault(setting, out)
            stats.setdefault(setting, st)
    base_tps = statistics.median(tps[None])
    rows = []
    for setting in grid:
        k, d, n, t = setting
        speed = statistics.median(tps[setting])
        rows.append({"drafting_top_k": k, "drafting_step": d, "verify_tree_size": n, "confidence_threshold": t,
                     "decode_tokens_per_s": round(speed, 1), "speedup": round(speed / base_tps, 3),
                     **stats[setting].as_dict(), "identical_to_plain_greedy": outs[setting] == outs[None]})
    eng.close()
    print(json.dumps({"machine": info, "prompts": len(prompts), "max_new_tokens": a.max_new_tokens,
                      "quantization": a.quantization, "rounds": max(a.rounds, 1),
                      "baseline_decode_tokens_per_s": round(base_tps, 1),
                      "unpadded_decode_tokens_per_s": round(statistics.median(tps["unpadded"]), 1),
                      "padded_over_unpadded": round(base_tps / statistics.median(tps["unpadded"]), 3),
                      "unpadded_identical_to_padded": outs["unpadded"] == outs[None], "sweep": rows,
                      "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
