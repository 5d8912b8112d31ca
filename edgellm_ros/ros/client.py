"""A small client of the edgellm node.

It drives lifecycle transitions, /ask, ~/generate, the token stream and ~/status.

Used by the demo and the tests, and an example for your own rclpy code. The
blocking methods wait on futures that the client node's executor completes,
so that executor must spin on another thread (see ``demo.py``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any, Callable, DefaultDict, Dict, List, Optional

from action_msgs.msg import GoalStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.action import ActionClient
from rclpy.client import Client
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from unique_identifier_msgs.msg import UUID

from ..action import Generate
from ..msg import GoalRejection, Status, Token
from ..srv import Ask
from .node import (ASK_QOS, ASK_SERVICE, NODE_NAME, REJECTIONS_QOS, STATUS_QOS, TOKENS_QOS)


class GoalRun:
    """One goal sent to ~/generate: its feedback, cancel and result.

    ``feedback`` collects the Generate.Feedback messages as they arrive.
    """

    def __init__(self, client: "EdgeLLMClient", goal_id: bytes, sent: Any,
                 on_feedback: Optional[Callable[[Any], None]]):
        self.client = client
        self.goal_id = goal_id
        self.feedback: List[Any] = []
        self.on_feedback = on_feedback
        self._sent = sent
        self._handle: Any = None
        self._result: Any = None

    def _on_feedback(self, msg: Any) -> None:
        self.feedback.append(msg.feedback)
        if self.on_feedback is not None:
            self.on_feedback(msg.feedback)

    def accepted(self, timeout: float = 30.0) -> bool:
        """Wait for the goal response: True accepted, False rejected (see :meth:`result`)."""
        if self._handle is None:
            self._handle = self.client._wait(self._sent, timeout, "send_goal")
        return bool(self._handle.accepted)

    def cancel(self, timeout: float = 30.0) -> Any:
        """Request cancellation; returns the CancelGoal response."""
        if not self.accepted(timeout):
            raise RuntimeError("the goal was rejected; there is nothing to cancel")
        return self.client._wait(self._handle.cancel_goal_async(), timeout, "cancel_goal")

    def result(self, timeout: float = 300.0) -> Generate.Result:
        """The goal's result.

        A rejected goal gets one too, built from its GoalRejection (success false,
        its error code and message).
        """
        if self._result is not None:
            return self._result
        if not self.accepted(timeout):
            rej = self.client.rejection(self.goal_id)
            res = Generate.Result(success=False)
            if rej is None:
                res.error_code = Generate.Result.INTERNAL
                res.message = "goal rejected; no reason received on ~/goal_rejections"
            else:
                res.error_code, res.message = rej.error_code, rej.message
            self._result, self.status = res, GoalStatus.STATUS_UNKNOWN
            return res
        got = self.client._wait(self._handle.get_result_async(), timeout, "get_result")
        self._result, self.status = got.result, got.status
        return self._result

    #: action_msgs/GoalStatus constant once the result is in (SUCCEEDED, CANCELED, ABORTED).
    status: int = GoalStatus.STATUS_UNKNOWN


class EdgeLLMClient:
    """Client side of one edgellm node; names resolve in ``node``'s namespace."""

    def __init__(self, node: Node, target: str = NODE_NAME, ask_service: str = ASK_SERVICE,
                 on_token: Optional[Callable[[Token], None]] = None):
        self.node = node
        self.on_token = on_token
        self._change_state: Client = node.create_client(ChangeState, f"{target}/change_state")
        self._get_state: Client = node.create_client(GetState, f"{target}/get_state")
        # deep enough for a burst of responses (QUEUE_FULL answers come at once)
        self._ask: Client = node.create_client(Ask, ask_service, qos_profile=ASK_QOS)
        self._params = AsyncParameterClient(node, target)
        self._tokens = node.create_subscription(Token, f"{target}/tokens", self._on_token_msg,
                                                TOKENS_QOS)
        self._generate: ActionClient = ActionClient(node, Generate, f"{target}/generate")
        self._rejections_sub = node.create_subscription(
            GoalRejection, f"{target}/goal_rejections", self._on_rejection, REJECTIONS_QOS)
        self._status_sub = node.create_subscription(Status, f"{target}/status",
                                                    self._on_status, STATUS_QOS)
        self._cond = threading.Condition()
        self._streams: DefaultDict[int, List[Token]] = defaultdict(list)
        self._rejections: Dict[bytes, GoalRejection] = {}
        self._status: Optional[Status] = None

    # -- plumbing ------------------------------------------------------------
    def wait_for_node(self, timeout: float = 30.0) -> None:
        """Wait until the lifecycle services and /ask are discovered."""
        deadline = time.monotonic() + timeout
        for client in (self._change_state, self._get_state, self._ask):
            if not client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"service {client.srv_name} not available after {timeout} s")
        if not self._params.wait_for_services(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"parameter services not available after {timeout} s")
        if not self._generate.wait_for_server(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"action server {self._generate._action_name} not available "
                               f"after {timeout} s")

    def wait_for_token_publisher(self, timeout: float = 30.0) -> None:
        """Wait until the node's token publisher (made at configure) is matched."""
        deadline = time.monotonic() + timeout
        while self._tokens.get_publisher_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no publisher on {self._tokens.topic_name} after {timeout} s")
            time.sleep(0.02)

    @staticmethod
    def _wait(future: Any, timeout: float, what: str) -> Any:
        event = threading.Event()
        future.add_done_callback(lambda _f: event.set())
        if not event.wait(timeout):
            future.cancel()
            raise TimeoutError(f"{what}: no answer after {timeout} s")
        return future.result()

    # -- lifecycle -----------------------------------------------------------
    def transition(self, label: str, timeout: float = 300.0) -> bool:
        """Request a transition by label (configure, activate, deactivate, cleanup, shutdown)."""
        req = ChangeState.Request(transition=Transition(label=label))
        return bool(self._wait(self._change_state.call_async(req), timeout, label).success)

    def state(self, timeout: float = 10.0) -> str:
        """The node's lifecycle state label (unconfigured, inactive, active, finalized)."""
        res = self._wait(self._get_state.call_async(GetState.Request()), timeout, "get_state")
        return res.current_state.label

    # -- parameters (through the node's parameter services) -----------------
    def set_parameters(self, timeout: float = 10.0, **values: Any) -> List[Any]:
        """Set parameters one by one (dots as ``__``: sampling__top_k=40).

        Returns the rcl_interfaces SetParametersResult of each (successful, reason).
        """
        params = [Parameter(k.replace("__", "."), value=v) for k, v in values.items()]
        res = self._wait(self._params.set_parameters(params), timeout, "set_parameters")
        return list(res.results)

    def get_parameters(self, *names: str, timeout: float = 10.0) -> List[Any]:
        """Current values of the named parameters."""
        res = self._wait(self._params.get_parameters(list(names)), timeout, "get_parameters")
        return [parameter_value_to_python(v) for v in res.values]

    def describe_parameters(self, *names: str, timeout: float = 10.0) -> List[Any]:
        """The ParameterDescriptor of each named parameter."""
        res = self._wait(self._params.describe_parameters(list(names)), timeout,
                         "describe_parameters")
        return list(res.descriptors)

    # -- /ask ----------------------------------------------------------------
    @staticmethod
    def request(prompt: str, **fields: Any) -> Ask.Request:
        """An Ask request; unset fields keep their zero value (= node default)."""
        return Ask.Request(prompt=prompt, **fields)

    def ask_async(self, prompt: str, **fields: Any) -> Any:
        """Send a request; returns the rclpy future of the response."""
        return self._ask.call_async(self.request(prompt, **fields))

    def ask(self, prompt: str, timeout: float = 300.0, **fields: Any) -> Ask.Response:
        """Send a request and wait for the response."""
        return self._wait(self.ask_async(prompt, **fields), timeout, "/ask")

    def result(self, future: Any, timeout: float = 300.0) -> Ask.Response:
        """Wait for the response of :meth:`ask_async`."""
        return self._wait(future, timeout, "/ask")

    # -- ~/generate ------------------------------------------------------------
    def generate_async(self, prompt: str, on_feedback: Optional[Callable[[Any], None]] = None,
                       **fields: Any) -> GoalRun:
        """Send a goal (fields as for :meth:`ask`); returns its :class:`GoalRun`."""
        goal_id = uuid.uuid4().bytes
        run: GoalRun

        def feedback(msg: Any) -> None:
            run._on_feedback(msg)
        sent = self._generate.send_goal_async(Generate.Goal(prompt=prompt, **fields),
                                              feedback_callback=feedback,
                                              goal_uuid=UUID(uuid=list(goal_id)))
        run = GoalRun(self, goal_id, sent, on_feedback)
        return run

    def generate(self, prompt: str, timeout: float = 300.0, **fields: Any) -> Generate.Result:
        """Send a goal and wait for its result (a rejected goal's result says why)."""
        return self.generate_async(prompt, **fields).result(timeout)

    def _on_rejection(self, msg: GoalRejection) -> None:
        with self._cond:
            self._rejections[bytes(msg.goal_id.uuid)] = msg
            self._cond.notify_all()

    def rejection(self, goal_id: bytes, timeout: float = 5.0) -> Optional[GoalRejection]:
        """The GoalRejection of a rejected goal (None if none came within ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: goal_id in self._rejections, timeout)
            return self._rejections.pop(goal_id, None)

    # -- ~/status --------------------------------------------------------------
    def _on_status(self, msg: Status) -> None:
        with self._cond:
            self._status = msg
            self._cond.notify_all()

    def status(self, timeout: float = 10.0,
               until: Optional[Callable[[Status], bool]] = None) -> Status:
        """The node's latest Status (the first one for which ``until`` holds, if given)."""
        ok = until or (lambda _s: True)
        with self._cond:
            if not self._cond.wait_for(lambda: self._status is not None and ok(self._status),
                                       timeout):
                raise TimeoutError(f"no matching ~/status message within {timeout} s "
                                   f"(last: {self._status})")
            return self._status

    # -- tokens --------------------------------------------------------------
    def _on_token_msg(self, msg: Token) -> None:
        with self._cond:
            self._streams[msg.request_id].append(msg)
            self._cond.notify_all()
        if self.on_token is not None:
            self.on_token(msg)

    def tokens(self, request_id: int, timeout: float = 30.0) -> List[Token]:
        """The Token messages of a request, once its done message has arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(m.done for m in self._streams.get(request_id, ())):
                left = deadline - time.monotonic()
                if left <= 0:
                    got = len(self._streams.get(request_id, ()))
                    raise TimeoutError(
                        f"request {request_id}: no done token after {timeout} s ({got} received)")
                self._cond.wait(left)
            return list(self._streams.pop(request_id))
