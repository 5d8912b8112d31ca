#!/usr/bin/env python3
"""Train an EAGLE-3 draft for a base model by self-distillation.

The draft is exactly the network that ``edgellm_ros/models/eagle.py`` loads
and runs (its module docstring and ``DraftReference`` are the definition): fc
over three base layers' features, one decoder layer whose attention reads
[rms(embedding); rms(hidden)], the incoming hidden as residual, a SwiGLU MLP, a
final norm and an LM head over a reduced draft vocabulary mapped back to base
ids by ``d2t``. The token embedding is the base model's and is neither trained
nor saved.

Pipeline (one command, see docs/EAGLE_TRAINING.md):

1. Prompts from a JSONL file (``{"prompt": ..., "split": "eval"?}``, the
   project ships tools/data/eagle_prompts.jsonl, made by tools/eagle_data.py),
   rendered with the base model's chat template (one user message, generation
   prompt added).
2. The base model writes its own greedy answers (batched, left padding);
   optionally also ``--sampled`` sampled answers per training prompt, which
   adds contexts the greedy runs never reach.
3. The base runs over prompt + answer with ``output_hidden_states``: the
   features are the residual stream after the layers of ``--layers``
   (transformers' ``hidden_states[id + 1]``) concatenated, [T, 3H]; the
   teacher is the base's next-token distribution, kept as the final-norm
   output so logits can be recomputed over the draft vocabulary.
4. Draft vocabulary: the ``--draft-vocab`` most frequent tokens of the answers
   plus the chat special tokens, sorted by base id; ``d2t[i] = base_id(i) - i``.
5. Training with EAGLE-3's training-time test over ``--ttt-steps`` unrolled
   steps: at step 0 the draft at position i reads (emb(t[i+1]), fc(f[i])) at
   rotary position i, with causal attention over the step-0 keys; at step j>0
   the chain anchored at i reads (emb(t[i+1+j]), its own step j-1 output) at
   rotary position i+j and attends to the step-0 keys at positions <= i and to
   its own keys of steps 1..j (what the runtime's tree does: a node at depth d
   sees the draft KV of the accepted prefix and its ancestors). Every step is
   trained towards the base distribution at position i+j+1 restricted to the
   draft vocabulary (soft cross-entropy; positions whose base argmax is outside
   the draft vocabulary are masked), on the answer tokens.
6. The checkpoint with the best mean acceptance estimate on the held-out
   prompts is written as ``config.json`` + ``model.safetensors`` (float16),
   with ``train_log.json`` (every figure printed) and ``answers.jsonl``.

torch and transformers are optional dependencies of the project: only this
script needs them (plus ``gguf`` and ``accelerate`` to read a GGUF file).

The shipped draft (drafts/smollm2-135m-eagle3: three stages of about 490 s on
one H100, the answers generated once; its README and train_log*.json have the
figures)::

    python3 tools/train_eagle.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --prompts tools/data/eagle_prompts_extended.jsonl --out stage1 --device cuda \\
        --sampled 10 --gen-batch 2048 --gen-seconds 230 --feat-dtype bfloat16 \\
        --final-dtype bfloat16 --ttt-steps 4 --batch-tokens 32768 --epochs 100 \\
        --lr 6e-4 --warmup 100 --train-seconds 300 --deadline 540 --cache answers.pt
    # then --out stage2 --init stage1 --lr 4e-4 --train-seconds 440 --deadline 560,
    # then --out final --init stage2 --lr 3e-4 --warmup 50 --train-seconds 420 --deadline 545

Checking a draft (runtime loader and NumPy reference, plain-chain acceptance)::

    python3 tools/train_eagle.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --check drafts/smollm2-135m-eagle3 --device cpu --limit-eval 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PROMPTS = os.path.join(HERE, "data", "eagle_prompts.jsonl")
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- inputs


def read_prompts(path: str, limit: int = 0, limit_eval: int = 0) -> Tuple[List[str], List[str]]:
    """(train prompts, eval prompts) of a JSONL file."""
    from hf_base import read_split_jsonl

    rows, held_rows = read_split_jsonl(path, ["prompt"])
    train, held = [r["prompt"] for r in rows], [r["prompt"] for r in held_rows]
    if limit:
        train = train[:limit]
    if limit_eval:
        held = held[:limit_eval]
    return train, held


def load_base(args: argparse.Namespace) -> Tuple[Any, Any]:
    """(tokenizer, model) in float32 on args.device, from a GGUF file or a HF folder."""
    from hf_base import load_base as load

    tok, model, digits = load(args.gguf, args.model, args.digits_pretokenizer)
    log(f"base loaded: {type(model).__name__}, pre-tokenizer {'Digits+ByteLevel' if digits else 'as loaded'}")
    return tok, model.to(args.device).eval()


def render(tok: Any, prompt: str) -> List[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


# --------------------------------------------------------------------------- data


def generate(model: Any, prompts: List[List[int]], eos: int, pad: int, max_new: int, batch: int,
             device: str, sample: bool = False, temperature: float = 0.8, seed: int = 0,
             stop_at: float = 0.0) -> List[List[int]]:
    """The base model's answers (greedy or sampled), ending at EOS (kept) or max_new.

    With stop_at (a time.time() value), batches not started by then are left empty.
    """
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: List[List[int]] = [[] for _ in prompts]
    if sample:
        torch.manual_seed(seed)  # generate() draws from the global generator
    for b0 in range(0, len(order), batch):
        if stop_at and time.time() > stop_at:
            log(f"  generation deadline: {len(order) - b0} prompts left without an answer")
            break
        idx = order[b0:b0 + batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        kw: Dict[str, Any] = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sample:
            kw = dict(do_sample=True, temperature=temperature, top_p=None, top_k=None)
        with torch.no_grad():
            out = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                                 eos_token_id=eos, pad_token_id=pad, **kw)
        new = out[:, width:].tolist()
        for r, i in enumerate(idx):
            a = new[r]
            if eos in a:
                a = a[:a.index(eos) + 1]
            answers[i] = a
        log(f"  {'sampled' if sample else 'greedy'} answers {min(b0 + batch, len(order))}/{len(order)}")
    return answers


def pick_vocab(answers: Sequence[Sequence[int]], size: int, always: Sequence[int], vocab: int) -> List[int]:
    """The draft vocabulary: `always` plus the most frequent answer tokens, sorted by id."""
    counts: Dict[int, int] = {}
    for a in answers:
        for t in a:
            counts[t] = counts.get(t, 0) + 1
    chosen = {t for t in always if 0 <= t < vocab}
    for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(chosen) >= size:
            break
        chosen.add(t)
    rest = iter(t for t in range(vocab) if t not in chosen)  # fewer distinct tokens than `size`
    while len(chosen) < size:
        chosen.add(next(rest))
    return sorted(chosen)


def coverage(answers: Sequence[Sequence[int]], ids: Sequence[int]) -> float:
    s = set(ids)
    tot = sum(len(a) for a in answers)
    return sum(1 for a in answers for t in a if t in s) / max(1, tot)


def features(model: Any, seqs: List[List[int]], layers: Sequence[int], batch: int, device: str,
             feat_dtype: Any, final_dtype: Any = None) -> Tuple[Any, Any, Any, List[int]]:
    """Every sequence's rows, packed one after another (no padding) into
    features [N + 1, len(layers)*H], final-norm output [N + 1, H] and base argmax [N + 1],
    N = the total token count; row N is a padding row (zeros, argmax -1).
    Returns them and the first row of each sequence."""
    import torch

    offsets, n = [], 0
    for s in seqs:
        offsets.append(n)
        n += len(s)
    head = model.get_output_embeddings().weight
    hsz = head.shape[1]
    feats = torch.zeros((n + 1, len(layers) * hsz), dtype=feat_dtype, device=device)
    finals = torch.zeros((n + 1, hsz), dtype=final_dtype or torch.float32, device=device)
    argmax = torch.full((n + 1,), -1, dtype=torch.long, device=device)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b0 in range(0, len(order), batch):
        idx = order[b0:b0 + batch]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):  # right padding: causal rows of real tokens never see it
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        with torch.no_grad():
            out = model.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                              output_hidden_states=True, use_cache=False)
            hs = out.hidden_states
            f = torch.cat([hs[i + 1] for i in layers], -1)
            last = out.last_hidden_state
            am = torch.empty(last.shape[:2], dtype=torch.long, device=device)
            for c in range(0, width, 256):  # full-vocab argmax without a [B, T, V] tensor at once
                am[:, c:c + 256] = (last[:, c:c + 256] @ head.T).argmax(-1)
        for r, i in enumerate(idx):
            o, k = offsets[i], len(seqs[i])
            feats[o:o + k] = f[r, :k]
            finals[o:o + k] = last[r, :k]
            argmax[o:o + k] = am[r, :k]
    return feats, finals, argmax, offsets


# --------------------------------------------------------------------------- the draft


def build_draft_class():
    """The torch module (defined lazily: torch is optional)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RMSNorm(nn.Module):
        def __init__(self, n: int, eps: float):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.eps = eps

        def forward(self, x):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)) * self.weight.float()

    class Attn(nn.Module):
        def __init__(self, h: int, nh: int, kvh: int, d: int):
            super().__init__()
            self.q_proj = nn.Linear(2 * h, nh * d, bias=False)
            self.k_proj = nn.Linear(2 * h, kvh * d, bias=False)
            self.v_proj = nn.Linear(2 * h, kvh * d, bias=False)
            self.o_proj = nn.Linear(nh * d, h, bias=False)

    class MLP(nn.Module):
        def __init__(self, h: int, inter: int):
            super().__init__()
            self.gate_proj = nn.Linear(h, inter, bias=False)
            self.up_proj = nn.Linear(h, inter, bias=False)
            self.down_proj = nn.Linear(inter, h, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class MidLayer(nn.Module):
        def __init__(self, c: Dict[str, Any]):
            super().__init__()
            h = c["hidden_size"]
            self.input_layernorm = RMSNorm(h, c["rms_norm_eps"])
            self.hidden_norm = RMSNorm(h, c["rms_norm_eps"])
            self.self_attn = Attn(h, c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"])
            self.post_attention_layernorm = RMSNorm(h, c["rms_norm_eps"])
            self.mlp = MLP(h, c["intermediate_size"])

    class Eagle3Draft(nn.Module):
        """EAGLE-3 draft; parameter names are the checkpoint's tensor names (d2t aside)."""

        def __init__(self, c: Dict[str, Any]):
            super().__init__()
            self.c = c
            h, nt = c["hidden_size"], len(c["target_layer_ids"]) * c["target_hidden_size"]
            self.fc = nn.Linear(nt, h, bias=False)
            self.midlayer = MidLayer(c)
            self.norm = RMSNorm(h, c["rms_norm_eps"])
            self.lm_head = nn.Linear(h, c["draft_vocab_size"], bias=False)
            d = c["head_dim"]
            inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
            self.register_buffer("inv_freq", inv.float(), persistent=False)

        def rope(self, pos):
            """cos, sin [B, 1, T, D] for integer positions [B, T]."""
            ang = pos.float()[..., None] * self.inv_freq
            ang = torch.cat([ang, ang], -1)[:, None]
            return ang.cos(), ang.sin()

        @staticmethod
        def rotate(x, cos, sin):
            half = x.shape[-1] // 2
            return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

        def qkv(self, emb, hidden, pos):
            """Projections of one step: q [B, NH, T, D], k, v [B, KVH, T, D] (rotated)."""
            c, m = self.c, self.midlayer
            b, t, _ = hidden.shape
            x = torch.cat([m.input_layernorm(emb), m.hidden_norm(hidden)], -1).to(hidden.dtype)
            d = c["head_dim"]
            q = m.self_attn.q_proj(x).view(b, t, -1, d).transpose(1, 2)
            k = m.self_attn.k_proj(x).view(b, t, -1, d).transpose(1, 2)
            v = m.self_attn.v_proj(x).view(b, t, -1, d).transpose(1, 2)
            cos, sin = self.rope(pos)
            return self.rotate(q, cos, sin), self.rotate(k, cos, sin), v

        def finish(self, hidden, att):
            """o_proj, residual (the incoming hidden), MLP; returns (out, logits)."""
            m = self.midlayer
            a = hidden + m.self_attn.o_proj(att)
            out = a + m.mlp(m.post_attention_layernorm(a).to(a.dtype))
            return out, self.lm_head(self.norm(out).to(out.dtype))

        def ttt(self, emb_of, feats, tokens, steps: int):
            """Training-time test. feats [B, T, F], tokens [B, T] (the sequence t_0..t_{T-1}).

            Returns logits per step [B, T, Vd]: step j at row i is the chain anchored at i,
            which read emb(t[i+1+j]) at rotary position i+j and predicts t[i+j+2].
            """
            c = self.c
            b, t = tokens.shape
            g = c["num_attention_heads"] // c["num_key_value_heads"]
            scale = 1.0 / math.sqrt(c["head_dim"])
            ar = torch.arange(t, device=tokens.device)
            causal = torch.full((t, t), float("-inf"), device=tokens.device).triu(1)
            hidden = self.fc(feats).float()  # residual stream kept in float32 under autocast
            k0 = v0 = None
            ks, vs, out_logits = [], [], []
            for j in range(steps):
                nxt = torch.roll(tokens, -(1 + j), dims=1)  # t[i+1+j]; wrapped tail rows are masked out
                pos = (ar + j).expand(b, t)
                q, k, v = self.qkv(emb_of(nxt), hidden, pos)
                k = k.repeat_interleave(g, 1)
                v = v.repeat_interleave(g, 1)
                if j == 0:
                    k0, v0 = k, v
                else:
                    ks.append(k)
                    vs.append(v)
                s0 = (q @ k0.transpose(-1, -2)).float() * scale + causal  # step-0 keys at <= i
                diag = [(q * kk).sum(-1, keepdim=True).float() * scale for kk in ks]  # own chain
                p = torch.softmax(torch.cat([s0] + diag, -1), -1)
                att = p[..., :t].to(v0.dtype) @ v0
                for m, vv in enumerate(vs):
                    att = att + p[..., t + m:t + m + 1].to(vv.dtype) * vv
                att = att.transpose(1, 2).reshape(b, t, -1)
                hidden, logits = self.finish(hidden, att)
                out_logits.append(logits)
            return out_logits

    return Eagle3Draft


# --------------------------------------------------------------------------- training


class Data:
    """Some of the packed sequences of `features` (which stay on the device, shared);
    batches are gathered into padded tensors."""

    def __init__(self, packed, seqs, prompt_lens, offsets):
        import torch

        self.feats, self.finals, self.argmax_flat, self.tokens_flat = packed
        dev = self.feats.device
        self.pad_row = self.feats.shape[0] - 1
        self.n_list = [len(s) for s in seqs]
        self.lens = torch.tensor(self.n_list, device=dev)
        self.plens = torch.tensor(prompt_lens, device=dev)
        self.off = torch.tensor(offsets, device=dev)
        self.n_tokens = int(sum(self.n_list))
        self.n_answer = int(sum(n - p for n, p in zip(self.n_list, prompt_lens)))

    def batch(self, idx):
        """Padded (t, tokens [B, t], feats [B, t, F], finals [B, t, H] float32, base argmax [B, t])
        of the sequences idx (a device tensor); padding: token 0, zero rows, argmax -1."""
        import torch

        t = max(self.n_list[i] for i in idx.tolist())
        ar = torch.arange(t, device=idx.device)[None]
        rows = torch.where(ar < self.lens[idx][:, None], self.off[idx][:, None] + ar, self.pad_row)
        return t, self.tokens_flat[rows], self.feats[rows], self.finals[rows].float(), self.argmax_flat[rows]

    def batches(self, max_tokens: int, shuffle: Optional[random.Random]) -> List[List[int]]:
        order = sorted(range(len(self.n_list)), key=lambda i: self.n_list[i])
        out, cur, width = [], [], 0
        for i in order:
            w = max(width, self.n_list[i])
            if cur and w * (len(cur) + 1) > max_tokens:
                out.append(cur)
                cur, w = [], self.n_list[i]
            cur.append(i)
            width = w
        if cur:
            out.append(cur)
        if shuffle is not None:
            shuffle.shuffle(out)
        return out


def step_masks(data: Data, idx, t: int, steps: int, in_vocab, argmax):
    """Per step j: (valid [B, T] answer targets, trainable = valid and base argmax in the draft vocab,
    target positions [B, T] clamped)."""
    import torch

    lens, plens = data.lens[idx][:, None], data.plens[idx][:, None]
    i = torch.arange(t, device=lens.device)[None]
    out = []
    for j in range(steps):
        tp = i + j + 1                        # base distribution at tp predicts t[i+j+2]
        valid = (i + j + 2 <= lens - 1) & (i + j + 2 >= plens)
        tpc = tp.clamp(max=t - 1).expand(len(idx), t)
        am = argmax.gather(1, tpc)
        ok = valid & in_vocab[am.clamp(min=0)]
        out.append((valid, ok, tpc))
    return out


def run_batch(draft, data: Data, idx, embed, head_d, in_vocab, draft_to_base, steps: int, weights,
              train: bool, amp: bool):
    """Loss (tensor) and per-step counters of one batch."""
    import torch

    dev = data.feats.device
    idx_t = torch.tensor(idx, device=dev)
    t, tokens, feats, finals, argmax = data.batch(idx_t)
    masks = step_masks(data, idx_t, t, steps, in_vocab, argmax)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
    with ctx:
        logits = draft.ttt(lambda ids: embed[ids], feats.float() if not amp else feats, tokens, steps)
    loss = torch.zeros((), device=dev)
    stats = []
    correct_prev = None
    for j, (valid, ok, tpc) in enumerate(masks):
        lg = logits[j].float()
        with torch.no_grad():
            teach = finals.gather(1, tpc[..., None].expand(-1, -1, finals.shape[-1])) @ head_d.T
            p = torch.softmax(teach, -1)
        lp = torch.log_softmax(lg, -1)
        ce = -(p * lp).sum(-1)
        n_ok = ok.sum()
        if n_ok > 0:
            loss = loss + weights[j] * (ce * ok).sum() / n_ok
        with torch.no_grad():
            am = argmax.gather(1, tpc)
            pred = draft_to_base[lg.argmax(-1)]
            corr = (pred == am) & valid
            chain = corr if correct_prev is None else (corr & correct_prev)
            stats.append(dict(loss=float((ce * ok).sum()), n_ok=int(n_ok), n=int(valid.sum()),
                              correct=int(corr.sum()), chain=int(chain.sum())))
            correct_prev = chain
    return loss, stats


def evaluate(draft, data: Data, embed, head_d, in_vocab, d2b, steps, amp, max_tokens) -> Dict[str, Any]:
    """Per-step loss and top-1 accuracy, and the chain acceptance estimate, over `data`."""
    import torch

    draft.eval()
    tot = [dict(loss=0.0, n_ok=0, n=0, correct=0, chain=0) for _ in range(steps)]
    with torch.no_grad():
        for idx in data.batches(max_tokens, None):
            _, st = run_batch(draft, data, idx, embed, head_d, in_vocab, d2b, steps, [1.0] * steps, False, amp)
            for a, b in zip(tot, st):
                for k in a:
                    a[k] += b[k]
    draft.train()
    res: Dict[str, Any] = {
        "loss": [round(a["loss"] / max(1, a["n_ok"]), 4) for a in tot],
        "acc": [round(a["correct"] / max(1, a["n"]), 4) for a in tot],
        "chain_acc": [round(a["chain"] / max(1, a["n"]), 4) for a in tot],
    }
    # Plain chain of `steps` drafted tokens: accepted tokens per verify step, bonus included,
    # = 1 + sum_j P(steps 0..j all right) (step j's anchors are those where step j exists).
    res["accept_len"] = round(1.0 + sum(res["chain_acc"]), 4)
    return res


def save(draft, cfg: Dict[str, Any], d2t, out: str) -> str:
    import torch
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in draft.state_dict().items()}
    tensors["d2t"] = d2t.to("cpu", torch.int64).contiguous()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    return os.path.join(out, "model.safetensors")


# --------------------------------------------------------------------------- check


def reference_steps(ref, w, feats, tokens, steps: int):
    """The runtime's NumPy DraftReference over every anchor of one sequence at once.

    Step 0 runs causally over all positions; step j>0 gives row i the past of the step-0
    keys at positions <= i and its own chain's keys of steps 1..j (the tree mask of a
    depth-j node). Returns logits per step [T, Vd]."""
    import numpy as np

    t = len(tokens)
    hidden = ref.project(feats)
    past = (np.zeros((0,) + (ref.cfg.num_kv_heads, ref.cfg.head_dim), np.float32),) * 2
    out = []
    ar = np.arange(t)
    for j in range(steps):
        ids = np.array([tokens[min(i + 1 + j, t - 1)] for i in range(t)])
        if j == 0:
            logits, hidden, (k, v) = ref.forward(ids, hidden, ar, past)
            past = (k, v)
        else:
            p = past[0].shape[0]  # step 0 (t rows) then steps 1..j-1 (t rows each)
            mask = np.full((t, p + t), -1e9, np.float32)
            mask[:, :t][ar[:, None] >= ar[None, :]] = 0.0
            for m in range(1, j + 1):
                mask[ar, m * t + ar] = 0.0
            logits, hidden, (k, v) = ref.forward(ids, hidden, ar + j, past, mask)
            past = (np.concatenate([past[0], k]), np.concatenate([past[1], v]))
        out.append(logits)
    return out


def check(args: argparse.Namespace) -> None:
    """Load a draft with the runtime's loader, compare the torch module with the NumPy
    reference, and measure plain-chain acceptance on held-out prompts."""
    import numpy as np
    import torch

    sys.path.insert(0, REPO)
    from edgellm_ros.loaders import load_model
    from edgellm_ros.models.eagle import DraftReference, load_draft

    steps = args.ttt_steps
    _, eval_prompts = read_prompts(args.prompts, 0, args.limit_eval or 20)
    tok, model = load_base(args)
    base = load_model(args.gguf or args.model)
    cfg, w = load_draft(args.check, base.config)
    log(f"runtime loader: {cfg}")
    ref = DraftReference(cfg, w, base.tensors["embed_tokens.weight"], base.lm_head())
    with open(os.path.join(args.check, "config.json"), encoding="utf-8") as f:
        tcfg = json.load(f)
    draft = build_draft_class()(tcfg).to(args.device).float().eval()
    from safetensors.torch import load_file

    sd = load_file(os.path.join(args.check, "model.safetensors"))
    d2t = sd.pop("d2t")
    draft.load_state_dict({k: v.float() for k, v in sd.items()})
    d2b = (torch.arange(len(d2t)) + d2t).numpy()
    embed = model.get_input_embeddings().weight.detach().float()
    eos = tok.eos_token_id
    answers_file = os.path.join(args.check, "answers.jsonl")
    gpu = {}
    if os.path.exists(answers_file):
        with open(answers_file, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                gpu[r["prompt"]] = r["answer_ids"]
    rows, worst, same_as_file = [], 0.0, []
    tot_tokens = tot_verifies = 0
    acc_n = [0] * steps
    acc_c = [0] * steps
    for n, prompt in enumerate(eval_prompts):
        ids = render(tok, prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=args.device), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=eos, pad_token_id=eos)
        ans = out[0, len(ids):].tolist()
        if prompt in gpu:
            g = gpu[prompt][:len(ans)]
            same_as_file.append(g == ans[:len(g)])
        seq = ids + ans
        f, _, am, _ = features(model, [seq], cfg.target_layer_ids, 1, args.device, torch.float32)
        feats = f[:len(seq)].cpu().numpy()
        am = am[:len(seq)].cpu().numpy()
        ref_logits = reference_steps(ref, w, feats, seq, steps)
        with torch.no_grad():
            tl = draft.ttt(lambda x: embed[x], torch.tensor(feats)[None].to(args.device),
                           torch.tensor([seq], device=args.device), steps)
        for j in range(steps):
            rows_ok = slice(0, len(seq) - 2 - j)  # rows whose input token is real
            diff = np.abs(tl[j][0].float().cpu().numpy()[rows_ok] - ref_logits[j][rows_ok]).max()
            worst = max(worst, float(diff))
        pred = [d2b[np.argmax(lg, -1)] for lg in ref_logits]
        p = len(ids)
        # per-step top-1 over every anchor of the answer (the runtime's first anchor is p-1)
        for j in range(steps):
            for i in range(p - 1, len(seq) - 2 - j):
                acc_n[j] += 1
                acc_c[j] += int(pred[j][i] == am[i + j + 1])
        # plain chain decoding: draft `steps` tokens from the anchor, accept the matching prefix
        i = p - 1
        verifies = produced = 0
        while i < len(seq) - 2:  # t[i+1] is the newest token; stop once it is the last one
            k = 0
            while k < steps and i + k + 2 <= len(seq) - 1 and pred[k][i] == seq[i + k + 2]:
                k += 1
            got = min(k + 1, len(seq) - 2 - i)  # accepted drafts + the base's bonus token
            verifies += 1
            produced += got
            i += got
        tot_tokens += produced
        tot_verifies += verifies
        rows.append({"prompt": prompt, "answer_tokens": len(ans), "verify_steps": verifies,
                     "mean_accept": round(produced / max(1, verifies), 3)})
        log(f"  {n + 1}/{len(eval_prompts)}: {len(ans)} tokens in {verifies} verify steps "
            f"({produced / max(1, verifies):.2f} per step) {prompt[:60]!r}")
    res = {
        "prompts": len(eval_prompts), "max_new_tokens": args.max_new_tokens, "chain_steps": steps,
        "step_top1": [round(c / max(1, n), 4) for c, n in zip(acc_c, acc_n)],
        "mean_acceptance_length": round(tot_tokens / max(1, tot_verifies), 4),
        "definition": "tokens produced per base verify step, the bonus token included, plain chain",
        "torch_vs_numpy_max_abs_logit_diff": worst,
        "greedy_same_as_answers_jsonl": f"{sum(same_as_file)}/{len(same_as_file)}",
        "per_prompt": rows,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "per_prompt"}, indent=1))
    if args.check_out:
        with open(args.check_out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
            f.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="base model as a GGUF file (transformers dequantizes it to float32)")
    src.add_argument("--model", help="base model as a Hugging Face folder")
    ap.add_argument("--prompts", default=DEFAULT_PROMPTS)
    ap.add_argument("--out", help="folder for config.json, model.safetensors, train_log.json")
    ap.add_argument("--check", metavar="DRAFT_DIR",
                    help="instead of training: load DRAFT_DIR with the runtime's loader, compare this module "
                         "with its NumPy reference and measure plain-chain acceptance on --limit-eval (20) "
                         "held-out prompts")
    ap.add_argument("--check-out", default="", help="JSON file for the --check results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", default="", help="base layer ids of the features (default 2,L//2,L-3)")
    ap.add_argument("--draft-vocab", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=0, help="draft MLP width (default: the base's)")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--sampled", type=int, default=0,
                    help="extra sampled answers per training prompt (temperature --temperature)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--gen-seconds", type=float, default=0,
                    help="start no sampled-answer batch later than this many seconds after start (0: no limit)")
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--sampled-use", type=int, default=-1,
                    help="train on only the first N rounds of the --sampled answers (-1: all)")
    ap.add_argument("--generate-only", action="store_true",
                    help="stop once the answers are generated and written to --cache")
    ap.add_argument("--feat-batch", type=int, default=64)
    ap.add_argument("--feat-dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--final-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="storage of the base's final-norm output (the teacher); bfloat16 halves it")
    ap.add_argument("--ttt-steps", type=int, default=3)
    ap.add_argument("--step-decay", type=float, default=0.8, help="loss weight of step j: decay**j")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=50, help="warm-up optimizer steps")
    ap.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per batch")
    ap.add_argument("--train-seconds", type=float, default=0, help="stop training after this long (0: no limit)")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds since start by which everything must be written (0: none)")
    ap.add_argument("--no-amp", action="store_true", help="float32 training (default bf16 autocast on CUDA)")
    ap.add_argument("--digits-pretokenizer", choices=["auto", "on", "off"], default="auto",
                    help="split digits one by one (SmolLM2's tokenizer.json; auto: when the GGUF says smollm)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training prompts (tests)")
    ap.add_argument("--limit-eval", type=int, default=0, help="use only the first N eval prompts (tests)")
    ap.add_argument("--cache", default="", help="file keeping the generated answers between runs")
    ap.add_argument("--init", default="", help="start from this draft folder's weights (same vocabulary)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        sys.exit(f"tools/train_eagle.py needs the optional training dependencies ({exc.name} is missing): "
                 "pip install torch transformers safetensors (and gguf accelerate for a GGUF base)")

    torch.manual_seed(args.seed)
    if args.check:
        torch.backends.cuda.matmul.allow_tf32 = False
        check(args)
        return
    if not args.out:
        ap.error("--out is required when training")
    rng = random.Random(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False  # the base runs in true float32, like the runtime
    torch.backends.cudnn.allow_tf32 = False
    dev = args.device
    amp = dev.startswith("cuda") and not args.no_amp
    feat_dtype = getattr(torch, args.feat_dtype)
    train_prompts, eval_prompts = read_prompts(args.prompts, args.limit, args.limit_eval)
    log(f"{len(train_prompts)} training prompts, {len(eval_prompts)} held out ({args.prompts})")
    tok, model = load_base(args)
    mc = model.config
    n_layers, hsz = mc.num_hidden_layers, mc.hidden_size
    layers = [int(x) for x in args.layers.split(",")] if args.layers else [2, n_layers // 2, n_layers - 3]
    eos = tok.eos_token_id if tok.eos_token_id is not None else mc.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    rendered = [render(tok, p) for p in train_prompts + eval_prompts]
    n_train = len(train_prompts)
    log(f"prompts rendered: {sum(map(len, rendered))} tokens; example: {tok.decode(rendered[0])!r}")

    cached = torch.load(args.cache, weights_only=False) if args.cache and os.path.exists(args.cache) else None
    if cached is not None and cached.get("rendered") == rendered and cached.get("args") == \
            [args.max_new_tokens, args.sampled, args.temperature, layers]:
        log(f"answers from {args.cache}")
        greedy, sampled = cached["greedy"], cached["sampled"]
    else:
        cached = None
        greedy = generate(model, rendered, eos, pad, args.max_new_tokens, args.gen_batch, dev)
        sampled = []
        stop_at = T0 + args.gen_seconds if args.gen_seconds else 0.0
        for s in range(args.sampled):
            sampled += generate(model, rendered[:n_train], eos, pad, args.max_new_tokens, args.gen_batch, dev,
                                sample=True, temperature=args.temperature, seed=args.seed + 1 + s,
                                stop_at=stop_at)
        if args.cache:
            torch.save({"rendered": rendered, "args": [args.max_new_tokens, args.sampled, args.temperature, layers],
                        "greedy": greedy, "sampled": sampled}, args.cache)
            log(f"answers cached in {args.cache}")
    if args.generate_only:
        log(f"answers only: {sum(map(len, greedy))} greedy tokens, {sum(1 for a in sampled if a)} sampled answers "
            f"({sum(map(len, sampled))} tokens)")
        return
    if args.sampled_use >= 0:
        sampled = sampled[:n_train * args.sampled_use]
    ans_tokens = sum(map(len, greedy)) + sum(map(len, sampled))
    log(f"answers: {len(greedy)} greedy ({sum(map(len, greedy))} tokens, "
        f"{sum(1 for a in greedy if a and a[-1] == eos)} ended by EOS), {sum(1 for a in sampled if a)} sampled "
        f"({sum(map(len, sampled))} tokens)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "answers.jsonl"), "w", encoding="utf-8") as f:
        for k, (p, a) in enumerate(zip(train_prompts + eval_prompts, greedy)):
            f.write(json.dumps({"prompt": p, "split": "eval" if k >= n_train else "train",
                                "prompt_ids": rendered[k], "answer_ids": a}, ensure_ascii=False) + "\n")

    # Draft vocabulary from the training answers (the held-out ones stay unseen).
    special = [i for i in (tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens) if isinstance(i, int)]
    special += [eos, pad]
    vocab_ids = pick_vocab(greedy[:n_train] + sampled, args.draft_vocab, special, mc.vocab_size)
    cov = {str(n): round(coverage(greedy[n_train:], pick_vocab(greedy[:n_train] + sampled, n, special,
                                                               mc.vocab_size)), 4)
           for n in (2048, 4096, 8192, 16384)}
    log(f"draft vocabulary {len(vocab_ids)}; held-out answer coverage by size: {cov}")
    vocab_t = torch.tensor(vocab_ids, device=dev)
    d2t = vocab_t - torch.arange(len(vocab_ids), device=dev)
    in_vocab = torch.zeros(mc.vocab_size, dtype=torch.bool, device=dev)
    in_vocab[vocab_t] = True

    # Features and teacher of every sequence.
    extra = [(k % n_train, a) for k, a in enumerate(sampled) if a]
    seqs = [rendered[k] + greedy[k] for k in range(len(rendered))] + [rendered[k] + a for k, a in extra]
    plens = [len(rendered[k]) for k in range(len(rendered))] + [len(rendered[k]) for k, _ in extra]
    feats, finals, am, offsets = features(model, seqs, layers, args.feat_batch, dev, feat_dtype,
                                          getattr(torch, args.final_dtype))
    # Teacher-forcing check: the base's argmax along its own greedy answer is the answer.
    agree = tot = 0
    for k in range(len(rendered)):
        p, a = offsets[k] + len(rendered[k]), greedy[k]
        if len(a) > 1:
            agree += int((am[p - 1:p - 1 + len(a)].cpu() == torch.tensor(a)).sum())
            tot += len(a)
    log(f"features: {sum(map(len, seqs))} tokens; base argmax over prompt+answer = greedy answer for "
        f"{agree}/{tot} tokens")
    packed = (feats, finals, am, torch.tensor([t for s in seqs for t in s] + [0], device=dev))
    train_idx = list(range(n_train)) + list(range(len(rendered), len(seqs)))
    eval_idx = list(range(n_train, len(rendered)))
    train_data = Data(packed, [seqs[i] for i in train_idx], [plens[i] for i in train_idx],
                      [offsets[i] for i in train_idx])
    eval_data = Data(packed, [seqs[i] for i in eval_idx], [plens[i] for i in eval_idx],
                     [offsets[i] for i in eval_idx]) if eval_idx else None
    del feats, finals, am, packed
    log(f"train: {len(train_idx)} sequences, {train_data.n_tokens} tokens ({train_data.n_answer} answer); "
        f"eval: {len(eval_idx)} sequences")

    embed = model.get_input_embeddings().weight.detach().float()
    head = model.get_output_embeddings().weight.detach().float()
    head_d = head[vocab_t]
    final_norm = model.model.norm.weight.detach().float()
    rope_theta = float(getattr(mc, "rope_theta", None) or (getattr(mc, "rope_parameters", None) or {}).get(
        "rope_theta", 10000.0))
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
        "hidden_size": hsz, "num_attention_heads": mc.num_attention_heads,
        "num_key_value_heads": mc.num_key_value_heads,
        "head_dim": getattr(mc, "head_dim", None) or hsz // mc.num_attention_heads,
        "intermediate_size": args.intermediate or mc.intermediate_size, "num_hidden_layers": 1,
        "rms_norm_eps": float(f"{mc.rms_norm_eps:.7g}"), "rope_theta": rope_theta, "vocab_size": mc.vocab_size,
        "draft_vocab_size": len(vocab_ids), "target_hidden_size": hsz, "target_layer_ids": layers,
    }
    rs = getattr(mc, "rope_scaling", None) or {}
    if rs.get("rope_type", rs.get("type", "default")) != "default":
        cfg["rope_scaling"] = rs
    del model
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()

    Draft = build_draft_class()
    draft = Draft(cfg).to(dev)
    with torch.no_grad():  # start from the base's output head and final norm over the draft vocab
        draft.lm_head.weight.copy_(head_d)
        draft.norm.weight.copy_(final_norm)
    if args.init:  # continue from a draft of the same vocabulary (a second schedule)
        from safetensors.torch import load_file

        sd = load_file(os.path.join(args.init, "model.safetensors"))
        if not torch.equal(sd.pop("d2t").to(dev), d2t):
            sys.exit(f"--init {args.init}: another draft vocabulary")
        draft.load_state_dict({k: v.float() for k, v in sd.items()})
        log(f"weights from {args.init}")
    n_params = sum(p.numel() for p in draft.parameters())
    log(f"draft: {n_params} parameters, config {cfg}")

    weights = [args.step_decay ** j for j in range(args.ttt_steps)]
    opt = torch.optim.AdamW(draft.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    per_epoch = len(train_data.batches(args.batch_tokens, None))
    sched = {"total": per_epoch * args.epochs}

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        span = max(1, sched["total"] - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - args.warmup) / span)))

    history: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    best_state = None
    budget = args.train_seconds or float("inf")
    if args.deadline:
        budget = min(budget, args.deadline - (time.time() - T0) - 30)
    t_train = last_save = time.time()
    step = 0
    ev0 = evaluate(draft, eval_data, embed, head_d, in_vocab, vocab_t, args.ttt_steps, amp, args.batch_tokens) \
        if eval_data else {}
    log(f"before training: eval {ev0}")
    stopped = "epochs done"
    for epoch in range(args.epochs):
        sums = [dict(loss=0.0, n_ok=0, n=0, correct=0, chain=0) for _ in range(args.ttt_steps)]
        for idx in train_data.batches(args.batch_tokens, rng):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss, st = run_batch(draft, train_data, idx, embed, head_d, in_vocab, vocab_t, args.ttt_steps,
                                 weights, True, amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
            opt.step()
            step += 1
            for a, b in zip(sums, st):
                for k in a:
                    a[k] += b[k]
        tr = {"loss": [round(a["loss"] / max(1, a["n_ok"]), 4) for a in sums],
              "acc": [round(a["correct"] / max(1, a["n"]), 4) for a in sums]}
        ev = evaluate(draft, eval_data, embed, head_d, in_vocab, vocab_t, args.ttt_steps, amp, args.batch_tokens) \
            if eval_data else {}
        rec = {"epoch": epoch + 1, "step": step, "lr": round(lr_at(step), 7),
               "seconds": round(time.time() - t_train, 1), "train": tr, "eval": ev}
        history.append(rec)
        log(f"epoch {epoch + 1}: train loss {tr['loss']} acc {tr['acc']} | eval loss {ev.get('loss')} "
            f"acc {ev.get('acc')} chain {ev.get('chain_acc')} accept_len {ev.get('accept_len')}")
        if best is None or ev.get("accept_len", -epoch) >= best["eval"].get("accept_len", -epoch):
            best = rec
            best_state = {k: v.detach().clone() for k, v in draft.state_dict().items()}
            if time.time() - last_save > 60:  # a usable checkpoint even if the run is cut short
                save(draft, cfg, d2t, args.out)
                last_save = time.time()
                log(f"checkpoint of epoch {epoch + 1} written")
        if epoch == 0 and budget != float("inf"):
            # fit the cosine schedule into the time budget (epoch 1 timed, evaluation included)
            fit = max(1, int(budget / max(1e-3, time.time() - t_train)))
            if fit < args.epochs:
                sched["total"] = per_epoch * fit
                log(f"time budget {budget:.0f} s: schedule fitted to {fit} epochs")
        if time.time() - t_train > budget:
            stopped = f"time budget ({budget:.0f} s) reached"
            break
        if step >= sched["total"]:
            stopped = f"schedule done ({epoch + 1} epochs)"
            break
    log(f"training stopped: {stopped}; best epoch {best['epoch'] if best else None}")
    if best_state is not None:
        draft.load_state_dict(best_state)
    path = save(draft, cfg, d2t, args.out)
    with torch.no_grad():  # evaluate what was written: the float16-rounded weights
        draft.load_state_dict({k: v.half().float() for k, v in draft.state_dict().items()})
    ev = evaluate(draft, eval_data, embed, head_d, in_vocab, vocab_t, args.ttt_steps, amp, args.batch_tokens) \
        if eval_data else {}
    summary = {
        "command": "python3 tools/train_eagle.py " + " ".join(sys.argv[1:]),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else dev,
        "prompts": {"train": n_train, "eval": len(eval_prompts), "file": os.path.relpath(args.prompts, REPO)},
        "answers": {"greedy_sequences": len(greedy), "greedy_tokens": sum(map(len, greedy)),
                    "sampled_sequences": sum(1 for a in sampled if a), "sampled_tokens": sum(map(len, sampled)),
                    "max_new_tokens": args.max_new_tokens,
                    "ended_by_eos": sum(1 for a in greedy if a and a[-1] == eos)},
        "train_tokens": train_data.n_tokens, "train_answer_tokens": train_data.n_answer,
        "answer_tokens": ans_tokens, "teacher_forcing_agreement": [agree, tot],
        "draft_vocab_size": len(vocab_ids), "heldout_coverage_by_vocab_size": cov,
        "parameters": n_params, "file_bytes": os.path.getsize(path),
        "epochs_run": len(history), "stopped": stopped, "best_epoch": best["epoch"] if best else None,
        "train_seconds": round(time.time() - t_train, 1), "total_seconds": round(time.time() - T0, 1),
        "eval_before": ev0, "eval_final_float16": ev, "history": history,
        "hyper": {k: getattr(args, k) for k in ("lr", "weight_decay", "warmup", "batch_tokens", "epochs",
                                                "ttt_steps", "step_decay", "draft_vocab", "seed")},
    }
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    log(f"wrote {path} ({os.path.getsize(path)} bytes), config.json, train_log.json; final eval {ev}")


if __name__ == "__main__":
    main()
