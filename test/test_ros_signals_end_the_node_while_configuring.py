"""SIGINT / SIGTERM end edgellm_node within 2 s even while a configure exports the engine,
get_state and the parameter services answer during that configure, the configure's caller
is answered (failed) before the process goes, and the cut-off export leaves nothing.

A real subprocess (as ``ros2 run`` starts it) with a fresh EDGELLM_CACHE, so configure has
to export the embedded model (tens of seconds on a CPU); the signal comes in the middle.
"""

import signal
import threading
import time

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from support import node_process, wait_for_line

#: The bound the issue sets, from the signal to the end of the process.
EXIT_WITHIN_S = 2.0


@pytest.mark.parametrize("signum, during", [
    (signal.SIGINT, "loaded weights"),      # the export is writing ONNX graphs
    (signal.SIGTERM, "exporting"),          # the export is reading the weights
])
def test_a_signal_during_an_export_ends_the_node_within_two_seconds(tmp_path, signum, during):
    log = tmp_path / "node.log"
    cache = tmp_path / "cache"
    with node_process(log, "-p", "max_seq_len:=256", env={"EDGELLM_CACHE": str(cache)}) \
            as (proc, client, ns):
        answered = threading.Event()
        future = client._change_state.call_async(
            ChangeState.Request(transition=Transition(label="configure")))
        future.add_done_callback(lambda _f: answered.set())
        wait_for_line(log, during, timeout=120)
        # the configure runs: the lifecycle and parameter services still answer
        t0 = time.monotonic()
        assert client.state(timeout=5) == "configuring"
        assert client.get_parameters("max_seq_len", timeout=5) == [256]
        (refused,) = client.set_parameters(max_seq_len=512, timeout=5)
        assert not refused.successful and "configuring" in refused.reason
        assert client.set_parameters(max_new_tokens=9, timeout=5)[0].successful
        assert time.monotonic() - t0 < 5
        assert not client.transition("configure", timeout=5)   # one transition at a time
        assert proc.poll() is None and not answered.is_set()
        sent = time.monotonic()
        proc.send_signal(signum)
        try:
            status = proc.wait(timeout=30)
        finally:
            took = time.monotonic() - sent
        assert status == 0, log.read_text()
        assert took < EXIT_WITHIN_S, f"exit took {took:.2f} s after {signum.name}:\n" \
                                     f"{log.read_text()}"
    text = log.read_text()
    assert "engine written" not in text, "the export finished before the signal: no test"
    assert answered.is_set() and not future.result().success, \
        f"the configure caller was not answered before the exit:\n{text}"
    # the interrupted export left nothing: no engine folder, staging folder or lock file
    engines = cache / "engines"
    left = [p.name for p in engines.iterdir()] if engines.exists() else []
    assert left == [], f"left in the cache: {left}\n{text}"
