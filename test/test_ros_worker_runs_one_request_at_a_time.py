"""The worker: one generation at a time, a bounded queue, drop and stop rules.

The queue logic is exercised with a stand-in engine whose generation waits for
the test's signal, so every interleaving is deterministic; the node tests run
the real engine.
"""

import threading

import pytest

from edgellm_ros.runtime.config import GenerationRequest
from edgellm_ros.errors import ContextFull
from edgellm_ros.runtime.generation import GenerationResult, TokenEvent
from edgellm_ros.ros.ask import NotActive, QueueFull
from edgellm_ros.ros.worker import GenerationWorker, Job


class GatedEngine:
    """generate() streams one token, then waits for ``release`` (or cancel)."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def generate(self, request, on_token=None, cancel=None):
        deaf = request.prompt == "deaf"     # a step that ignores cancel (a long prefill chunk)
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.started.release()
            if request.prompt == "boom":
                raise ContextFull("prompt is 9999 tokens")
            on_token(TokenEvent(0, 5, "a"))
            while not self.release.wait(0.01):
                if cancel.is_set() and not deaf:
                    return GenerationResult("a", [5], "cancelled", 3, 1)
            return GenerationResult("a", [5], "length", 3, 1)
        finally:
            with self._lock:
                self.active -= 1

    def cache_answer(self):
        return False


class Outcomes:
    def __init__(self):
        self.done = {}
        self.tokens = {}
        self.cond = threading.Condition()

    def job(self, rid, prompt="hi"):
        def on_done(result, error):
            with self.cond:
                self.done[rid] = (result, error)
                self.cond.notify_all()
        return Job(rid, GenerationRequest(prompt=prompt),
                   lambda ev: self.tokens.setdefault(rid, []).append(ev), on_done)

    def wait(self, *rids):
        with self.cond:
            assert self.cond.wait_for(lambda: all(r in self.done for r in rids), timeout=10)
        return [self.done[r] for r in rids]


@pytest.fixture
def setup():
    engine, out, size = GatedEngine(), Outcomes(), [1]
    worker = GenerationWorker(engine, lambda: size[0], log=lambda m: None)
    yield engine, out, worker, size
    engine.release.set()
    worker.stop(NotActive("test over"), timeout=10)


def test_beyond_the_queue_bound_requests_are_refused_at_once(setup):
    engine, out, worker, size = setup
    worker.submit(out.job(1))
    assert engine.started.acquire(timeout=10)
    worker.submit(out.job(2))                   # waits (queue_size 1)
    with pytest.raises(QueueFull) as info:
        worker.submit(out.job(3))
    assert "1 generating and 1 waiting (queue_size=1)" in str(info.value)
    size[0] = 2                                  # a parameter change applies at once
    worker.submit(out.job(4))
    engine.release.set()
    results = out.wait(1, 2, 4)
    assert all(r.finish_reason == "length" and e is None for r, e in results)
    assert engine.max_active == 1                # one generation at a time


def test_queue_size_zero_takes_only_the_running_request(setup):
    engine, out, worker, size = setup
    size[0] = 0
    worker.submit(out.job(1))
    with pytest.raises(QueueFull):
        worker.submit(out.job(2))
    engine.release.set()
    assert out.wait(1)[0][1] is None


def test_drop_waiting_answers_queued_requests_and_the_running_one_completes(setup):
    engine, out, worker, size = setup
    worker.submit(out.job(1))
    assert engine.started.acquire(timeout=10)
    worker.submit(out.job(2))
    assert worker.drop_waiting(NotActive("deactivated")) == 1
    (_, error), = out.wait(2)
    assert isinstance(error, NotActive)
    engine.release.set()
    (result, error), = out.wait(1)
    assert error is None and result.finish_reason == "length"
    assert [ev.text for ev in out.tokens[1]] == ["a"]


def test_an_engine_error_is_delivered_and_the_worker_goes_on(setup):
    engine, out, worker, size = setup
    worker.submit(out.job(1, prompt="boom"))
    (result, error), = out.wait(1)
    assert result is None and isinstance(error, ContextFull)
    engine.release.set()
    worker.submit(out.job(2))
    assert out.wait(2)[0][1] is None


def test_stop_cancels_the_running_request_and_refuses_new_ones(setup):
    engine, out, worker, size = setup
    worker.submit(out.job(1))
    assert engine.started.acquire(timeout=10)
    worker.submit(out.job(2))
    assert worker.stop(NotActive("cleaned up"), timeout=10)
    (r1, e1), (r2, e2) = out.wait(1, 2)
    assert e1 is None and r1.finish_reason == "cancelled"
    assert r2 is None and isinstance(e2, NotActive)
    with pytest.raises(NotActive):
        worker.submit(out.job(3))


def test_stop_answers_a_running_request_that_outlasts_the_timeout_with_its_streamed_text(setup):
    engine, out, worker, size = setup
    worker.submit(out.job(1, prompt="deaf"))
    assert engine.started.acquire(timeout=10)
    assert not worker.stop(NotActive("shutting down"), timeout=0.2)
    (result, error), = out.wait(1)               # answered now, not when the step ends
    assert error is None and result.finish_reason == "cancelled" and result.text == "a"
    engine.release.set()                         # the step ends: its own outcome is dropped
    worker._thread.join(10)
    assert not worker._thread.is_alive() and out.done[1] == (result, None)
