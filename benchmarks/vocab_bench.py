"""Vocabulary reduction: speed and quality of a reduced LM head (issue 23, point 2). Prints JSON.

    python benchmarks/vocab_bench.py [--rounds 5] [--priors 0,4096,8192,...] [--speed-priors 8192,32768]
                                     [--out benchmarks/results/2026-12-07_vocab_bench_epyc.json]

Sets: tools/make_vocab_reduction.py's rule at each ``--priors`` value (specials,
byte tokens, every token of the project's text, of the model's own answers and
of the EAGLE draft's vocabulary, every id below the prior); the shipped set is
the one at its DEFAULT_PRIOR. The measuring text and prompts are not among
the text the sets are made from.

- quality, teacher-forced over benchmarks/data/quality_sample.txt on the int4
  fused graph's whole 8-bit head (a reduced head gives exactly these logits on
  its kept ids, test/test_vocab_reduction_*): top-1 agreement (the full head's
  argmax is kept), the full head's probability mass outside the set, the
  share of text tokens outside it, and KL(reduced || full) = -log(mass kept)
  in nats. KL(full || reduced) is infinite wherever the full head gives a
  dropped token any probability, which a softmax always does; what is left of
  it once both are renormalised over the kept ids is 0 (the reduced
  distribution IS the full one renormalised), so the two finite figures are
  the mass and the reverse KL;
- held-out prompts (never used to make the set: the EAGLE prompt set's held-out
  split and OUT_OF_TEMPLATE below), greedy, --tokens each on the int4 fused
  graph: the share of steps whose full-head argmax is outside the set and the
  share of answers that ever leave it; for the shipped set also the share of
  reduced-greedy answers identical to full-greedy ones (run on the reduced graph);
- decode tokens/s, int4 and int4-sym fused graphs, greedy, --threads threads,
  the shipped draft loaded (as a node with eagle.draft "default" loads it: one-token
  steps padded to two rows), EAGLE off: full head and the sets of
  --speed-priors, alternating every round (medians, min, max); and this
  process's CPU time per token, with one thread for the full and the shipped
  head (a figure other processes on a shared machine disturb less);
- ``--steps-only``: the graph's decode step alone (ms, two-pass head, steps padded to
  two rows), whole head against the shipped set, alternating rounds;
- the form of the reduced output: the graph scattering its [L, K] logits into
  a [L, V] row of -inf (what ships) against the same graph giving [L, K] and
  the runtime mapping the argmax back (decode step time, int4-sym fused).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Any, Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from cpu_bench import machine  # noqa: E402
from make_vocab_reduction import (DEFAULT_PRIOR, cached_answer_counts, draft_vocabulary,  # noqa: E402
                                  held_out_prompts, kept_ids, project_counts)

from edgellm_ros.contract import read_manifest  # noqa: E402
from edgellm_ros.evaluation import log_softmax_rows  # noqa: E402
from edgellm_ros.runtime.config import EngineConfig, GenerationRequest  # noqa: E402
from edgellm_ros.runtime.engine import Engine  # noqa: E402

SAMPLE = os.path.join(HERE, "data", "quality_sample.txt")
#: Held-out prompts outside the templates the set's answers came from.
OUT_OF_TEMPLATE = [
    "How do I make a cup of green tea?", "What should I pack for a weekend hike in the mountains?",
    "Explain how a refrigerator keeps food cold.", "Give me three ideas for a rainy Sunday with kids.",
    "What is the capital of Australia, and why is it not Sydney?", "How do vaccines train the immune system?",
    "Write a Python function that reverses a string.", "What is the difference between weather and climate?",
    "How do I remove a red wine stain from a carpet?", "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?", "How many minutes are there in a week? Show the steps.",
    "Translate 'good morning, where is the train station?' into French.", "What are the rules of chess castling?",
    "Suggest a name for a friendly kitchen robot.", "How should I store fresh basil?",
    "What does a dishwasher robot need to know about fragile glasses?", "Describe the water cycle for a child.",
    "What is a prime number? Give five examples.", "How can I save energy at home in winter?",
]


def kept_mask(ids: List[int], vocab: int) -> np.ndarray:
    m = np.zeros(vocab, bool)
    m[ids] = True
    return m


def write_set(ids: List[int], folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(ids, f)
    return path


def load(quant: str, vocab: str = "", draft: str = "", threads: int = 2) -> Engine:
    return Engine.load(EngineConfig(quantization=quant, eagle_draft=draft, vocab_reduction=vocab, max_seq_len=1024,
                                    prefill_chunk=512, prompt_cache_bytes=0, num_threads=threads), log=lambda m: None)


def quality(eng: Engine, masks: Dict[int, np.ndarray]) -> Dict[str, Any]:
    """Teacher-forced figures of each set over the sample text (whole 8-bit head)."""
    with open(SAMPLE, encoding="utf-8") as f:
        ids = eng.tokenizer.encode(f.read())
    dec = eng.decoder
    dec.set_fast_head(False)
    rows, chunk = [], 128
    for start in range(0, len(ids) - 1, chunk):
        part = ids[start:min(start + chunk, len(ids) - 1)]
        rows.append(log_softmax_rows(np.array(dec.forward(start, part, logits_rows="all"))))
    lp = np.concatenate(rows)                                          # [N, V]
    targets = np.asarray(ids[1:len(lp) + 1])
    top = lp.argmax(-1)
    out = {}
    for prior, m in masks.items():
        kept_mass = np.exp(lp[:, m]).sum(-1)
        out[str(prior)] = {"kept": int(m.sum()), "top1_agreement": round(float(m[top].mean()), 4),
                           "mean_mass_outside": round(float(1 - kept_mass.mean()), 5),
                           "mean_kl_reduced_full_nats": round(float(-np.log(kept_mass).mean()), 5),
                           "text_tokens_outside": round(float(1 - m[targets].mean()), 4)}
    return {"positions": int(len(lp)), "text_tokens": len(ids), "sets": out}


def held_out(eng: Engine, prompts: List[str], tokens: int) -> List[List[int]]:
    return [eng.generate(GenerationRequest(prompt=p, max_new_tokens=tokens)).token_ids for p in prompts]


def leave_stats(answers: List[List[int]], m: np.ndarray) -> Dict[str, Any]:
    steps = [t for a in answers for t in a]
    return {"steps": len(steps), "steps_outside": round(float(np.mean([not m[t] for t in steps])), 5),
            "answers_leaving": round(float(np.mean([not m[a].all() for a in answers])), 4)}


def decode_speed(engines: Dict[str, Engine], rounds: int, tokens: int) -> Dict[str, Any]:
    """Decode tokens/s (wall clock) and CPU ms per token (this process's CPU time; robust to
    other processes on a shared machine, not to their use of memory bandwidth)."""
    q = "What should a mobile robot do when its battery runs low during a delivery?"
    req = GenerationRequest(prompt=q, max_new_tokens=tokens, ignore_eos=True)
    names = list(engines)
    runs: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for eng in engines.values():   # warm-up
        eng.generate(replace(req, max_new_tokens=16))
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            c0 = time.process_time()
            res = engines[n].generate(req)
            cpu[n].append((time.process_time() - c0) / len(res.token_ids) * 1e3)
            runs[n].append(res.tokens_per_second)
    return {n: {"median": round(statistics.median(v), 2), "min": round(min(v), 2), "max": round(max(v), 2),
                "cpu_ms_per_token_median": round(statistics.median(cpu[n]), 3)}
            for n, v in runs.items()}


def output_form(eng: Engine, rounds: int, steps: int) -> Dict[str, Any]:
    """Decode step time: the shipped [L, V] scatter against the same graph giving [L, K]."""
    import onnx

    from edgellm_ros.backends.onnxruntime import OrtDecoder

    art_graph = eng.decoder.onnx_path
    entry = read_manifest(eng.folder)["graphs"][os.path.basename(art_graph)[:-len(".onnx")]]
    with open(os.path.join(eng.folder, entry["vocab_reduction"]["file"]), encoding="utf-8") as f:
        kept = np.array(json.load(f))
    k = len(kept)
    model = onnx.load(art_graph, load_external_data=False)
    g = model.graph
    scatter = next(n for n in g.node if n.op_type == "ScatterElements" and "to_model_ids" in n.name)
    out_id = next(n for n in g.node if n.output[0] == "logits")
    out_id.input[0] = scatter.input[2]                                  # logits = the [L, K] rows
    for o in g.output:
        if o.name == "logits":
            o.type.tensor_type.shape.dim[1].dim_value = k
    cfg = eng.model_config
    emb = np.asarray(eng.decoder.embeddings)
    with tempfile.TemporaryDirectory() as tmp:
        data = entry["weights_file"]   # a hard link: ONNX Runtime refuses data outside the model's folder
        try:
            os.link(os.path.join(eng.folder, data), os.path.join(tmp, data))
        except OSError:
            shutil.copy(os.path.join(eng.folder, data), os.path.join(tmp, data))
        path = os.path.join(tmp, "reduced_output.onnx")
        onnx.save(model, path)
        decs = {"scatter_to_V": OrtDecoder(art_graph, cfg, emb, 256, 8, 2),
                "output_K_mapped_by_runtime": OrtDecoder(path, replace(cfg, vocab_size=k), emb, 256, 8, 2)}
        for d in decs.values():
            d.set_fast_head(True)
        times: Dict[str, List[float]] = {n: [] for n in decs}
        for r in range(rounds):
            for n, d in (list(decs.items())[::-1] if r % 2 else decs.items()):
                t0 = time.perf_counter()
                for p in range(steps):
                    row = d.forward(p, [200 + p])[0]
                    tok = int(np.argmax(row))
                    if n.startswith("output_K"):
                        tok = int(kept[tok])
                times[n].append((time.perf_counter() - t0) / steps * 1e3)
        for d in decs.values():
            d.close()
    return {n: {"median_ms_per_step": round(statistics.median(v), 4), "min": round(min(v), 4)}
            for n, v in times.items()}


def step_times(quant: str, threads: int, rounds: int, steps: int = 64) -> Dict[str, Any]:
    """ms per decode step of the graph alone (two-pass head, steps padded to two rows as with
    the draft loaded), whole head against the shipped set, alternating rounds."""
    engs = {"whole_head": load(quant, threads=threads), "shipped": load(quant, "shipped", threads=threads)}
    times: Dict[str, List[float]] = {k: [] for k in engs}
    try:
        for e in engs.values():
            e.decoder.set_fast_head(True)
            e.decoder.set_row_padding(True)
        for r in range(rounds):
            for k in (list(engs) if r % 2 else list(engs)[::-1]):
                d = engs[k].decoder
                t0 = time.perf_counter()
                for p in range(steps):
                    d.forward(p, [300 + p])
                times[k].append((time.perf_counter() - t0) / steps * 1e3)
    finally:
        for e in engs.values():
            e.close()
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {"median_ms": med, "min_ms": {k: round(min(v), 3) for k, v in times.items()},
            "ratio_whole_over_shipped": round(med["whole_head"] / med["shipped"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128, help="decode tokens per speed run")
    ap.add_argument("--answer-tokens", type=int, default=64, help="tokens per held-out answer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--priors", default="0,4096,8192,12288,16384,20480,24576,32768")
    ap.add_argument("--speed-priors", default="8192,32768", help="sets timed besides the shipped one")
    ap.add_argument("--out", default="")
    ap.add_argument("--steps-only", action="store_true",
                    help="only the graph's decode step time, whole head against the shipped set")
    a = ap.parse_args()
    t_start = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True).stdout.strip() or None
    result: Dict[str, Any] = {"benchmark": "vocab_bench", "commit": commit, "machine": machine(),
                              "threads": a.threads, "command": " ".join(["python"] + sys.argv),
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if a.steps_only:
        result["decode_step"] = {f"{q}@{a.threads}threads": step_times(q, a.threads, a.rounds)
                                 for q in ("int4-sym", "int4")}
        finish(result, a, t_start)
        return
    full = load("int4", threads=a.threads)
    tok, vocab = full.tokenizer, full.model_config.vocab_size
    observed = set(cached_answer_counts(240, 64, a.threads)) | set(project_counts(tok)) | set(draft_vocabulary())
    priors = sorted({int(p) for p in a.priors.split(",")} | {DEFAULT_PRIOR})
    sets = {p: kept_ids(tok, vocab, observed, p) for p in priors}
    with open(os.path.join(ROOT, "vocab", "smollm2-135m-instruct.json"), encoding="utf-8") as f:
        shipped = json.load(f)
    # the shipped file stands for its prior (the rule's text, docs included, moves on)
    result["shipped"] = {"prior": DEFAULT_PRIOR, "kept": len(shipped),
                         "rule_today_differs_by": len(set(shipped) ^ set(sets[DEFAULT_PRIOR]))}
    sets[DEFAULT_PRIOR] = shipped
    masks = {p: kept_mask(ids, vocab) for p, ids in sets.items()}
    result["quality_sample"] = quality(full, masks)
    print(json.dumps(result["quality_sample"]), file=sys.stderr)
    in_template, other = held_out_prompts(), OUT_OF_TEMPLATE
    answers = held_out(full, in_template + other, a.answer_tokens)
    full.close()
    result["held_out"] = {"prompts": {"eagle_prompts_eval": len(in_template), "out_of_template": len(other)},
                          "tokens_per_answer": a.answer_tokens, "sets": {}}
    for p, m in masks.items():
        result["held_out"]["sets"][str(p)] = {"kept": int(m.sum()), "all": leave_stats(answers, m),
                                              "eagle_prompts_eval": leave_stats(answers[:len(in_template)], m),
                                              "out_of_template": leave_stats(answers[len(in_template):], m)}
    red = load("int4", "shipped", threads=a.threads)
    reduced = held_out(red, in_template + other, a.answer_tokens)
    red.close()
    result["held_out"]["shipped_reduced_greedy"] = {
        "identical_answers": round(float(np.mean([x == y for x, y in zip(answers, reduced)])), 4),
        "answers_outside_set": sum(1 for x in reduced if not masks[DEFAULT_PRIOR][x].all())}
    print(json.dumps(result["held_out"]), file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=os.environ.get("EDGELLM_CACHE")) as tmp:
        engines: Dict[str, Engine] = {}
        for quant in ("int4", "int4-sym"):
            engines[f"{quant}"] = load(quant, draft="default", threads=a.threads)
            for p in sorted({int(x) for x in a.speed_priors.split(",")} | {DEFAULT_PRIOR}):
                path = write_set(sets[p], tmp, f"prior{p}.json")
                engines[f"{quant}/K={len(sets[p])}"] = load(quant, path, draft="default", threads=a.threads)
            # one thread: CPU time per token is then the kernels' own (no spinning second thread)
            engines[f"{quant}@1thread"] = load(quant, draft="default", threads=1)
            engines[f"{quant}@1thread/K={len(shipped)}"] = load(quant, "shipped", draft="default", threads=1)
        speed = decode_speed(engines, a.rounds, a.tokens)
        for eng in engines.values():
            eng.close()
    result["decode_tok_s"] = speed
    result["decode_ratio_to_full"] = {n: round(v["median"] / speed[n.split("/")[0]]["median"], 3)
                                      for n, v in speed.items() if "/" in n}
    result["cpu_time_ratio_full_over_reduced"] = {
        n: round(speed[n.split("/")[0]]["cpu_ms_per_token_median"] / v["cpu_ms_per_token_median"], 3)
        for n, v in speed.items() if "/" in n}
    print(json.dumps(speed), file=sys.stderr)
    red = load("int4-sym", "shipped", threads=a.threads)
    result["output_form_int4_sym_shipped"] = output_form(red, a.rounds, 64)
    red.close()
    finish(result, a, t_start)


def finish(result: Dict[str, Any], a: argparse.Namespace, t_start: float) -> None:
    result["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.time() - t_start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
