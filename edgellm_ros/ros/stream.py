"""One accepted request's outputs, written from the worker thread.

Every request (a call of /ask or a goal of ~/generate) streams Token messages
on ~/tokens; a goal also gets each piece as action feedback. Indices are
contiguous from 0; the last Token has done=true and carries whatever part of
the final text was not streamed yet, so the texts always concatenate to the
answer (the feedback pieces too: that last part, when not empty, is sent as
feedback as well). The outcome completes a future the answering coroutine
awaits.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Tuple

from ..msg import Token
from ..runtime.generation import FLUSH_ID, GenerationResult, TokenEvent

Outcome = Tuple[Optional[GenerationResult], Optional[BaseException]]


class TokenStream:
    """Publishes one request's pieces; ``done`` gets its (result, error)."""

    def __init__(self, request_id: int, publish: Callable[[Token], None], done: Any,
                 executor: Any, on_outcome: Callable[[Outcome], None],
                 warn: Callable[[str], object]):
        self.request_id = request_id
        self.done = done
        self.job: Any = None            # the worker Job, set when queued
        self._publish = publish
        self._executor = executor
        self._on_outcome = on_outcome
        self._warn = warn
        self._lock = threading.Lock()
        self._index = 0
        self._generated = 0
        self._streamed: List[str] = []
        self._counts: List[int] = []    # tokens generated when each piece was sent
        self._feedback: Optional[Callable[[int, str, int], None]] = None

    def attach_feedback(self, feedback: Callable[[int, str, int], None]) -> None:
        """Send every piece, from the first one on, to ``feedback(index, text, generated)``."""
        with self._lock:
            for i, (text, count) in enumerate(zip(self._streamed, self._counts)):
                if text or i < len(self._streamed) - 1:
                    feedback(i, text, count)
            self._feedback = feedback

    def _send(self, text: str, done: bool = False, finish_reason: str = "") -> None:
        """Publish one piece (call with the lock held)."""
        index = self._index
        self._index += 1
        self._counts.append(self._generated)
        self._publish(Token(request_id=self.request_id, index=index, text=text, done=done,
                            finish_reason=finish_reason))
        if self._feedback is not None and (text or not done):
            self._feedback(index, text, self._generated)

    def on_token(self, event: TokenEvent) -> None:
        with self._lock:
            if event.token_id != FLUSH_ID:
                self._generated += 1
            self._streamed.append(event.text)
            self._send(event.text)

    def on_done(self, result: Optional[GenerationResult],
                error: Optional[BaseException]) -> None:
        tail, reason = "", "error"
        try:
            with self._lock:
                if result is not None:
                    reason = result.finish_reason
                    sent = "".join(self._streamed)
                    if result.text.startswith(sent):
                        tail = result.text[len(sent):]
                    else:
                        self._warn(f"request {self.request_id}: streamed text is not a prefix "
                                   "of the answer")
                self._streamed.append(tail)
                self._send(tail, done=True, finish_reason=reason)
        finally:
            try:
                self._on_outcome((result, error))
            finally:
                self.done.set_result((result, error))
                if self._executor is not None:
                    self._executor.wake()  # resume the awaiting callback
