"""What a schema constraint costs per token, next to a decode step of the default engine.

    python benchmarks/constraint_bench.py [--rounds 20] [--max-new-tokens 48] [--no-eagle]

For each robot schema of test/data/robot_schemas.json: the time to compile it
(once per request) and the constraint's work per generated token, the mask
applied to a logits row (llguidance's mask computation plus our 0/-inf add)
and the commit of the chosen token, walked over the schema's valid answers.
The decode step is the default engine's (EngineConfig()) greedy decode time
per token on the schema's prompt, EAGLE off and, with the shipped draft, on
(per committed token: a verify round commits several, and the mask is
applied once per committed token along the accepted path, so its share grows
by the acceptance length).

In generation: the schema's prompt answered under the constraint (greedy),
EAGLE off and on, with Constraint.apply and commit timed where the generator
calls them: the mask's time per committed token, the decode time per token
of that constrained answer, and the share. Prints one JSON object (the CPU
named).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from cpu_bench import machine

from edgellm_ros.runtime import constraints
from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.constraints import LLGUIDANCE_VERSION, GrammarCompiler
from edgellm_ros.runtime.engine import Engine
from edgellm_ros.runtime.speculative import EagleConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_schemas():
    with open(os.path.join(ROOT, "test", "data", "robot_schemas.json"), encoding="utf-8") as fh:
        return {k: v for k, v in json.load(fh).items() if not k.startswith("_")}


def decode_ms(eng: Engine, prompt: str, n_new: int, rounds: int = 3) -> float:
    """Median decode time per generated token (after the first), in ms."""
    times = []
    for _ in range(rounds):
        r = eng.generate(GenerationRequest(prompt=prompt, max_new_tokens=n_new, ignore_eos=True))
        times.append((r.total_time - r.time_to_first_token) / max(r.generated_tokens - 1, 1))
    return 1e3 * statistics.median(times)


def mask_ms(compiler: GrammarCompiler, schema: str, answers, rounds: int):
    """(compile ms, apply + commit ms per token): medians over rounds."""
    rng = np.random.default_rng(0)
    row0 = rng.standard_normal(compiler.vocab_size).astype(np.float32)
    row = row0.copy()
    compile_t, per_token = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        c = compiler.compile(json_schema=schema)
        compile_t.append(time.perf_counter() - t0)
        spent, n = 0.0, 0
        for answer in answers:
            c.rollback(c.committed)
            for t in answer:
                np.copyto(row, row0)                 # a fresh logits row (not timed)
                t0 = time.perf_counter()
                c.apply(row)
                c.commit(t)
                spent += time.perf_counter() - t0
                n += 1
        per_token.append(spent / n)
    return 1e3 * statistics.median(compile_t), 1e3 * statistics.median(per_token)


class MaskTimer:
    """Times Constraint.apply and commit where the generator calls them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.commits = 0
        self._orig = (constraints.Constraint.apply, constraints.Constraint.commit)

    def __enter__(self) -> "MaskTimer":
        apply, commit = self._orig
        timer = self

        def timed_apply(c, logits):
            t0 = time.perf_counter()
            apply(c, logits)
            timer.seconds += time.perf_counter() - t0

        def timed_commit(c, tok):
            t0 = time.perf_counter()
            commit(c, tok)
            timer.seconds += time.perf_counter() - t0
            timer.commits += 1
        constraints.Constraint.apply, constraints.Constraint.commit = timed_apply, timed_commit
        return self

    def __exit__(self, *exc) -> None:
        constraints.Constraint.apply, constraints.Constraint.commit = self._orig


def in_generation(eng: Engine, prompt: str, schema: str, n_new: int, rounds: int = 3):
    """(mask ms per committed token, decode ms per token, mean acceptance length or None):
    medians over rounds of a constrained greedy answer."""
    mask, dec, acc = [], [], None
    for _ in range(rounds):
        with MaskTimer() as t:
            r = eng.generate(GenerationRequest(prompt=prompt, max_new_tokens=n_new, json_schema=schema))
        mask.append(t.seconds / max(t.commits, 1))
        dec.append((r.total_time - r.time_to_first_token) / max(r.generated_tokens - 1, 1))
        acc = r.eagle.mean_acceptance_length if r.eagle is not None else None
    return 1e3 * statistics.median(mask), 1e3 * statistics.median(dec), acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--no-eagle", action="store_true", help="skip the EAGLE decode timing")
    args = ap.parse_args()
    cfg = EngineConfig(eagle_draft="" if args.no_eagle else "default")
    eng = Engine.load(cfg, log=lambda m: None)
    t0 = time.perf_counter()
    compiler = GrammarCompiler(eng.tokenizer, eng.model_config.vocab_size)
    build_s = time.perf_counter() - t0
    out = {"machine": machine(), "llguidance": LLGUIDANCE_VERSION,
           "engine": {"quantization": cfg.quantization, "backend": eng.backend, "threads": cfg.num_threads},
           "tokenizer_build_s": round(build_s, 3), "vocab_size": compiler.vocab_size, "schemas": {}}
    for name, case in load_schemas().items():
        answers = [eng.tokenizer.encode(a) for a in case["valid"]]
        compile_ms, per_tok = mask_ms(compiler, json.dumps(case["schema"]), answers, args.rounds)
        eng.set_eagle(EagleConfig(enabled=False))
        plain = decode_ms(eng, case["prompt"], args.max_new_tokens)
        row = {"compile_ms": round(compile_ms, 3), "mask_ms_per_token": round(per_tok, 4),
               "tokens_walked": sum(map(len, answers)),
               "decode_ms_per_token": round(plain, 3), "share_of_decode_step": round(per_tok / plain, 4)}
        m, d, _ = in_generation(eng, case["prompt"], json.dumps(case["schema"]), args.max_new_tokens)
        row["in_generation"] = {"mask_ms_per_token": round(m, 4), "decode_ms_per_token": round(d, 3),
                                "share_of_decode_step": round(m / d, 4)}
        if eng.drafter is not None:
            eng.set_eagle(EagleConfig(enabled=True))
            eagle = decode_ms(eng, case["prompt"], args.max_new_tokens)
            row.update(eagle_decode_ms_per_token=round(eagle, 3),
                       share_of_eagle_decode_per_token=round(per_tok / eagle, 4))
            m, d, acc = in_generation(eng, case["prompt"], json.dumps(case["schema"]), args.max_new_tokens)
            row["in_generation_eagle"] = {
                "mask_ms_per_token": round(m, 4), "decode_ms_per_token": round(d, 3),
                "share_of_decode_step": round(m / d, 4), "mean_acceptance_length": round(acc or 0, 3)}
            eng.set_eagle(EagleConfig(enabled=False))
        out["schemas"][name] = row
    if eng.drafter is None:
        out["eagle"] = "no EAGLE draft loaded: EAGLE timing left out"
    eng.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
