"""Time to first token of a conversation's 10th turn, with and without the prompt cache.

    python benchmarks/conversation_bench.py [--turns 10] [--rounds 5] [--answer-tokens 120]

A robot operator's conversation is built turn by turn on the default engine
(EngineConfig(), int4, EAGLE off): each turn's answer (greedy, up to
--answer-tokens) goes into the history, so turn 10 carries about 1,000 tokens
of history (printed). Then turn
10 is timed --rounds times each way, alternating:

* cached: the cache holds what the conversation left in it (turn 9 with its
  answer, cached after the answer as the ROS worker does), so turn 10 restores
  it and computes its own message only;
* cold: prompt cache off, the whole prompt is prefilled.

Prints one JSON object: the CPU, the prompt and cached token counts, median
time to first token each way and their ratio (goal: <= 0.2, issue 21).
"""

from __future__ import annotations

import argparse
import json
import statistics

from cpu_bench import machine

from edgellm_ros.runtime.config import ChatMessage, EngineConfig, GenerationRequest
from edgellm_ros.runtime.engine import Engine

SYSTEM = "You are the assistant of a warehouse robot. Answer the operator briefly."
QUESTIONS = [
    "Describe where the robot is now and what is around it.", "Explain what is stored on shelf B3.",
    "Describe the blue crate and how the robot should lift it.",
    "Explain whether the robot can carry two crates at once, and why.",
    "Describe which aisle is blocked and how to get around it.",
    "Explain how long it takes to reach the dock and what slows the robot down.",
    "Describe the state of the battery and when to charge it.",
    "Explain who asked for the last delivery and what it contained.",
    "Describe what we should move first and in which order.",
    "Go to the loading dock and report what you see there.",
]


def turn_request(history, question: str, n_new: int) -> GenerationRequest:
    msgs = (ChatMessage("system", SYSTEM),) + tuple(history) + (ChatMessage("user", question),)
    return GenerationRequest(messages=msgs, max_new_tokens=n_new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--answer-tokens", type=int, default=120)
    args = ap.parse_args()
    eng = Engine.load(EngineConfig(eagle_draft=""), log=lambda m: None)
    info = machine()
    history = []
    for i in range(args.turns - 1):
        q = QUESTIONS[i % len(QUESTIONS)]
        res = eng.generate(turn_request(history, q, args.answer_tokens))
        eng.cache_answer()               # what the node's worker does once the answer is out
        history += [ChatMessage("user", q), ChatMessage("assistant", res.text)]
    last = turn_request(history, QUESTIONS[(args.turns - 1) % len(QUESTIONS)], 1)
    gen = eng.generator
    cache = gen.cache
    cached, cold = [], []
    res_c = res_0 = None
    for _ in range(args.rounds):
        gen.cache = cache
        res_c = eng.generate(last)       # restores turn 9 with its answer
        cached.append(res_c.time_to_first_token)
        # the next round restores what turn 9 left, as in a conversation: drop turn 10's entries
        cache.clear()
        again = eng.generate(turn_request(history[:-2], history[-2].content, args.answer_tokens))
        assert again.text == history[-1].content, "turn 9 answered otherwise (greedy must repeat)"
        eng.cache_answer()
        gen.cache = None
        res_0 = eng.generate(last)
        cold.append(res_0.time_to_first_token)
    gen.cache = cache
    assert res_c is not None and res_0 is not None and res_c.token_ids == res_0.token_ids
    med_c, med_0 = statistics.median(cached), statistics.median(cold)
    out = {
        "machine": info, "engine": {"quantization": eng.config.quantization, "backend": eng.backend,
                                    "prefill_chunk": eng.config.prefill_chunk},
        "turn": args.turns, "prompt_tokens": res_c.prompt_tokens, "cached_tokens": res_c.cached_tokens,
        "computed_tokens_cached": res_c.prompt_tokens - res_c.cached_tokens,
        "ttft_ms_cached": round(1e3 * med_c, 2), "ttft_ms_cold": round(1e3 * med_0, 2),
        "ttft_ms_cached_all": [round(1e3 * t, 2) for t in cached],
        "ttft_ms_cold_all": [round(1e3 * t, 2) for t in cold],
        "ratio_cached_over_cold": round(med_c / med_0, 4), "goal": "<= 0.2",
        "met": med_c / med_0 <= 0.2,
    }
    eng.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
