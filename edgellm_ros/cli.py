"""``edgellm``: the runtime from a terminal, without ROS.

Commands:

    edgellm generate "What should a robot do near stairs?"
    edgellm generate --system "Answer in one sentence." --temperature 0.7 --seed 1 "hi"
    edgellm export [--model PATH] [--engine-dir DIR]
    edgellm selftest [--model PATH] [--engine-dir DIR]   (on a Jetson: CUDA, TensorRT, kernels, engines)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, List, Optional

from .runtime.config import (INT4_COMPUTE, QUANTIZATIONS, EagleConfig, EngineConfig, GenerationRequest,
                             RemoteConfig, SamplingConfig)
from .errors import EdgeLLMError

if TYPE_CHECKING:
    from .runtime.generation import TokenEvent


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="GGUF file or Hugging Face folder "
                   "(default: the embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--engine-dir", default="", help="engine folder (default: user cache)")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, tensorrt or remote (--remote-url)")
    p.add_argument("--remote-url", default="", help="backend remote: the server's OpenAI API, e.g. "
                   "http://gpu-host:8000/v1")
    p.add_argument("--remote-model", default="", help="backend remote: served model name (default: its only one)")
    p.add_argument("--remote-api-key-env", default="", help="backend remote: environment variable holding the key")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = backend default)")
    p.add_argument("--quantization", default=EngineConfig.quantization, choices=QUANTIZATIONS,
                   help="decoder weights: int4 (the GGUF's own 4-bit blocks), int4-sym (Q4_1 re-quantized "
                        "symmetric: faster, less accurate), int8 (8-bit blocks: twice int4's bytes, about as accurate, "
                        "faster on a CPU) or none (float32)")
    p.add_argument("--int4-compute", default=EngineConfig.int4_compute, choices=INT4_COMPUTE,
                   help="ONNX Runtime INT4 kernels: int8 activations (fast) or float32 (exact, slow)")
    p.add_argument("--plain-ops", action="store_true",
                   help="ONNX Runtime: run the plain-op graph (TensorRT's) instead of the fused CPU graph")
    p.add_argument("--lora-adapter", action="append", default=[], metavar="NAME:PATH",
                   help="load a PEFT LoRA adapter (repeatable)")
    p.add_argument("--lora", default="", help="adapter to use (default: the base model)")
    p.add_argument("--eagle-draft", default="",
                   help="EAGLE draft folder ('default' = the shipped one for the embedded model; "
                        "default: none, or the shipped one with --eagle)")
    p.add_argument("--vocab-reduction", default="", metavar="FILE",
                   help="JSON list of the token ids the LM head keeps ('shipped' = the embedded model's set; "
                        "docs/VOCAB_REDUCTION.md)")
    p.add_argument("-v", "--verbose", action="store_true", help="log engine loading")


def _engine_config(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(model=a.model, engine_dir=a.engine_dir, backend=a.backend,
                        max_seq_len=a.max_seq_len, num_threads=a.threads,
                        quantization=a.quantization, int4_compute=a.int4_compute,
                        fused_ops=not a.plain_ops,
                        lora_adapters=tuple(a.lora_adapter), lora=a.lora,
                        # --eagle with no --eagle-draft: the shipped draft
                        eagle_draft=a.eagle_draft or ("default" if getattr(a, "eagle", False) else ""),
                        vocab_reduction=a.vocab_reduction,
                        remote=RemoteConfig(url=a.remote_url, model=a.remote_model,
                                            api_key_env=a.remote_api_key_env))


def _log(verbose: bool):
    return (lambda m: print(f"[edgellm] {m}", file=sys.stderr)) if verbose else (lambda m: None)


def cmd_generate(a: argparse.Namespace) -> int:
    from .runtime.engine import open_engine

    req = GenerationRequest(
        prompt=a.prompt, system_prompt=a.system, max_new_tokens=a.max_new_tokens,
        sampling=SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                                seed=a.seed),
        stop=tuple(a.stop or ()), raw=a.raw)
    engine = open_engine(_engine_config(a), log=_log(a.verbose))
    if a.eagle:
        given = {"drafting_top_k": a.eagle_top_k, "drafting_step": a.eagle_step,
                 "verify_tree_size": a.eagle_tree, "confidence_threshold": a.eagle_threshold}
        engine.set_eagle(EagleConfig(True, **{k: v for k, v in given.items() if v is not None}))

    def print_token(ev: TokenEvent) -> None:
        sys.stdout.write(ev.text)
        sys.stdout.flush()

    try:
        res = engine.generate(req, on_token=print_token)
    finally:
        engine.close()
    sys.stdout.write("\n")
    stats = {"finish_reason": res.finish_reason, "prompt_tokens": res.prompt_tokens,
             "generated_tokens": res.generated_tokens, "cached_tokens": res.cached_tokens,
             "time_to_first_token_s": round(res.time_to_first_token, 4),
             "decode_tokens_per_s": round(res.tokens_per_second, 2)}
    if res.eagle is not None:
        stats["eagle"] = res.eagle.as_dict()
    print(json.dumps(stats), file=sys.stderr)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .runtime.engine_dir import ensure_engine

    print(ensure_engine(a.model, a.engine_dir, log=_log(True)))
    return 0


def cmd_selftest(a: argparse.Namespace) -> int:
    from .selftest import run_selftest

    return run_selftest(a.model, a.engine_dir, a.max_seq_len, log=_log(a.verbose))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgellm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer a question, streaming the tokens")
    g.add_argument("prompt")
    g.add_argument("--system", default=None, help="system prompt")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--raw", action="store_true", help="no chat template")
    g.add_argument("--eagle", action="store_true", help="EAGLE speculative decoding")
    # unset: the runtime's EagleConfig defaults (2, 4, 8, 0.2)
    g.add_argument("--eagle-top-k", type=int)
    g.add_argument("--eagle-step", type=int)
    g.add_argument("--eagle-tree", type=int)
    g.add_argument("--eagle-threshold", type=float,
                   help="draft nodes below this path probability are not verified (0 = all)")
    _engine_args(g)
    g.set_defaults(func=cmd_generate)
    e = sub.add_parser("export", help="write (or reuse) the engine folder")
    _engine_args(e)
    e.set_defaults(func=cmd_export)
    t = sub.add_parser("selftest", help="check CUDA, the GPU, TensorRT, the kernels and the engines "
                       "(exit 0 = every check passed)")
    t.add_argument("--model", default="", help="model whose engines are built and compared (default: embedded)")
    t.add_argument("--engine-dir", default="", help="engine folder (default: user cache)")
    t.add_argument("--max-seq-len", type=int, default=256)
    t.add_argument("-v", "--verbose", action="store_true", help="log engine export and builds")
    t.set_defaults(func=cmd_selftest)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeLLMError as exc:
        print(f"edgellm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
