"""backend remote, without ROS: every server fault ends the request with its reason, in bounded time.

The faults come from the proxy of test/remote_support.py in front of a real
llama.cpp server: 429/503 answers, a stall, a stream cut off or garbled, and a
cancel while the server streams.
"""

from __future__ import annotations

import threading
import time

import pytest
from remote_support import MODEL

from edgellm_ros.errors import BackendError
from edgellm_ros.runtime.config import EngineConfig, GenerationRequest, RemoteConfig, SamplingConfig
from edgellm_ros.runtime.engine import open_engine
from edgellm_ros.runtime.remote import StreamInterrupted

STORY = GenerationRequest(prompt="Tell me a long story about a robot.", max_new_tokens=64,
                          sampling=SamplingConfig(temperature=0.0))


@pytest.fixture
def proxy(fault_proxy):
    fault_proxy.reset()
    yield fault_proxy
    fault_proxy.reset()


def engine_for(proxy, **remote):
    cfg = RemoteConfig(url=proxy.url, model=MODEL, **{"timeout_s": 30.0, **remote})
    return open_engine(EngineConfig(backend="remote", remote=cfg))


def test_429_and_503_are_retried_with_backoff_before_the_first_token(proxy):
    eng = engine_for(proxy, max_retries=2)
    try:
        proxy.statuses, before = [503, 429], proxy.attempts
        t0 = time.monotonic()
        res = eng.generate(STORY)
        assert res.text and proxy.attempts - before == 3
        assert time.monotonic() - t0 >= 0.5 * 0.75 + 1.0 * 0.75     # two backoffs: 0.5 s, then 1 s (-25%)
        proxy.statuses, before = [503, 503, 503], proxy.attempts
        with pytest.raises(BackendError, match=r"HTTP 503.*gave up after 3 attempt\(s\).*max_retries=2"):
            eng.generate(STORY)
        assert proxy.attempts - before == 3
        proxy.statuses, proxy.retry_after, before = [429], "1.5", proxy.attempts
        t0 = time.monotonic()
        assert eng.generate(STORY).text
        assert time.monotonic() - t0 >= 1.5 and proxy.attempts - before == 2   # Retry-After honoured
    finally:
        eng.close()


def test_a_stream_cut_off_ends_with_the_partial_text_and_is_not_retried(proxy):
    eng = engine_for(proxy, max_retries=2)
    try:
        events = []
        proxy.cut_after, before = 6, proxy.attempts
        with pytest.raises(StreamInterrupted, match="broke off") as err:
            eng.generate(STORY, on_token=events.append)
        partial = err.value.partial
        streamed = "".join(e.text for e in events)
        assert partial.text and partial.text == streamed and partial.finish_reason == "error"
        assert partial.text == proxy.streamed        # all the server sent before the cut
        assert proxy.attempts - before == 1          # nothing is retried once tokens have streamed
    finally:
        eng.close()


def test_garbage_in_the_stream_is_a_backend_error(proxy):
    eng = engine_for(proxy)
    try:
        proxy.garbage_after = 3
        with pytest.raises(BackendError, match="malformed stream") as err:
            eng.generate(STORY)
        assert isinstance(err.value, StreamInterrupted) and err.value.partial.text
    finally:
        eng.close()


def test_a_slow_server_times_out_instead_of_hanging(proxy):
    eng = engine_for(proxy, timeout_s=1.0, max_retries=0)
    try:
        proxy.stall_s = 4.0
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"within remote.timeout_s=1 s"):
            eng.generate(STORY)
        assert time.monotonic() - t0 < 3.0
        proxy.stall_s, proxy.pace_s = 0.0, 2.0      # a stream that stalls between pieces
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"within remote.timeout_s=1 s"):
            eng.generate(STORY)
        assert time.monotonic() - t0 < 3.0
    finally:
        proxy.reset()
        time.sleep(4.5)      # let the stalled proxy threads finish before the next test
        eng.close()


def test_cancel_closes_the_stream_with_the_partial_text(proxy):
    eng = engine_for(proxy)
    try:
        cancel = threading.Event()
        events = []

        def on_token(e):
            events.append(e)
            if len(events) == 3:
                cancel.set()
        proxy.pace_s = 0.05
        res = eng.generate(STORY, on_token=on_token, cancel=cancel)
        assert res.finish_reason == "cancelled" and res.text == "".join(e.text for e in events)
        assert len(events) == 3
        assert proxy.client_closed.wait(5.0)          # the proxy saw the client drop the stream
        assert proxy.events_sent < 40
    finally:
        eng.close()
