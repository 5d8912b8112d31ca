"""One runtime of benchmarks/cpu_bench.py in its own process, driven over stdin/stdout.

    python benchmarks/bench_worker.py <kind>      (kind: ours, llama.cpp, ort-genai)

The driver writes one JSON command per line; the worker answers one JSON line
on stdout (anything else it prints goes to stderr):

- ``{"cmd": "load", "spec": {...}}`` -> ``{"ok": true, "info": {...}}``, or
  ``{"ok": false, "skipped": "why"}`` when the runtime or a feature is missing;
- ``{"cmd": "prompts", "question": str, "prefill_tokens": int}`` (ours only):
  the chat prompt built with our tokenizer's chat template and a prefill text
  of exactly that many tokens, as texts and token ids;
- ``{"cmd": "round", "chat": {"text", "ids"}, "prefill": {"text", "ids"},
  "new_tokens": int}`` -> one measurement: ``ttft_s`` and ``decode_tok_s`` of
  the chat prompt (greedy, end tokens ignored, decode rate after the first
  token), ``prefill_tok_s`` = prompt tokens / time to the first token of the
  prefill prompt, the generated ``ids`` and the prefill's first token id;
- ``{"cmd": "quit"}``.

Each runtime gets the token ids as given (ours its raw text, checked to
encode to exactly those ids); no prefix or prompt cache is reused between
requests. This file imports neither edgellm_ros nor a peer at start-up: it runs
in the repository's .venv (ours) and in .venv-peers (the peers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Skipped(Exception):
    """The runtime (or the requested variant of it) is not available here."""


def _timed_tokens(tokens, n: int):
    """Drain a token iterator for n tokens: (ids, t_first, t_end) on perf_counter."""
    out: List[int] = []
    t_first = 0.0
    for tok in tokens:
        if not out:
            t_first = time.perf_counter()
        out.append(int(tok))
        if len(out) >= n:
            break
    return out, t_first, time.perf_counter()


def _measure(one_run, chat_ids: List[int], prefill_ids: List[int], n: int) -> Dict[str, Any]:
    """Chat prompt + n tokens, then the prefill prompt to its first token."""
    t0 = time.perf_counter()
    ids, t_first, t_end = one_run(chat_ids, n)
    p0 = time.perf_counter()
    first, p_first, _ = one_run(prefill_ids, 1)
    return {"ttft_s": t_first - t0, "decode_tok_s": (len(ids) - 1) / (t_end - t_first),
            "prefill_tok_s": len(prefill_ids) / (p_first - p0), "ids": ids, "prefill_first_id": first[0]}


class Ours:
    """edgellm_ros' Engine; spec["variant"] = "<quantization>[+eagle][/field=value...]".

    The quantization is ``EngineConfig.quantization``; "+eagle" loads the shipped
    EAGLE draft and turns EAGLE on. "<q>" is the default node (no draft: one-row
    steps); "<q>/eagle_draft=default" the node with the draft loaded and EAGLE off
    (one-token steps padded to two rows, what makes greedy EAGLE exact,
    docs/EAGLE.md), whose very tokens "<q>+eagle" must give;
    each "/field=value" sets one more EngineConfig field (``int4/int4_compute=float32``,
    ``int4/fused_ops=false``, ``int4-sym/vocab_reduction=shipped``; values read as JSON where
    they parse, else as text, and may hold "/": ``int4/vocab_reduction=/data/vocab.json``).
    """

    def __init__(self, spec: Dict[str, Any]) -> None:
        sys.path.insert(0, ROOT)
        from edgellm_ros.runtime.config import EngineConfig
        from edgellm_ros.runtime.engine import Engine
        from edgellm_ros.runtime.speculative import EagleConfig

        # a value may hold "/" (a path): a setting starts at "/name="
        head, *settings = re.split(r"/(?=[A-Za-z_][A-Za-z0-9_]*=)", spec["variant"])
        quant, _, extra = head.partition("+")
        if extra not in ("", "eagle"):
            raise Skipped(f"unknown variant suffix {extra!r} (use <quantization> or <quantization>+eagle)")
        self.eagle = extra == "eagle"
        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        kw: Dict[str, Any] = dict(model=spec.get("model", ""), num_threads=spec["threads"], max_seq_len=1024,
                                  prefill_chunk=512, prompt_cache_bytes=0)
        if self.eagle:
            kw["eagle_draft"] = "default"
        if "quantization" in fields:
            kw["quantization"] = quant
        elif quant != "none":
            raise Skipped(f"EngineConfig has no 'quantization' field yet (variant {spec['variant']!r})")
        for item in settings:
            name, _, value = item.partition("=")
            if name not in fields:
                raise Skipped(f"EngineConfig has no field {name!r} (variant {spec['variant']!r})")
            try:
                kw[name] = json.loads(value)
            except ValueError:
                kw[name] = value
        t0 = time.perf_counter()
        self.engine = Engine.load(EngineConfig(**kw), log=lambda m: print(m, file=sys.stderr))
        self.load_s = time.perf_counter() - t0
        self.eagle_config = None
        if self.eagle:
            if self.engine.drafter is None:
                raise Skipped("no EAGLE draft is loaded (eagle_draft='default' found none)")
            self.eagle_config = EagleConfig(enabled=True, drafting_top_k=spec.get("eagle_top_k", 1),
                                            drafting_step=spec.get("eagle_step", 4),
                                            verify_tree_size=spec.get("eagle_tree", 4),
                                            confidence_threshold=spec.get("eagle_threshold", 0.0))
            self.engine.set_eagle(self.eagle_config)
        self.checked: set = set()

    def info(self) -> Dict[str, Any]:
        e = self.engine
        return {"load_s": round(self.load_s, 2), "engine_config": dataclasses.asdict(e.config),
                "engine_dir": e.folder, "backend": e.backend,
                "eagle": dataclasses.asdict(self.eagle_config) if self.eagle_config else None}

    def prompts(self, question: str, prefill_tokens: int) -> Dict[str, Any]:
        tok = self.engine.tokenizer
        chat = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        text = ("The robot drives along the aisle and checks every shelf for misplaced boxes. "
                "It reports the position of each box, the time and the shelf label to the warehouse system. ")
        ids = tok.encode(text * (prefill_tokens // 20 + 1))[:prefill_tokens]
        prefill = tok.decode(ids)
        if tok.encode(prefill) != ids:
            raise RuntimeError("the prefill text does not re-encode to the same ids")
        return {"chat": {"text": chat, "ids": tok.encode(chat)}, "prefill": {"text": prefill, "ids": ids}}

    def _request(self, text: str, ids: List[int], n: int):
        from edgellm_ros.runtime.config import GenerationRequest
        req = GenerationRequest(prompt=text, raw=True, ignore_eos=True, max_new_tokens=n)
        if text not in self.checked:  # what the engine will feed its graph (outside the timing)
            got = self.engine.generator.build_prompt(req)[0]
            if list(got) != list(ids):
                raise RuntimeError(f"our runtime tokenizes the prompt to {len(got)} ids that differ "
                                   f"from the {len(ids)} ids given to the peers")
            self.checked.add(text)
        return req

    def round(self, job: Dict[str, Any]) -> Dict[str, Any]:
        chat, pre, n = job["chat"], job["prefill"], job["new_tokens"]
        if self.engine.prompt_cache is not None:
            self.engine.prompt_cache.clear()
        r = self.engine.generate(self._request(chat["text"], chat["ids"], n))
        p = self.engine.generate(self._request(pre["text"], pre["ids"], 1))
        if len(r.token_ids) != n or r.cached_tokens or p.cached_tokens:
            raise RuntimeError(f"unexpected run: {len(r.token_ids)} tokens, cached {r.cached_tokens}/"
                               f"{p.cached_tokens}, finish {r.finish_reason}")
        out = {"ttft_s": r.time_to_first_token, "decode_tok_s": r.tokens_per_second,
               "prefill_tok_s": len(pre["ids"]) / p.time_to_first_token, "ids": list(r.token_ids),
               "prefill_first_id": p.token_ids[0]}
        if r.eagle is not None:
            out["eagle"] = r.eagle.as_dict()
        return out


class LlamaCpp:
    """llama-cpp-python on the GGUF file as is; token ids through Llama.generate."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise Skipped(f"llama-cpp-python is not installed ({exc}): bash scripts/bench_peers_setup.sh")
        self.version = llama_cpp.__version__
        self.settings = dict(n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=spec["threads"],
                             n_threads_batch=spec["threads"], flash_attn=bool(spec.get("flash_attn", False)),
                             seed=0, verbose=False)
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=spec["gguf"], **self.settings)
        self.load_s = time.perf_counter() - t0
        self.system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()

    def info(self) -> Dict[str, Any]:
        return {"load_s": round(self.load_s, 2), "version": self.version, "settings": self.settings,
                "system_info": self.system_info}

    def _run(self, ids: List[int], n: int):
        self.llm.reset()  # n_tokens = 0: no prefix of the previous request is reused
        gen = self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
        try:
            return _timed_tokens(gen, n)
        finally:
            gen.close()

    def round(self, job: Dict[str, Any]) -> Dict[str, Any]:
        return _measure(self._run, job["chat"]["ids"], job["prefill"]["ids"], job["new_tokens"])


class OrtGenai:
    """onnxruntime-genai on a model folder made by its builder (benchmarks/peer_models.py)."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise Skipped(f"onnxruntime-genai is not installed ({exc}): bash scripts/bench_peers_setup.sh")
        import onnxruntime
        self.og = og
        self.versions = {"onnxruntime-genai": og.__version__, "onnxruntime": onnxruntime.__version__}
        folder = spec["folder"]
        self.folder = folder
        with open(os.path.join(folder, "genai_config.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)["model"]["vocab_size"]
        # Threads as ours; end tokens ignored: the end id is one no run produces (logits untouched,
        # as ignore_eos does in ours; min_length would mask the end token's logit instead).
        self.overlay = {"model": {"eos_token_id": [self.vocab - 1], "decoder": {"session_options": {
            "intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1, "log_severity_level": 3}}},
            "search": {"max_length": 1024, "do_sample": False}}
        t0 = time.perf_counter()
        config = og.Config(folder)
        config.overlay(json.dumps(self.overlay))
        self.model = og.Model(config)
        self.load_s = time.perf_counter() - t0
        self.gen = None  # kept between requests (rewind_to(0)), as ours keeps its KV cache

    def info(self) -> Dict[str, Any]:
        with open(os.path.join(self.folder, "edgellm_build.json"), encoding="utf-8") as f:
            build = json.load(f)
        return {"load_s": round(self.load_s, 2), "versions": self.versions, "folder": self.folder,
                "builder_args": build.get("builder_args"), "config_overlay": self.overlay,
                "generator_reused": True}

    def _tokens(self, gen, ids: List[int]):
        gen.append_tokens(ids)
        while True:
            gen.generate_next_token()
            yield gen.get_next_tokens()[0]

    def _run(self, ids: List[int], n: int):
        og = self.og
        if self.gen is None:
            params = og.GeneratorParams(self.model)
            params.set_search_options(do_sample=False, max_length=1024)
            self.gen = og.Generator(self.model, params)
        else:
            self.gen.rewind_to(0)
        return _timed_tokens(self._tokens(self.gen, ids), n)

    def round(self, job: Dict[str, Any]) -> Dict[str, Any]:
        return _measure(self._run, job["chat"]["ids"], job["prefill"]["ids"], job["new_tokens"])


KINDS = {"ours": Ours, "llama.cpp": LlamaCpp, "ort-genai": OrtGenai}


def main() -> None:
    kind = sys.argv[1]
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not reach the protocol stream
    runtime = None

    def reply(obj: Dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "load":
                runtime = KINDS[kind](cmd["spec"])
                reply({"ok": True, "info": runtime.info()})
            elif cmd["cmd"] == "prompts":
                reply({"ok": True, **runtime.prompts(cmd["question"], cmd["prefill_tokens"])})
            elif cmd["cmd"] == "round":
                reply({"ok": True, **runtime.round(cmd)})
            elif cmd["cmd"] == "quit":
                reply({"ok": True})
                return
            else:
                reply({"ok": False, "error": f"unknown command {cmd['cmd']!r}"})
        except Skipped as exc:
            reply({"ok": False, "skipped": str(exc)})
        except Exception as exc:  # reported in the JSON; the driver carries on without this runtime
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
