"""What exact greedy EAGLE costs plain decoding: one-token steps padded to two rows.

    python benchmarks/row_padding_bench.py [--quantization int4,int4-sym,int8] [--rounds 7]
        [--threads 1] [--steps 48]

An engine with an EAGLE draft runs every one-token step as two rows (the
token and a copy of it), so that its rows get the bits a many-row verify
step gives them (docs/EAGLE.md). This times greedy decode steps of the
default model with one-row and with two-row steps, alternating, as process
CPU time per step (with --threads 1 ONNX Runtime runs no thread pool, so the
figure holds on a machine shared with other processes, where wall time
does not), and prints one JSON object: the medians and their ratio per
quantization.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from cpu_bench import machine

from edgellm_ros.runtime.config import EngineConfig
from edgellm_ros.runtime.engine import Engine

PROMPT = "A robot arm picks up the red cube, turns around and puts it in the box on the left."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quantization", default="int4,int4-sym,int8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=48, help="timed decode steps per round and mode")
    a = ap.parse_args()
    out = {"machine": machine(), "threads": a.threads, "rounds": a.rounds, "steps": a.steps, "graphs": {}}
    for q in a.quantization.split(","):
        eng = Engine.load(EngineConfig(max_seq_len=512, eagle_draft="", quantization=q,
                                       num_threads=a.threads), log=lambda m: None)
        dec = eng.decoder
        dec.set_fast_head(True)              # what greedy requests run
        ids = eng.tokenizer.encode(PROMPT)
        p = len(ids)
        ms = {False: [], True: []}
        for r in range(a.rounds):
            for padded in ((False, True) if r % 2 == 0 else (True, False)):
                dec.set_row_padding(padded)
                tok = int(dec.forward(0, ids)[0].argmax())
                t0 = time.process_time()
                for i in range(a.steps):
                    tok = int(dec.forward(p + i, [tok])[0].argmax())
                ms[padded].append((time.process_time() - t0) / a.steps * 1e3)
        one, two = statistics.median(ms[False]), statistics.median(ms[True])
        out["graphs"][eng.decoder.onnx_path.rsplit("/", 1)[-1]] = {
            "one_row_step_cpu_ms": round(one, 2), "two_row_step_cpu_ms": round(two, 2),
            "two_over_one": round(two / one, 3)}
        eng.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
