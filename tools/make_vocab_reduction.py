#!/usr/bin/env python3
"""Make the reduced vocabulary (the token ids an LM head keeps) for a deployment.

    python tools/make_vocab_reduction.py                  # the shipped set: vocab/smollm2-135m-instruct.json
    python tools/make_vocab_reduction.py --prior 12000 --text my_logs.txt --out my_vocab.json [--model M]

A token is kept when any of these holds (runtime/vocab.py has the file format):

1. it is one of the tokenizer's special tokens (end tokens, chat markers) or one
   of its 256 byte tokens, so any text can still be written;
2. it occurs in text the project ships: the training prompts of the EAGLE draft
   (tools/data/eagle_prompts_extended.jsonl, held-out prompts excluded) in the
   chat template, the LoRA demo's data, the docs and README; and ``--text``
   files of the deployment (benchmarks/data/quality_sample.txt is left out: the
   benchmark measures on it);
3. it occurs in text the project makes with its own engine: the model's greedy
   answers to ``--answers`` of those training prompts (``--tokens`` each; their
   counts are cached in tools/data/vocab_answer_counts.json, so only the first
   run generates); and the shipped EAGLE draft's vocabulary, the 4096 most
   frequent tokens of the model's 4,572 greedy answers it was trained on
   (drafts/smollm2-135m-eagle3: d2t maps its ids to model ids);
4. its id is below ``--prior``: a byte-level BPE numbers its merges in the
   order it learnt them, most frequent pair first, so a low id is a token
   that was frequent in the tokenizer's own training corpus, a frequency prior
   for everything the project's text is too small to show.

The held-out prompts (split "eval") are never used, so benchmarks/vocab_bench.py
can measure on them how often greedy decoding wants a token outside the set.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from typing import Dict, Iterable, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPTS = os.path.join(ROOT, "tools", "data", "eagle_prompts_extended.jsonl")
ANSWER_COUNTS = os.path.join(ROOT, "tools", "data", "vocab_answer_counts.json")
SHIPPED_OUT = os.path.join(ROOT, "vocab", "smollm2-135m-instruct.json")
#: The merge-order prior of the shipped set (docs/VOCAB_REDUCTION.md: the measured trade-off).
DEFAULT_PRIOR = 16384


def training_prompts() -> List[str]:
    with open(PROMPTS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["prompt"] for r in rows if r.get("split") != "eval"]


def held_out_prompts() -> List[str]:
    with open(PROMPTS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["prompt"] for r in rows if r.get("split") == "eval"]


def shipped_texts() -> List[str]:
    """The project's own text files the set is counted over."""
    paths = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.append(f.read())
    with open(os.path.join(ROOT, "tools", "data", "lora_radiology.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.extend(str(v) for v in json.loads(line).values() if isinstance(v, str))
    return out


def answer_counts(prompts: Sequence[str], tokens: int, threads: int, log=print, model: str = "") -> Dict[int, int]:
    """Token counts of the model's own greedy answers to ``prompts`` (int4 fused graph)."""
    from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
    from edgellm_ros.runtime.engine import Engine

    eng = Engine.load(EngineConfig(model=model, quantization="int4", eagle_draft="", max_seq_len=512,
                                   prompt_cache_bytes=0, num_threads=threads), log=lambda m: None)
    counts: Counter = Counter()
    t0 = time.perf_counter()
    try:
        for i, p in enumerate(prompts):
            counts.update(eng.generate(GenerationRequest(prompt=p, max_new_tokens=tokens)).token_ids)
            if i % 25 == 24:
                log(f"{i + 1}/{len(prompts)} answers, {sum(counts.values())} tokens, "
                    f"{time.perf_counter() - t0:.0f} s")
    finally:
        eng.close()
    return {int(k): int(v) for k, v in sorted(counts.items())}


def cached_answer_counts(answers: int, tokens: int, threads: int, log=print, model: str = "") -> Dict[int, int]:
    """answer_counts over the first ``answers`` training prompts (every 15th), cached on disk.

    The cache holds the embedded default model's counts; another ``model``'s are not cached.
    """
    key = {"answers": answers, "tokens": tokens, "prompts": os.path.basename(PROMPTS)}
    if os.path.exists(ANSWER_COUNTS) and not model:
        with open(ANSWER_COUNTS, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return {int(k): v for k, v in cached["counts"].items()}
    prompts = training_prompts()[::15][:answers]
    counts = answer_counts(prompts, tokens, threads, log, model)
    if model:
        return counts
    with open(ANSWER_COUNTS, "w", encoding="utf-8") as f:
        json.dump({"key": key, "note": "token counts of the default model's greedy answers (int4 fused "
                   "graph) to every 15th training prompt of the EAGLE prompt set; made by "
                   "tools/make_vocab_reduction.py", "counts": counts}, f, separators=(",", ":"))
        f.write("\n")
    return counts


def draft_vocabulary() -> List[int]:
    """Model ids of the shipped EAGLE-3 draft's vocabulary (its d2t maps draft ids to them)."""
    import numpy as np
    from safetensors.numpy import load_file

    d2t = load_file(os.path.join(ROOT, "drafts", "smollm2-135m-eagle3", "model.safetensors"))["d2t"]
    return (np.arange(len(d2t)) + d2t).astype(int).tolist()


def text_counts(tokenizer, texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(tokenizer.encode(t))
    return counts


def project_counts(tokenizer, extra_texts: Sequence[str] = ()) -> Counter:
    """Token counts of the shipped text: chat-templated training prompts, docs, data, extra texts."""
    chats = (tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in training_prompts())
    return text_counts(tokenizer, list(chats) + shipped_texts() + list(extra_texts))


def kept_ids(tokenizer, vocab_size: int, observed: Iterable[int], prior: int) -> List[int]:
    """Specials, byte tokens, every observed id and every id below ``prior``, sorted."""
    keep = set(tokenizer.special_ids) | set(tokenizer.stop_ids) | set(tokenizer.byte_token_ids())
    keep |= {int(i) for i in observed}
    keep |= set(range(min(prior, vocab_size)))
    return sorted(i for i in keep if 0 <= i < vocab_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", type=int, default=DEFAULT_PRIOR, help="keep every id below this (merge order)")
    ap.add_argument("--answers", type=int, default=240, help="training prompts the model answers")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", action="append", default=[], help="a text file of the deployment (repeatable)")
    ap.add_argument("--model", default="", help="GGUF or Hugging Face folder (default: the embedded model)")
    ap.add_argument("--out", default=SHIPPED_OUT)
    args = ap.parse_args()

    from edgellm_ros.runtime.engine_dir import ensure_engine
    from edgellm_ros.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_hf_folder(ensure_engine(args.model, "", log=lambda m: None))
    extra = []
    for p in args.text:
        with open(p, encoding="utf-8") as f:
            extra.append(f.read())
    answers = cached_answer_counts(args.answers, args.tokens, args.threads,
                                   log=lambda m: print(m, file=sys.stderr), model=args.model)
    shipped = project_counts(tok, extra)
    draft = [] if args.model else draft_vocabulary()
    ids = kept_ids(tok, tok.vocab_size, set(answers) | set(shipped) | set(draft), args.prior)
    tok.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(ids, f, separators=(",", ":"))
        f.write("\n")
    above = sum(1 for i in ids if i >= args.prior)
    print(json.dumps({"out": os.path.relpath(args.out, ROOT), "kept": len(ids), "prior": args.prior,
                      "observed_in_answers": len(answers), "observed_in_shipped_text": len(shipped),
                      "draft_vocabulary": len(draft),
                      "kept_above_prior": above}))


if __name__ == "__main__":
    main()
