"""A generation session: prompt -> prefill -> decode loop -> finish reason.

The loop reads one row of logits per step, picks a token, streams the text
delta through a callback and stops on an end token, a stop string,
max_new_tokens, a full KV cache or a cancellation from another thread.

The prompt (chat.py) comes with cuts, where its reusable prefixes end; the
prefill restores the KV rows of the longest cached one and runs the tokens
between two cuts as chunks of their own, cache or no cache, so the logits are
those of a cold prefill bit for bit; after the request the rows up to its
first and last cut (the system part, the whole conversation before the
answer) go into the prompt cache.

With a :class:`~.constraints.Constraint` (json_schema, grammar) every logits
row is masked before the token is picked (sampling or argmax) and the picked
token is committed to the matcher; under EAGLE the acceptance walk masks each
verify row it reaches and commits what it accepts, so a draft token the
grammar forbids is never accepted and the matcher never holds a rejected one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import DecoderStep, TextTokenizer
from ..errors import ContextFull, InvalidRequest
from .chat import Cut, Prompt, answered_prompt, render_prompt
from .config import GenerationRequest
from .constraints import Constraint
from .prompt_cache import PromptCache, prefix_keys
from .sampling import make_distribution, make_rng, make_sampler
from .speculative import (Drafter, EagleConfig, SpecStats, accept_greedy, accept_sampling,
                          speculative_tokens)
from .vision import VisionPipeline

FINISH_STOP = "stop"                # an end-of-sequence / end-of-turn token
FINISH_STOP_STRING = "stop_string"  # one of the request's stop strings
FINISH_LENGTH = "length"            # max_new_tokens reached
FINISH_CONTEXT = "context_full"     # the KV cache (max_seq_len) is full
FINISH_CANCELLED = "cancelled"      # cancel event set from another thread
FLUSH_ID = -1       # TokenEvent.token_id of a final text-only flush (no token)
PIECE_ID = -2       # TokenEvent.token_id of a remote server's piece (one token, id unknown)


@dataclass(frozen=True)
class TokenEvent:
    """One streamed piece of the answer."""

    index: int      # 0, 1, 2... contiguous over the request
    token_id: int   # the generated token; FLUSH_ID for a final text-only flush, PIECE_ID for
    #                 one piece of a remote server's stream (a token whose id is not known)
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


class StopMatcher:
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
        rows = decoder.max_seq_len if drafter is not None else 0
        self._feats = np.zeros((rows, decoder.feature_size), np.float32)
        self._lock = threading.Lock()
        # the last answered conversation still to be cached: (ids, cuts, adapter)
        self._answered: Optional[Tuple[List[int], Tuple[Cut, ...], str]] = None

    # -- prompt ---------------------------------------------------------------
    def build_prompt(self, req: GenerationRequest) -> Tuple[List[int], Tuple[Cut, ...]]:
        """Token ids of the request and its cuts (chat.py: where reusable prefixes end).

        With images, their embeddings are computed here too (kept for the
        prefill); the image tokens count against max_seq_len.
        """
        prompt = self._render(req)
        return prompt.ids, prompt.cuts

    def _render(self, req: GenerationRequest) -> Prompt:
        prompt = render_prompt(self.tok, self.vision, req, self.decoder.max_seq_len)
        self._image_rows = prompt.image_rows
        return prompt

    # -- run ------------------------------------------------------------------
    def generate(self, req: GenerationRequest,
                 on_token: Optional[Callable[[TokenEvent], None]] = None,
                 cancel: Optional[threading.Event] = None, adapter: str = "",
                 eagle: EagleConfig = EagleConfig(), constraint: Optional[Constraint] = None
                 ) -> GenerationResult:
        """Answer ``req``.

        With the LoRA ``adapter`` ("" = the base model; the caller has checked that it
        is loaded), the EAGLE settings ``eagle`` (used when a draft is) and
        ``constraint`` (compiled from the request's json_schema or grammar, fresh).
        """
        if not isinstance(req, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(req).__name__}")
        with self._lock:
            self._cache_answer()
            return self._generate(req, on_token, cancel, adapter, eagle, constraint)

    def cache_answer(self) -> bool:
        """Cache the KV rows of the last request's conversation with its answer.

        The rows up to the prompt's last cut are already the prefill's; the
        answer (with its chat markers) is prefilled here as the one chunk a cold
        prefill of the conversation's next turn runs, so that turn restores it
        bit for bit. Call it when idle after a request (the ROS worker does,
        once the response is out); :meth:`generate` calls it first otherwise.
        Returns whether an entry was added.
        """
        with self._lock:
            return self._cache_answer()

    def _cache_answer(self) -> bool:
        pending, self._answered = self._answered, None
        if pending is None or self.cache is None:
            return False
        ids, cuts, adapter = pending
        start = cuts[-2].pos
        if self.decoder.lora_slots:
            self.decoder.set_adapter(adapter)
        self.decoder.set_features(False)   # the session the request ran on (EAGLE was off)
        self._image_rows = None       # the answer shows no image
        p = start
        while p < len(ids):
            n = min(self.decoder.max_chunk, len(ids) - p)
            self.decoder.forward(p, ids[p:p + n])
            p += n
        return self.store_prefixes(ids, cuts, adapter) > 0

    def _cache_tag(self, adapter: str, draft: bool) -> str:
        # entries made with EAGLE on carry the draft's rows too
        return adapter + ("|eagle" if draft and self.drafter is not None else "")

    def prefill(self, ids: List[int], cuts: Sequence[Cut] = (), adapter: str = "",
                draft: bool = False, cancel: Optional[threading.Event] = None) -> Tuple[Any, int]:
        """Fill the KV cache with the prompt; returns (last logits row, cached rows).

        A ``cancel`` set while it runs stops it before the next chunk: the row is then None.

        The rows of the longest cached prefix ending at one of ``cuts`` are
        restored; the tokens between two cuts are always run as chunks of
        their own, so restored rows are the bits computing them gives. With
        ``draft`` (EAGLE on), every chunk's base features are kept for the
        draft, whose rows of a cached prefix are restored too (it catches up
        on the rest when decoding starts).
        """
        dec, drafter = self.decoder, self.drafter if draft else None
        self._answered = None   # its rows are overwritten now: nothing left to cache
        p = cached = 0
        if cuts and self.cache is not None:
            _, entry = self.cache.longest(ids, [c.pos for c in cuts], self._cache_tag(adapter, draft),
                                          [c.salt for c in cuts])
            if entry is not None:
                p = cached = dec.kv.restore(entry[0])
                if drafter is not None:
                    drafter.step.kv.restore(entry[1])
        if drafter is not None:
            drafter.done = cached
        logits = None
        image_row = 0
        if self._image_rows is not None and self.vision is not None and cached:
            # image rows the restored prefix holds
            image_row = int(np.count_nonzero(np.asarray(ids[:cached]) == self.vision.image_token_id))
        for end in [c.pos for c in cuts if c.pos > p] + [len(ids)]:
            while p < end:
                if cancel is not None and cancel.is_set():
                    return None, cached
                n = min(dec.max_chunk, end - p)
                if self._image_rows is not None and self.vision is not None:  # image rows replace placeholders
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
        if logits is None:
            raise InvalidRequest("the prompt is empty")
        return logits[0], cached

    def store_prefixes(self, ids: List[int], cuts: Sequence[Cut], adapter: str = "",
                       draft: bool = False) -> int:
        """Copy the KV rows up to the first and the last cut into the prompt cache.

        Called after a request (decoding never writes rows of the prompt); returns how
        many entries were added.
        """
        if self.cache is None or not cuts:
            return 0
        drafter = self.drafter if draft else None
        keys = prefix_keys(ids, [c.pos for c in cuts], self._cache_tag(adapter, draft),
                           [c.salt for c in cuts])
        added = 0
        for key in dict.fromkeys((keys[0], keys[-1])):
            rows = key[2]
            if key in self.cache or (drafter is not None and drafter.done < rows):
                continue
            kv = self.decoder.kv
            size = kv.snapshot_nbytes(rows) + (
                drafter.step.kv.snapshot_nbytes(rows) if drafter is not None else 0)
            if size > self.cache.max_bytes:
                continue
            dsnap = drafter.step.kv.snapshot(rows) if drafter is not None else None
            # the first cut is the system part: shared by every request, pinned
            added += self.cache.put(key, (kv.snapshot(rows), dsnap), size,
                                    pinned=key is keys[0] and len(keys) > 1)
        return added

    def _plain_tokens(self, row: np.ndarray, pos: int, sample: Callable[[np.ndarray], int],
                      constraint: Optional[Constraint] = None) -> Iterator[int]:
        """Sample (from the masked row), then run the token, until the KV cache is full."""
        while True:
            if constraint is not None:
                constraint.apply(row)       # in place: the backend's output row
            tok = sample(row)
            if constraint is not None:
                constraint.commit(tok)
            yield tok
            if pos >= self.decoder.max_seq_len:
                return
            row = self.decoder.forward(pos, [tok])[0]
            pos += 1

    def _eagle_tokens(self, ids: List[int], row: np.ndarray, req: GenerationRequest,
                      ec: EagleConfig, stats: SpecStats, constraint: Optional[Constraint] = None
                      ) -> Iterator[int]:
        drafter = self.drafter
        assert drafter is not None
        sampling = req.sampling
        rng = make_rng(sampling)
        sample = make_sampler(sampling, rng)
        if sampling.greedy:
            def accept(tree, logits):
                return accept_greedy(tree, logits, constraint)
        else:
            dist = make_distribution(sampling)

            def accept(tree, logits):
                return accept_sampling(tree, logits, dist, rng, constraint)
        if constraint is not None:
            constraint.apply(row)
        root = sample(row)
        if constraint is not None:
            constraint.commit(root)
        yield root
        P = len(ids)
        d_logits, d_hidden = drafter.catch_up(
            drafter.done, ids[drafter.done + 1:] + [root], self._feats[drafter.done:P])
        yield from speculative_tokens(self.decoder, drafter, ec, root, P, d_logits, d_hidden,
                                      accept, stats, chain=sampling.greedy)

    def _generate(self, req: GenerationRequest, on_token: Optional[Callable[[TokenEvent], None]],
                  cancel: Optional[threading.Event], adapter: str, ec: EagleConfig,
                  constraint: Optional[Constraint]) -> GenerationResult:
        t0 = time.perf_counter()
        use_eagle = bool(ec.enabled and self.drafter is not None)
        if self.decoder.lora_slots:
            self.decoder.set_adapter(adapter)
        # no adapter and EAGLE off: the plain session, where the backend has one
        self.decoder.set_features(use_eagle)
        prompt = self._render(req)
        ids, cuts = prompt.ids, prompt.cuts
        # greedy reads only the best logits: the CPU graph's two-pass LM head gives them exactly.
        # Not with a constraint: the mask may remove every exact candidate, and the argmax over
        # the head's estimates of the others would not be the exact one
        self.decoder.set_fast_head(req.sampling.greedy and constraint is None)
        limit = self.decoder.max_seq_len
        if len(ids) >= limit:
            raise ContextFull(
                f"prompt is {len(ids)} tokens; max_seq_len={limit} leaves no room for an answer")
        stats = SpecStats()
        # a constraint allows end tokens only where the answer is complete: they end it even
        # with ignore_eos
        stop_ids = frozenset() if req.ignore_eos and constraint is None else self.tok.stop_ids
        stops = StopMatcher(req.stop)
        stream = self.tok.stream()
        text = ""
        emitted = 0
        index = 0
        out: List[int] = []
        finish = FINISH_CONTEXT  # the token source ran dry: the KV cache is full
        t_first = None
        cached = 0
        prefilled = False

        def emit(upto: int, token_id: int) -> None:
            nonlocal emitted, index
            if on_token is not None:
                on_token(TokenEvent(index, token_id, text[emitted:upto]))
            emitted = upto
            index += 1

        source: Iterator[int]
        row: Any = None
        if cancel is None or not cancel.is_set():
            row, cached = self.prefill(ids, cuts, adapter, draft=use_eagle, cancel=cancel)
            prefilled = row is not None
        if not prefilled:       # cancelled before or during the prefill
            finish = FINISH_CANCELLED
            source = iter(())
        else:
            source = self._eagle_tokens(ids, row, req, ec, stats, constraint) if use_eagle else \
                self._plain_tokens(row, len(ids), make_sampler(req.sampling), constraint)
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
        if prefilled:
            self.store_prefixes(ids, cuts, adapter, draft=use_eagle)
            # the draft's rows would need a catch-up over the answer: base entries only
            if self.cache is not None and not use_eagle and finish != FINISH_CONTEXT:
                answered = answered_prompt(self.tok, self.vision, req, prompt, text)
                if answered is not None and len(answered[0]) < self.decoder.max_seq_len:
                    self._answered = (answered[0], answered[1], adapter)
        first = t_first if t_first is not None else t_end
        decode_n = max(len(out) - 1, 0)
        return GenerationResult(
            text=text, token_ids=out, finish_reason=finish, prompt_tokens=len(ids),
            generated_tokens=len(out), cached_tokens=cached,
            time_to_first_token=first - t0,
            tokens_per_second=decode_n / (t_end - first) if decode_n and t_end > first else 0.0,
            total_time=t_end - t0, eagle=stats if use_eagle else None)
