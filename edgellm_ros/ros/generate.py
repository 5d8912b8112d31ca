"""The ~/generate action (edgellm_ros/action/Generate): /ask, cancellable, with feedback.

- goal: checked and queued at once, as /ask does (the node's ``admit``); what
  cannot be queued (node not active, queue full, invalid field, unknown
  adapter, no image) is REJECTED at goal time. rclpy's goal callback can only
  accept or reject, and the goal response carries no reason, so the reason is
  logged and published on ~/goal_rejections (msg/GoalRejection) with the
  goal's id, which :class:`GoalIdActionServer` makes known to the callback.
- feedback: every streamed piece (request_id, index, text, tokens so far),
  the same pieces as the request's Token messages on ~/tokens.
- cancel: accepted while the goal runs or waits; the generation stops at its
  next token (one decode step, one EAGLE round) and the goal ends CANCELED
  with the partial text, finish_reason "cancelled" and error_code CANCELLED.
- result: the Ask response's fields; SUCCEEDED when success is true, else
  ABORTED with the error code and message (context full, backend error, node
  cleaned up or shut down).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from ..action import Generate
from .ask import error_code_name, error_message, fill_error, fill_result
from .stream import TokenStream

GENERATE_ACTION = "~/generate"    # /edgellm/generate


class GoalIdActionServer(ActionServer):
    """An ActionServer whose goal callback can learn the goal's id.

    rclpy calls the goal callback with the goal message only; the id travels
    in the SendGoal request around it. ``execute`` (the Waitable API) sees
    that request first and files the id under the goal message's identity.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.goal_ids: Dict[int, bytes] = {}
        super().__init__(*args, **kwargs)

    async def execute(self, taken_data: Any) -> None:
        try:
            _header, request = taken_data["goal"]
            self.goal_ids[id(request.goal)] = bytes(request.goal_id.uuid)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        await super().execute(taken_data)


class GenerateServer:
    """Serves ~/generate for a node.

    ``admit(goal)`` checks and queues one request and returns its
    :class:`TokenStream` (raising EdgeLLMError when it cannot be queued);
    ``cancel(job)`` stops a queued or running job; ``rejected(goal_id, exc)``
    reports a rejection; ``finished()`` is called once per goal answered.
    """

    def __init__(self, node: Any, admit: Callable[[Any], TokenStream],
                 cancel: Callable[[Any], None], rejected: Callable[[bytes, BaseException], None],
                 finished: Callable[[], None], cancelled_because: Callable[[], str]):
        self._admit = admit
        self._cancel = cancel
        self._rejected = rejected
        self._finished = finished
        self._cancelled_because = cancelled_because
        # goal message identity -> its stream, from acceptance until the goal is answered
        self._streams: Dict[int, TokenStream] = {}
        self.server = GoalIdActionServer(
            node, Generate, GENERATE_ACTION, execute_callback=self._execute,
            goal_callback=self._on_goal, cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup())

    def destroy(self) -> None:
        self.server.destroy()

    def _on_goal(self, goal: Generate.Goal) -> GoalResponse:
        goal_id = self.server.goal_ids.pop(id(goal), b"")
        try:
            self._streams[id(goal)] = self._admit(goal)
        except Exception as exc:
            self._rejected(goal_id, exc)
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle: Any) -> CancelResponse:
        stream = self._streams.get(id(goal_handle.request))
        if stream is None:      # already answered
            return CancelResponse.REJECT
        self._cancel(stream.job)
        return CancelResponse.ACCEPT

    async def _execute(self, goal_handle: Any) -> Generate.Result:
        result = Generate.Result()
        stream: Optional[TokenStream] = self._streams.get(id(goal_handle.request))
        try:
            if stream is None:  # cannot happen: every accepted goal was admitted
                raise RuntimeError("accepted goal without a queued request")
            result.request_id = stream.request_id

            def feedback(index: int, text: str, generated: int) -> None:
                goal_handle.publish_feedback(Generate.Feedback(
                    request_id=stream.request_id, index=index, text=text,
                    generated_tokens=generated))
            stream.attach_feedback(feedback)
            outcome, error = await stream.done
            if error is not None:
                fill_error(result, error)
            else:
                fill_result(result, outcome, "cancelled by the client"
                            if goal_handle.is_cancel_requested else self._cancelled_because())
        except Exception as exc:
            fill_error(result, exc)
        finally:
            self._streams.pop(id(goal_handle.request), None)
            self._finished()
        if result.success:
            goal_handle.succeed()
        elif goal_handle.is_cancel_requested and result.finish_reason == "cancelled":
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result


def rejection_text(exc: BaseException) -> str:
    """``CODE: message`` of a rejected goal, as logged."""
    return f"{error_code_name(exc)}: {error_message(exc)}"
