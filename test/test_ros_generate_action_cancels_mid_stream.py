"""~/generate on the real default model: feedback, cancel mid-stream, the next goal."""

import threading
import time

from action_msgs.msg import GoalStatus

from edgellm_ros.action import Generate

NODE_PARAMETERS = {"max_seq_len": 512, "max_new_tokens": 24}
STORY = "Tell me a long story about a robot."


def streamed(run, result, timeout=5.0):
    """The goal's feedback texts, once they add up to the result (feedback may trail it)."""
    deadline = time.monotonic() + timeout
    while "".join(f.text for f in run.feedback) != result.text and time.monotonic() < deadline:
        time.sleep(0.02)
    return [f.text for f in run.feedback]


def test_a_goal_streams_feedback_and_answers_like_ask(active):
    run = active.generate_async("Name three colors.", max_new_tokens=16, top_k=1)
    res = run.result()
    assert run.status == GoalStatus.STATUS_SUCCEEDED
    assert res.success and res.error_code == Generate.Result.OK and res.message == ""
    assert res.finish_reason in ("stop", "length") and res.generated_tokens > 0
    assert "".join(streamed(run, res)) == res.text
    assert [f.index for f in run.feedback] == list(range(len(run.feedback)))
    assert all(f.request_id == res.request_id for f in run.feedback)
    assert run.feedback[-1].generated_tokens <= res.generated_tokens
    tokens = active.tokens(res.request_id)       # the Token topic carries goals too
    assert "".join(t.text for t in tokens) == res.text and tokens[-1].done
    same = active.ask("Name three colors.", max_new_tokens=16, top_k=1)
    assert same.success and same.text == res.text


def test_cancel_stops_mid_stream_with_the_streamed_text_and_the_next_goal_runs(active):
    pieces = threading.Semaphore(0)
    run = active.generate_async(STORY, max_new_tokens=300, on_feedback=lambda f: pieces.release())
    assert run.accepted()
    for _ in range(8):
        assert pieces.acquire(timeout=60), "no feedback"
    seen = len(run.feedback)
    t0 = time.monotonic()
    cancel = run.cancel()
    assert len(cancel.goals_canceling) == 1
    res = run.result(timeout=30)
    took = time.monotonic() - t0
    assert run.status == GoalStatus.STATUS_CANCELED
    assert not res.success and res.error_code == Generate.Result.CANCELLED
    assert res.finish_reason == "cancelled" and "cancelled by the client" in res.message
    assert seen <= res.generated_tokens < 300 and took < 5.0
    # the partial text is exactly what was streamed, as feedback and as Token messages
    assert res.text and "".join(streamed(run, res)) == res.text
    tokens = active.tokens(res.request_id)
    assert "".join(t.text for t in tokens) == res.text
    assert tokens[-1].done and tokens[-1].finish_reason == "cancelled"
    # the node serves the next goal at once
    t0 = time.monotonic()
    nxt = active.generate("Say hi.", max_new_tokens=4)
    assert nxt.success, nxt.message
    assert nxt.request_id == res.request_id + 1 and time.monotonic() - t0 < 30


def test_cancelling_a_waiting_goal_answers_it_at_once(active):
    first_piece = threading.Event()
    running = active.generate_async(STORY, max_new_tokens=120,
                                    on_feedback=lambda f: first_piece.set())
    assert first_piece.wait(60)
    waiting = active.generate_async("Say hi.", max_new_tokens=4)
    assert waiting.accepted()
    waiting.cancel()
    res = waiting.result(timeout=10)
    assert waiting.status == GoalStatus.STATUS_CANCELED and res.finish_reason == "cancelled"
    assert res.text == "" and res.generated_tokens == 0
    assert not running.result().success or running.status == GoalStatus.STATUS_SUCCEEDED
    assert running.status == GoalStatus.STATUS_SUCCEEDED
