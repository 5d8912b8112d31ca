"""A generation session: prompt -> prefill -> decode loop -> finish reason.

The loop reads one row of logits per step, picks a token, streams the text
delta through a callback and stops on an end token, a stop string,
max_new_tokens, a full KV cache or a cancellation from another thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .config import GenerationRequest
from .errors import ContextFull, InvalidRequest
from .prompt_cache import PromptCache, prefix_key
from .sampling import make_sampler

FINISH_STOP = "stop"                # an end-of-sequence / end-of-turn token
FINISH_STOP_STRING = "stop_string"  # one of the request's stop strings
FINISH_LENGTH = "length"            # max_new_tokens reached
FINISH_CONTEXT = "context_full"     # the KV cache (max_seq_len) is full
FINISH_CANCELLED = "cancelled"      # cancel event set from another thread
#: Marker in a user message used to find where the chat template puts it.
_PROBE = "\u2063edgellm-probe\u2063"


@dataclass(frozen=True)
class TokenEvent:
    """One streamed piece of the answer."""

    index: int      # 0, 1, 2... contiguous over the request
    token_id: int   # the generated token; -1 for a final text-only flush
    text: str       # new text (may be "" while a character is incomplete)


@dataclass
class GenerationResult:
    """The answer and how it was produced."""

    text: str
    token_ids: List[int]            # every generated token, an end token included
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int = 0          # prompt tokens restored from the prompt cache
    time_to_first_token: float = 0.0  # seconds from the call to the first token
    tokens_per_second: float = 0.0  # decode speed after the first token
    total_time: float = 0.0
    extra: dict = field(default_factory=dict)


class _StopMatcher:
    """Finds stop strings in streamed text and holds back possible beginnings."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)

    def find(self, text: str, start: int) -> int:
        """Index of the earliest complete stop string at or after start, or -1."""
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else -1

    def safe_end(self, text: str, start: int) -> int:
        """End of the text that cannot be the beginning of a stop string."""
        end = len(text)
        for s in self.stops:
            for n in range(min(len(s) - 1, end - start), 0, -1):
                if text.endswith(s[:n]):
                    end = min(end, len(text) - n)
                    break
        return end


class Generator:
    """Runs requests on one decoder executor; one request at a time."""

    def __init__(self, decoder: Any, tokenizer: Any, prompt_cache: Optional[PromptCache] = None,
                 adapter: Callable[[], str] = lambda: ""):
        self.decoder = decoder
        self.tok = tokenizer
        self.cache = prompt_cache
        self.adapter = adapter
        self._lock = threading.Lock()

    # -- prompt ---------------------------------------------------------------
    def build_prompt(self, req: GenerationRequest) -> Tuple[List[int], int]:
        """Token ids of the request and the length of its cacheable prefix."""
        if req.raw:
            return self.tok.encode(req.prompt), 0
        system = [] if req.system_prompt is None else [
            {"role": "system", "content": req.system_prompt}]
        text = self.tok.apply_chat_template(
            system + [{"role": "user", "content": req.prompt}], add_generation_prompt=True)
        ids = self.tok.encode(text)
        probe = self.tok.apply_chat_template(
            system + [{"role": "user", "content": _PROBE}], add_generation_prompt=True)
        cut = probe.find(_PROBE)
        if cut <= 0 or not text.startswith(probe[:cut]):
            return ids, 0
        pre = self.tok.encode(probe[:cut])
        n = 0
        while n < min(len(pre), len(ids)) and pre[n] == ids[n]:
            n += 1
        return ids, n

    # -- run ------------------------------------------------------------------
    def generate(self, req: GenerationRequest,
                 on_token: Optional[Callable[[TokenEvent], None]] = None,
                 cancel: Optional[threading.Event] = None) -> GenerationResult:
        if not isinstance(req, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(req).__name__}")
        with self._lock:
            return self._generate(req, on_token, cancel)

    def prefill(self, ids: List[int], prefix: int, adapter: str = "") -> Tuple[Any, int]:
        """Fill the KV cache with the prompt; returns (last logits row, cached rows).

        The first ``prefix`` ids (the cacheable system part) are always run as a
        chunk of their own, so restoring them from the prompt cache gives the
        same bits as computing them.
        """
        dec = self.decoder
        p = cached = 0
        key = prefix_key(ids[:prefix], adapter) if prefix else None
        if key is not None and self.cache is not None:
            snap = self.cache.get(key)
            if snap is not None:
                p = cached = dec.kv.restore(snap)
        logits = None
        bounds = [prefix, len(ids)] if p < prefix else [len(ids)]
        for end in bounds:
            while p < end:
                n = min(dec.max_chunk, end - p)
                logits = dec.forward(p, ids[p:p + n])
                p += n
            if end == prefix and key is not None and self.cache is not None and not cached:
                self.cache.put(key, dec.kv.snapshot(prefix), dec.kv.snapshot_nbytes(prefix))
        if logits is None:  # the whole prompt was cached: recompute its last token
            p -= 1
            logits = dec.forward(p, ids[p:p + 1])
        return logits[0], cached

    def _generate(self, req: GenerationRequest, on_token: Optional[Callable[[TokenEvent], None]],
                  cancel: Optional[threading.Event]) -> GenerationResult:
        t0 = time.perf_counter()
        adapter = self.adapter() if req.adapter is None else req.adapter
        if getattr(self.decoder, "lora_slots", None):
            self.decoder.set_adapter(adapter)
        elif adapter:
            raise InvalidRequest(f"adapter {adapter!r} requested but no LoRA adapters are loaded")
        ids, prefix = self.build_prompt(req)
        limit = self.decoder.max_seq_len
        if len(ids) >= limit:
            raise ContextFull(
                f"prompt is {len(ids)} tokens; max_seq_len={limit} leaves no room for an answer")
        sample = make_sampler(req.sampling)
        stop_ids = frozenset() if req.ignore_eos else self.tok.stop_ids
        stops = _StopMatcher(req.stop)
        stream = self.tok.stream()
        text = ""
        emitted = 0
        index = 0
        out: List[int] = []
        finish = FINISH_LENGTH
        t_first = None
        pos = len(ids)

        def emit(upto: int, token_id: int) -> None:
            nonlocal emitted, index
            if on_token is not None:
                on_token(TokenEvent(index, token_id, text[emitted:upto]))
            emitted = upto
            index += 1

        if cancel is not None and cancel.is_set():
            finish = FINISH_CANCELLED
            row = None
            cached = 0
        else:
            row, cached = self.prefill(ids, prefix, adapter)
        while row is not None:
            tok = sample(row)
            out.append(tok)
            if t_first is None:
                t_first = time.perf_counter()
            if tok in stop_ids:
                finish = FINISH_STOP
                break
            text += stream.push(tok)
            hit = stops.find(text, emitted) if stops.stops else -1
            if hit >= 0:
                text = text[:hit]
                emit(hit, tok)
                finish = FINISH_STOP_STRING
                break
            emit(stops.safe_end(text, emitted) if stops.stops else len(text), tok)
            if len(out) >= req.max_new_tokens:
                break
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
                break
            if pos >= limit:
                finish = FINISH_CONTEXT
                break
            row = self.decoder.forward(pos, [tok])[0]
            pos += 1
        if finish != FINISH_STOP_STRING:
            text += stream.flush()
            hit = stops.find(text, emitted) if stops.stops else -1
            if hit >= 0:
                text = text[:hit]
                finish = FINISH_STOP_STRING
        if emitted < len(text):
            emit(len(text), -1)
        t_end = time.perf_counter()
        first = t_first if t_first is not None else t_end
        decode_n = max(len(out) - 1, 0)
        return GenerationResult(
            text=text, token_ids=out, finish_reason=finish, prompt_tokens=len(ids),
            generated_tokens=len(out), cached_tokens=cached,
            time_to_first_token=first - t0,
            tokens_per_second=decode_n / (t_end - first) if decode_n and t_end > first else 0.0,
            total_time=t_end - t0)
