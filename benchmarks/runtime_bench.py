"""Runtime benchmark on the CPU: prints one JSON object.

    python benchmarks/runtime_bench.py [--model PATH] [--threads N] [--runs 5]

Figures (medians over --runs):
- prefill_tokens_per_s: one 512-token prompt through the decoder graph;
- decode_tokens_per_s: 128 generated tokens (greedy, end tokens ignored),
  measured by the generator after the first token;
- ttft_s_{cold,warm}_prompt_cache: time to first token of a request whose
  system prompt is not / is in the system-prompt cache;
- python_overhead_us_per_token: decode wall time per token minus the time
  inside ONNX Runtime's run (binding, embedding row, sampling, detokenizing,
  stop checks, the token callback), median over --runs requests;
- peak_rss_mib: the process's peak resident memory.

    python benchmarks/runtime_bench.py --quantization int4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.engine import Engine

SYSTEM = ("You are the on-board assistant of a mobile robot in a warehouse. You answer "
          "operators' questions about the robot's surroundings, its task and its state. "
          "Be brief and precise, say when you are unsure, never invent sensor readings, "
          "and prefer safe actions: stop, slow down, keep distance from people and stairs. ") * 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quantization", default=EngineConfig.quantization)
    a = ap.parse_args()
    t0 = time.perf_counter()
    eng = Engine.load(EngineConfig(model=a.model, max_seq_len=1024, prefill_chunk=512,
                                   num_threads=a.threads, quantization=a.quantization,
                                   eagle_draft=""), log=lambda m: None)
    load_s = time.perf_counter() - t0
    tok = eng.tokenizer
    text = "The robot drives along the aisle and checks every shelf for misplaced boxes. " * 60
    ids = tok.encode(text)[:512]
    prefill = []
    for _ in range(a.runs + 1):
        t = time.perf_counter()
        eng.decoder.forward(0, ids)
        prefill.append(512 / (time.perf_counter() - t))
    decode, overhead = [], []
    dec, inside = eng.decoder, [0.0]
    run = dec._c_run

    def timed_run(binding, opts):
        t = time.perf_counter()
        run(binding, opts)
        inside[0] += time.perf_counter() - t
    dec._c_run = timed_run
    for _ in range(a.runs):
        inside[0] = 0.0
        at_first = []

        def on_token(ev):
            if not at_first:
                at_first.append(inside[0])   # the prefill's runs are done
        res = eng.generate(GenerationRequest(prompt="Tell me about warehouse robots.",
                                             max_new_tokens=128, ignore_eos=True), on_token=on_token)
        decode.append(res.tokens_per_second)
        n = res.generated_tokens - 1
        wall = res.total_time - res.time_to_first_token
        overhead.append((wall - (inside[0] - at_first[0])) / n)
    dec._c_run = run
    cold, warm = [], []
    req = GenerationRequest(prompt="Is the aisle clear?", system_prompt=SYSTEM, max_new_tokens=1)
    for _ in range(a.runs):
        eng.prompt_cache.clear()
        cold.append(eng.generate(req).time_to_first_token)
        r = eng.generate(req)
        warm.append(r.time_to_first_token)
    out = {
        "model": eng.folder, "backend": eng.backend, "machine": platform.processor() or platform.machine(),
        "engine_load_s": round(load_s, 2),
        "prefill_tokens_per_s": round(statistics.median(prefill[1:]), 1),
        "decode_tokens_per_s": round(statistics.median(decode), 1),
        "python_overhead_us_per_token": round(statistics.median(overhead) * 1e6, 1),
        "quantization": a.quantization,
        "ttft_s_cold_prompt_cache": round(statistics.median(cold), 4),
        "ttft_s_warm_prompt_cache": round(statistics.median(warm), 4),
        "prompt_tokens_with_system": r.prompt_tokens, "cached_tokens": r.cached_tokens,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "runs": a.runs,
    }
    eng.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
