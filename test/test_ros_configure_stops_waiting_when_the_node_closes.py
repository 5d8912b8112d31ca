"""on_configure's wait for the engine (ros/loading.run_unless) ends as soon as the node
closes, so the configure's caller is answered; an engine that arrives later is closed, and
a load that ends first gives its result or its exception as if called directly.

The whole path (a real node, a real export, a signal) is in
test_ros_signals_end_the_node_while_configuring.py; this pins each outcome of the wait.
"""

import threading
import time

import pytest

from edgellm_ros.ros.loading import Interrupted, run_unless


def test_closing_ends_the_wait_and_a_late_engine_is_closed():
    release, abort = threading.Event(), threading.Event()
    discarded = []
    done = threading.Event()

    def load():
        release.wait(30)
        return "engine"

    def discard(engine):
        discarded.append(engine)
        done.set()

    threading.Timer(0.2, abort.set).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        run_unless(load, abort, discard)
    assert time.monotonic() - t0 < 2.0, "the wait outlasted the close"
    assert discarded == []          # the load is still running
    release.set()
    assert done.wait(10) and discarded == ["engine"]


def test_a_load_that_ends_first_gives_its_result_or_its_error():
    abort = threading.Event()
    assert run_unless(lambda: 42, abort, discard=pytest.fail) == 42

    def broken():
        raise ValueError("head_count=0 in model.gguf")

    with pytest.raises(ValueError, match="head_count=0"):
        run_unless(broken, abort, discard=pytest.fail)
