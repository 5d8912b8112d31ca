"""One generation at a time on a worker thread, with a bounded queue in front.

ROS-free: the node gives each :class:`Job` two callbacks (stream a token,
deliver the outcome) and the worker calls them from its thread. ``submit``
never blocks: beyond the queue bound it raises QueueFull at once, so the
service can answer right away.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

from ..runtime.config import GenerationRequest
from ..runtime.generation import FINISH_CANCELLED, GenerationResult, TokenEvent
from .ask import NotActive, QueueFull

#: on_done(result, error): exactly one of the two is None.
DoneCallback = Callable[[Optional[GenerationResult], Optional[BaseException]], None]


@dataclass
class Job:
    """One accepted request."""

    request_id: int
    request: GenerationRequest
    on_token: Callable[[TokenEvent], None]
    on_done: DoneCallback
    # Set to stop the generation at the next token.
    cancel: threading.Event = field(default_factory=threading.Event)
    # The text streamed so far (what an abandoned job is answered with).
    streamed: List[str] = field(default_factory=list)
    # Whether on_done has been called (it is called once).
    finished: bool = False


class GenerationWorker:
    """Runs jobs one at a time on its own thread.

    ``queue_size`` is read at every submit, so a parameter change applies to
    the next request.
    """

    def __init__(self, engine, queue_size: Callable[[], int],
                 log: Callable[[str], object] = print, name: str = "edgellm-worker"):
        self._engine = engine
        self._queue_size = queue_size
        self._log = log
        self._queue: Deque[Job] = deque()
        self._running: Optional[Job] = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; raises QueueFull or NotActive (stopping) without blocking."""
        with self._cond:
            if self._stopping:
                raise NotActive("the node is releasing its engine; no request is taken")
            waiting, limit = len(self._queue), self._queue_size()
            if waiting + (self._running is not None) > limit:
                raise QueueFull(
                    f"request queue is full: {int(self._running is not None)} generating and "
                    f"{waiting} waiting (queue_size={limit}); retry later")
            self._queue.append(job)
            self._cond.notify()

    def drop_waiting(self, error: BaseException) -> int:
        """Finish every queued (not yet running) job with ``error``; returns how many."""
        with self._cond:
            dropped: List[Job] = list(self._queue)
            self._queue.clear()
        for job in dropped:
            self._finish(job, None, error)
        return len(dropped)

    def stop(self, error: BaseException, timeout: Optional[float] = None) -> bool:
        """Drop queued jobs with ``error``, cancel the running one, end the thread.

        The running job still gets its outcome (a "cancelled" result); if the thread did
        not end within ``timeout`` (a long prefill chunk), it gets it now, with the text
        streamed so far, and False is returned.
        """
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
        self.drop_waiting(error)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._engine = None   # the caller frees it; this worker must not keep it alive
            return True
        # A step that outlasts the timeout (a long prefill chunk on a busy CPU): its caller is
        # answered now with what was streamed; the thread's own outcome is dropped later.
        with self._cond:
            job = self._running
        if job is not None:
            self._finish(job, GenerationResult(
                text="".join(job.streamed), token_ids=[], finish_reason=FINISH_CANCELLED,
                prompt_tokens=0, generated_tokens=len(job.streamed)), None)
        return False

    def cancel(self, job: Job) -> None:
        """Stop ``job``.

        A running one stops at its next token (its outcome is a "cancelled" result with
        the partial text), a waiting one at once (an empty "cancelled" result).
        """
        job.cancel.set()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:  # running or already finished: the event stops it
                return
        self._finish(job, GenerationResult(text="", token_ids=[], finish_reason=FINISH_CANCELLED,
                                           prompt_tokens=0, generated_tokens=0), None)

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        with self._cond:
            return len(self._queue) + (self._running is not None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
                if self._stopping:
                    job.cancel.set()
            result: Optional[GenerationResult] = None
            error: Optional[BaseException] = None
            try:
                result = self._engine.generate(job.request, on_token=self._streaming(job),
                                               cancel=job.cancel)
            except Exception as exc:  # delivered to the caller, never kills the thread
                error = exc
            with self._cond:
                self._running = None
            self._finish(job, result, error)
            if result is not None and not self._stopping:
                try:  # the answer's rows for the conversation's next turn, once it is answered
                    self._engine.cache_answer()
                except Exception as exc:  # the next request's prefill simply computes them
                    self._log(f"request {job.request_id}: caching the answer failed: {exc!r}")

    @staticmethod
    def _streaming(job: Job) -> Callable[[TokenEvent], None]:
        def on_token(ev: TokenEvent) -> None:
            job.streamed.append(ev.text)
            job.on_token(ev)
        return on_token

    def _finish(self, job: Job, result: Optional[GenerationResult],
                error: Optional[BaseException]) -> None:
        with self._cond:
            if job.finished:     # answered already (abandoned by stop)
                return
            job.finished = True
        try:
            job.on_done(result, error)
        except Exception as exc:  # a broken callback must not stop the worker
            self._log(f"request {job.request_id}: delivering the outcome failed: {exc!r}")
