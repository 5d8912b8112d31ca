"""A generation session: prompt -> prefill -> decode loop -> finish reason.

The loop reads one row of logits per step, picks a token, streams the text
delta through a callback and stops on an end token, a stop string,
max_new_tokens, a full KV cache or a cancellation from another thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import DecoderStep, TextTokenizer
from ..errors import ContextFull, InvalidRequest
from .config import GenerationRequest
from .prompt_cache import PromptCache, prefix_key
from .sampling import make_distribution, make_rng, make_sampler
from .speculative import (Drafter, EagleConfig, SpecStats, accept_greedy, accept_sampling,
                          speculative_tokens)
from .vision import VisionPipeline

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
    eagle: Optional[SpecStats] = None  # speculative decoding counters (EAGLE on)


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

    def __init__(self, decoder: DecoderStep, tokenizer: TextTokenizer, prompt_cache: Optional[PromptCache] = None,
                 drafter: Optional[Drafter] = None, vision: Optional[VisionPipeline] = None):
        self.decoder = decoder
        self.vision = vision
        self._image_rows: Optional[np.ndarray] = None  # image embeddings of the request
        self.tok = tokenizer
        self.cache = prompt_cache
        self.drafter = drafter
        # base features of every prompt row, for the draft's catch-up (EAGLE only)
        self._feats = np.zeros((decoder.max_seq_len, decoder.feature_size), np.float32) \
            if drafter is not None else None
        self._lock = threading.Lock()

    # -- prompt ---------------------------------------------------------------
    def _content(self, text: str, images: int = 0) -> Any:
        # vision templates (SmolVLM) read content parts; text models a string
        return self.vision.user_content(text, images) if self.vision is not None else text

    def build_prompt(self, req: GenerationRequest) -> Tuple[List[int], int]:
        """Token ids of the request and the length of its cacheable prefix.

        With images, their embeddings are computed here too (kept for the
        prefill); the image tokens count against max_seq_len.
        """
        self._image_rows = None
        if req.images and self.vision is None:
            raise InvalidRequest(f"the request has {len(req.images)} image(s) but the model "
                                 "has no vision encoder (text-only)")
        if req.raw:
            return self.tok.encode(req.prompt), 0
        system = [] if req.system_prompt is None else [
            {"role": "system", "content": self._content(req.system_prompt)}]
        text = self.tok.apply_chat_template(
            system + [{"role": "user", "content": self._content(req.prompt, len(req.images))}],
            add_generation_prompt=True)
        if self.vision is not None:
            if req.images:
                ids, self._image_rows = self.vision.prepare(
                    text, req.images, self.tok, max_tokens=self.decoder.max_seq_len)
            else:
                ids = self.tok.encode(text)
                self.vision.check_image_tokens(ids, np.zeros((0, self.decoder.config.hidden_size)))
        else:
            ids = self.tok.encode(text)
        probe = self.tok.apply_chat_template(
            system + [{"role": "user", "content": self._content(_PROBE)}], add_generation_prompt=True)
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
                 cancel: Optional[threading.Event] = None, adapter: str = "",
                 eagle: EagleConfig = EagleConfig()) -> GenerationResult:
        """Answer ``req`` with the LoRA ``adapter`` ("" = the base model; the caller has
        checked that it is loaded) and the EAGLE settings ``eagle`` (used when a draft is)."""
        if not isinstance(req, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(req).__name__}")
        with self._lock:
            return self._generate(req, on_token, cancel, adapter, eagle)

    def prefill(self, ids: List[int], prefix: int, adapter: str = "",
                draft: bool = False) -> Tuple[Any, int]:
        """Fill the KV cache with the prompt; returns (last logits row, cached rows).

        The first ``prefix`` ids (the cacheable system part) are always run as a
        chunk of their own, so restoring them from the prompt cache gives the
        same bits as computing them. With ``draft`` (EAGLE on), every chunk's
        base features are kept for the draft, the draft catches up on the
        prefix right after it, and cache entries carry the draft's rows too.
        """
        dec, drafter = self.decoder, self.drafter if draft else None
        p = cached = 0
        key = None
        if prefix and self.cache is not None:
            key = prefix_key(ids[:prefix], adapter + ("|eagle" if drafter else ""))
            entry = self.cache.get(key)
            if entry is not None:
                p = cached = dec.kv.restore(entry[0])
                if drafter is not None:
                    drafter.step.kv.restore(entry[1])
                    drafter.done = prefix
        if drafter is not None and not cached:
            drafter.done = 0
        logits = None
        image_row = 0
        for end in ([prefix, len(ids)] if p < prefix else [len(ids)]):
            while p < end:
                n = min(dec.max_chunk, end - p)
                if self._image_rows is not None:  # image embeddings replace placeholders
                    buf = dec.embeds_buffer(n)
                    np.take(dec.embeddings, ids[p:p + n], axis=0, out=buf)
                    image_row = self.vision.merge_chunk(buf, ids[p:p + n], self._image_rows,
                                                        image_row)
                    logits = dec.forward(p, num_tokens=n)
                else:
                    logits = dec.forward(p, ids[p:p + n])
                if drafter is not None:
                    self._feats[p:p + n] = dec.hidden[:n]
                p += n
            if end == prefix and prefix and not cached:
                if drafter is not None:
                    drafter.catch_up(0, ids[1:prefix + 1], self._feats[:prefix])
                if key is not None:
                    base = dec.kv.snapshot(prefix)
                    dsnap = drafter.step.kv.snapshot(prefix) if drafter is not None else None
                    size = dec.kv.snapshot_nbytes(prefix) + (
                        drafter.step.kv.snapshot_nbytes(prefix) if drafter is not None else 0)
                    self.cache.put(key, (base, dsnap), size)
        if logits is None:  # the whole prompt was cached: recompute its last token
            p -= 1
            logits = dec.forward(p, ids[p:p + 1])
            if drafter is not None:
                self._feats[p] = dec.hidden[0]
        return logits[0], cached

    def _plain_tokens(self, row: np.ndarray, pos: int, sample: Callable[[np.ndarray], int]
                      ) -> Iterator[int]:
        """Sample, then run the token, until the KV cache is full."""
        while True:
            tok = sample(row)
            yield tok
            if pos >= self.decoder.max_seq_len:
                return
            row = self.decoder.forward(pos, [tok])[0]
            pos += 1

    def _eagle_tokens(self, ids: List[int], row: np.ndarray, req: GenerationRequest,
                      ec: EagleConfig, stats: SpecStats) -> Iterator[int]:
        drafter = self.drafter
        assert drafter is not None
        sampling = req.sampling
        rng = make_rng(sampling)
        sample = make_sampler(sampling, rng)
        if sampling.greedy:
            accept = accept_greedy
        else:
            dist = make_distribution(sampling)

            def accept(tree, logits):
                return accept_sampling(tree, logits, dist, rng)
        root = sample(row)
        yield root
        P = len(ids)
        d_logits, d_hidden = drafter.catch_up(
            drafter.done, ids[drafter.done + 1:] + [root], self._feats[drafter.done:P])
        yield from speculative_tokens(self.decoder, drafter, ec, root, P, d_logits, d_hidden,
                                      accept, stats)

    def _generate(self, req: GenerationRequest, on_token: Optional[Callable[[TokenEvent], None]],
                  cancel: Optional[threading.Event], adapter: str, ec: EagleConfig) -> GenerationResult:
        t0 = time.perf_counter()
        if self.decoder.lora_slots:
            self.decoder.set_adapter(adapter)
        ids, prefix = self.build_prompt(req)
        # greedy reads only the best logits: the CPU graph's two-pass LM head gives them exactly
        self.decoder.set_fast_head(req.sampling.greedy)
        limit = self.decoder.max_seq_len
        if len(ids) >= limit:
            raise ContextFull(
                f"prompt is {len(ids)} tokens; max_seq_len={limit} leaves no room for an answer")
        use_eagle = bool(ec.enabled and self.drafter is not None)
        stats = SpecStats()
        stop_ids = frozenset() if req.ignore_eos else self.tok.stop_ids
        stops = _StopMatcher(req.stop)
        stream = self.tok.stream()
        text = ""
        emitted = 0
        index = 0
        out: List[int] = []
        finish = FINISH_CONTEXT  # the token source ran dry: the KV cache is full
        t_first = None
        cached = 0

        def emit(upto: int, token_id: int) -> None:
            nonlocal emitted, index
            if on_token is not None:
                on_token(TokenEvent(index, token_id, text[emitted:upto]))
            emitted = upto
            index += 1

        if cancel is not None and cancel.is_set():
            finish = FINISH_CANCELLED
            source: Iterator[int] = iter(())
        else:
            row, cached = self.prefill(ids, prefix, adapter, draft=use_eagle)
            source = self._eagle_tokens(ids, row, req, ec, stats) if use_eagle else \
                self._plain_tokens(row, len(ids), make_sampler(req.sampling))
        for tok in source:
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
                finish = FINISH_LENGTH
                break
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
                break
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
            total_time=t_end - t0, eagle=stats if use_eagle else None)
