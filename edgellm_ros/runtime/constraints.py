"""Schema- and grammar-constrained decoding on llguidance (pinned 1.9.1; no torch).

Two objects:

* :class:`GrammarCompiler`, one per engine: llguidance's view of the model's
  tokenizer, built from our ``tokenizers.Tokenizer`` serialised to
  tokenizer.json text (``LLTokenizer(json_text, ...)``, what
  ``llguidance.hf.from_tokenizer`` does without needing transformers). The
  build walks the whole vocabulary (about 1 s for SmolLM2's 49,152 tokens),
  so it belongs in configure, never in a request.
* :class:`Constraint`, one per request: an ``LLMatcher`` over that tokenizer
  plus the preallocated buffers that turn its bitmask into ``-inf`` logits.

What a request may pass (exactly one of the two, or neither):

* ``json_schema``: JSON Schema text (llguidance's supported subset; its
  ``x-guidance`` key sets compile options, e.g.
  ``{"x-guidance": {"whitespace_flexible": false}, ...}`` for compact JSON).
  Whitespace between JSON tokens is free by default, as the model writes it.
* ``grammar``: a Lark grammar in llguidance's dialect (``start: ...``, with
  ``%json {...}`` and ``/regex/`` terminals), or llama.cpp's GBNF
  (``root ::= ...``, as llama_ros users write it), told apart by llguidance.
  A regex is passed as a grammar that is one Lark regex literal: the text
  ``/[0-9]{3}-(yes|no)/`` (slashes first and last, nothing around them) is
  the regex ``[0-9]{3}-(yes|no)``; Lark's one-rule form
  ``start: /[0-9]{3}-(yes|no)/`` means the same.

A malformed schema or grammar raises :class:`InvalidRequest` carrying the
library's message. End tokens (the tokenizer's ``stop_ids``) are allowed
exactly when the grammar is complete, and are the only tokens allowed once
nothing can follow.

Per token the generator calls :meth:`Constraint.apply` on the logits row it
is about to sample from (or take the argmax of), then :meth:`Constraint.commit`
with the chosen token. EAGLE verification walks the accepted path the same
way (mask the row, pick, commit) and calls :meth:`Constraint.rollback` for
tokens it takes back; :meth:`Constraint.validate_tokens` tells how much of a
draft path the grammar allows without changing the state.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import numpy as np

from ..errors import BackendUnavailable, EdgeLLMError, InvalidRequest, ModelLoadError

if TYPE_CHECKING:  # only for annotations: importing llguidance is deferred to the compiler
    import llguidance

    from .tokenizer import Tokenizer

#: The version the runtime is written and tested against (requirements pin it).
LLGUIDANCE_VERSION = "1.9.1"


#: [256] the additive mask of one mask byte: 8 float32 (0 where its bit is set, -inf where
#: not, low bit first), viewed as one 32-byte item so np.take copies whole rows.
_BYTE_BIAS = np.ascontiguousarray(
    np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, 0.0, -np.inf).astype(np.float32)
).view("V32").reshape(256)


class ConstraintError(EdgeLLMError):
    """The matcher refused a token the runtime committed, or could not roll back.

    A generator that masks before picking never commits a forbidden token,
    so this is a bug or a resource limit of the grammar (llguidance's
    message says which), never a user mistake.
    """

    code = "constraint"


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise BackendUnavailable(
            f"constrained decoding needs llguidance: pip install llguidance=={LLGUIDANCE_VERSION} "
            f"({exc})") from exc
    return llguidance


def regex_of(grammar: str) -> Optional[str]:
    """The regex of a grammar written as one Lark regex literal ``/.../``, else None."""
    text = grammar.strip()
    if len(text) >= 2 and text[0] == "/" and text[-1] == "/" and "\n" not in text:
        return text[1:-1]
    return None


def grammar_definition(json_schema: str = "", grammar: str = "") -> str:
    """Return llguidance's grammar definition (JSON text) for a request's fields.

    Checks the shape of the request only (one of the two, JSON text that is an
    object); the schema or grammar itself is checked when a matcher is built.
    """
    llg = _llguidance()
    if json_schema and grammar:
        raise InvalidRequest("give json_schema or grammar, not both")
    if json_schema:
        try:
            schema = json.loads(json_schema)
        except ValueError as exc:
            raise InvalidRequest(f"json_schema is not JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise InvalidRequest(f"json_schema must be a JSON object, got {type(schema).__name__}")
        return str(llg.LLMatcher.grammar_from_json_schema(schema))
    if not grammar.strip():
        raise InvalidRequest("the grammar is empty")
    regex = regex_of(grammar)
    if regex is not None:
        return str(llg.LLMatcher.grammar_from_regex(regex))
    try:  # Lark as is; GBNF converted to Lark
        return str(llg.grammar_from("grammar", grammar))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


class GrammarCompiler:
    """llguidance's tokenizer for one engine; compiles requests into constraints."""

    def __init__(self, tokenizer: "Tokenizer", vocab_size: Optional[int] = None) -> None:
        """Build llguidance's view of ``tokenizer``.

        ``vocab_size``: the width of the model's logits rows (default: the
        tokenizer's); ids the tokenizer lacks are always forbidden.
        """
        llg = _llguidance()
        self.vocab_size = int(vocab_size or tokenizer.vocab_size)  # logits row width
        if self.vocab_size < tokenizer.vocab_size:
            raise ModelLoadError(f"logits width {self.vocab_size} is below the tokenizer's "
                                 f"{tokenizer.vocab_size} tokens")
        #: the end tokens, allowed when the grammar is complete
        self.stop_ids = sorted(tokenizer.stop_ids)
        spec = json.loads(tokenizer.backend.to_str())  # tokenizer.json text
        spec["padding"] = spec["truncation"] = None    # as llguidance.hf.from_tokenizer does
        self.ll_tokenizer: "llguidance.LLTokenizer" = llg.LLTokenizer(
            json.dumps(spec), n_vocab=tokenizer.vocab_size, eos_token=self.stop_ids)

    def compile(self, json_schema: str = "", grammar: str = "") -> "Constraint":
        """A fresh constraint for one request.

        Raises InvalidRequest with llguidance's message when the schema or grammar is malformed.
        """
        llg = _llguidance()
        definition = grammar_definition(json_schema, grammar)
        matcher = llg.LLMatcher(self.ll_tokenizer, definition, log_level=0)
        if matcher.is_error():
            what = "json_schema" if json_schema else "grammar"
            raise InvalidRequest(f"{what} rejected by llguidance: {matcher.get_error()}")
        return Constraint(matcher, self.ll_tokenizer.vocab_size, self.vocab_size, self.stop_ids)


class Constraint:
    """One request's grammar state: masks logits rows, follows the chosen tokens."""

    def __init__(self, matcher: "llguidance.LLMatcher", n_tokens: int, vocab_size: int,
                 stop_ids: Sequence[int]) -> None:
        """Wrap one llguidance matcher; prefer :meth:`GrammarCompiler.compile`.

        ``n_tokens``: the tokenizer's vocabulary; ``vocab_size``: the logits row
        width (>= n_tokens); ``stop_ids``: the end tokens the tokenizer was built with.
        """
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._stop_ids = frozenset(int(t) for t in stop_ids)
        self._history: List[bool] = []             # per commit: whether llguidance counted it
        words = (n_tokens + 31) // 32
        self._bits = np.zeros(words, np.int32)     # llguidance's mask: bit t%32 of word t//32
        self._bytes = self._bits.view(np.uint8)    # little-endian: bit t%8 of byte t//8
        self._bias = np.zeros(words * 32, np.float32)    # [n rounded up] 0 allowed, -inf not
        self._bias8 = self._bias.view(_BYTE_BIAS.dtype)  # [n/8] 8 floats per mask byte
        self._n = n_tokens
        self._fresh = False                        # _bias holds the mask of the current state

    # -- the mask -------------------------------------------------------------
    def _compute(self) -> np.ndarray:
        """The additive mask [n] of the current state (recomputed after a commit or rollback)."""
        if not self._fresh:
            self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            if self.matcher.is_error():
                raise ConstraintError(f"llguidance: {self.matcher.get_error()}")
            # each mask byte selects its 8 floats (no allocation; "clip" skips bounds checks)
            np.take(_BYTE_BIAS, self._bytes, out=self._bias8, mode="clip")
            self._fresh = True
        return self._bias[:self._n]

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of the tokens the grammar forbids now to -inf, in place ([V] row)."""
        if logits.ndim != 1 or logits.shape[0] != self.vocab_size:
            raise InvalidRequest(f"logits row must have shape ({self.vocab_size},), got {logits.shape}")
        head = logits[:self._n]
        np.add(head, self._compute(), out=head)    # x + 0 = x exactly; x + -inf = -inf
        if self.vocab_size > self._n:
            logits[self._n:] = -np.inf

    def allowed(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Bool [V]: the tokens the grammar allows now (into ``out`` when given)."""
        if out is None:
            out = np.empty(self.vocab_size, np.bool_)
        np.equal(self._compute(), 0.0, out=out[:self._n])
        out[self._n:] = False
        return out

    # -- the state ------------------------------------------------------------
    def commit(self, token_id: int) -> None:
        """Advance by the chosen token; ConstraintError if the grammar forbids it."""
        tok = int(token_id)
        # llguidance keeps no history entry for an end token taken once nothing can follow
        counted = not (tok in self._stop_ids and self.matcher.is_stopped())
        if not self.matcher.consume_token(tok):
            raise ConstraintError(f"token {tok} is not allowed here: {self.matcher.get_error()}")
        self._history.append(counted)
        self._fresh = False

    @property
    def committed(self) -> int:
        """The number of tokens taken so far, which rollback may undo."""
        return len(self._history)

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` commits (EAGLE: the tokens of a rejected path)."""
        if n < 0 or n > len(self._history):
            raise ConstraintError(f"cannot roll back {n} tokens: {len(self._history)} committed")
        if n == 0:
            return
        undo = sum(self._history[-n:])
        if undo and not self.matcher.rollback(undo):
            raise ConstraintError(f"llguidance refused to roll back {undo} tokens: {self.matcher.get_error()}")
        del self._history[-n:]
        self._fresh = False

    def validate_tokens(self, ids: Sequence[int]) -> int:
        """How many of ``ids``, in order from the current state, the grammar allows (no change)."""
        toks: List[int] = [int(t) for t in ids]
        return int(self.matcher.validate_tokens(toks)) if toks else 0

    def is_accepting(self) -> bool:
        """The text so far is a complete answer (an end token is allowed)."""
        return bool(self.matcher.is_accepting())

    def is_finished(self) -> bool:
        """Nothing can follow but an end token (or an end token was committed)."""
        return bool(self.matcher.is_stopped())
