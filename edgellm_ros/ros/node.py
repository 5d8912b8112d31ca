"""The ``edgellm`` lifecycle node: /ask and ~/generate answer, ~/tokens streams.

Lifecycle (ros2/demos lifecycle_py style: create in configure, destroy in
cleanup; the heavy work happens in configure only):

- configure: validate the parameters, export (when missing or stale) and load
  the engine, allocate the KV cache, create the token publisher and the
  worker thread. Any failure is logged and returns FAILURE: the node stays
  unconfigured and can be configured again.
- activate: /ask and ~/generate start taking requests.
- deactivate: they stop taking requests; requests still waiting in the queue
  are answered NOT_ACTIVE; the running generation completes and is answered
  normally (its tokens keep streaming).
- cleanup / shutdown: waiting requests are answered NOT_ACTIVE, the running
  generation is cancelled (answered CANCELLED with its partial text), the
  worker thread ends and the engine (sessions, KV cache, prompt cache) is freed.

Every call and goal is answered before the node's context goes away:
``edgellm_node`` handles SIGINT and SIGTERM itself (rclpy's own handlers would
shut the context down first, leaving callers waiting forever) and runs
:meth:`EdgeLLMNode.close`, which answers everything, then shuts down.

~/status (msg/Status, latched) and /diagnostics (diagnostic_msgs) report the
state and metrics once a second in every state, and ~/status also at every
change.

Threading: /ask is an async callback in a reentrant callback group, as are
the action's callbacks. They validate the request, hand it to the worker (a
bounded queue, one generation at a time) and await a future the worker
completes, so any number of queued requests hold no executor thread.
The lifecycle services have a reentrant group of their own and the parameter
services keep the node's default group, so ``get_state`` and the parameter
services answer while a configure (an export, minutes on a robot) runs; a
second transition requested meanwhile is refused by the state machine.
Runtime parameters changed during a configure apply once it ends.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from dataclasses import fields
from typing import Any, Callable, Dict, List, Optional, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import (LifecycleNode, LifecycleNodeMixin, LifecycleState,
                             TransitionCallbackReturn)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from diagnostic_msgs.msg import DiagnosticArray

from ..errors import EdgeLLMError, InvalidRequest
from ..runtime.config import EagleConfig, EagleLimits
from ..runtime.generation import GenerationResult
from ..msg import GoalRejection, Status, Token
from ..srv import Ask
from .ask import (ImageUnavailable, NotActive, check_limits, error_code_name, error_message,
                  fill_error, fill_result, generation_request)
from .callers import CHECK_PERIOD_S, CallerWatch, ask_watch, goal_watch
from .camera import LatestFrame
from .delivery import deliver_retrying
from .generate import GENERATE_ACTION, GenerateServer, rejection_text
from .loading import Interrupted, run_unless
from .memory import fix_mmap_threshold, trim_heap
from .params import (CONFIGURE_TIME, MAX_QUEUE_SIZE, PARAMETERS, SPECS, ParamSpec,
                     RequestDefaults, settings_from_parameters)
from .process import run_node
from .status import Counters, diagnostic_status, fill_status
from .stream import TokenStream
from .worker import GenerationWorker, Job

NODE_NAME = "edgellm"
STATUS_TOPIC = "~/status"     # /edgellm/status: msg/Status, latched
DIAGNOSTICS_TOPIC = "/diagnostics"
REJECTIONS_TOPIC = "~/goal_rejections"   # msg/GoalRejection
#: Recent rejections stay readable by a client that subscribes just after.
REJECTIONS_QOS = QoSProfile(depth=32, reliability=ReliabilityPolicy.RELIABLE,
                            history=HistoryPolicy.KEEP_LAST,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
STATUS_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
ASK_SERVICE = "ask"           # /ask in the root namespace
TOKENS_TOPIC = "~/tokens"     # /edgellm/tokens
#: Reliable, deep enough for a whole answer to be buffered for a slow reader.
TOKENS_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST)
#: Requests are taken from DDS one at a time: a burst beyond the default
#: history depth (10) would be dropped before the node sees it, so the
#: service keeps as many as the largest queue (plus the running one) and some.
ASK_QOS = QoSProfile(depth=2 * MAX_QUEUE_SIZE, reliability=ReliabilityPolicy.RELIABLE,
                     history=HistoryPolicy.KEEP_LAST)
#: How long cleanup waits for a cancelled generation to return.
STOP_TIMEOUT_S = 60.0
#: Seconds between ~/status and /diagnostics messages.
REPORT_PERIOD_S = 1.0
#: Seconds after start, while still unconfigured, before the node says how to start it.
HINT_DELAY_S = 3.0
#: How long close() waits for every call and goal to be answered.
CLOSE_TIMEOUT_S = 10.0


#: EAGLE tree parameters -> the EagleLimits field (a configure-time parameter) bounding them.
LIMITED_BY = {f"eagle.{f.name}": f.metadata["limit"] for f in fields(EagleConfig)
              if "limit" in f.metadata}


#: rcl_interfaces ParameterType -> the word a reason uses (rclpy's own says "expected '4' got '2'").
TYPE_NAMES = {
    ParameterType.PARAMETER_NOT_SET: "no value", ParameterType.PARAMETER_BOOL: "bool",
    ParameterType.PARAMETER_INTEGER: "integer", ParameterType.PARAMETER_DOUBLE: "double",
    ParameterType.PARAMETER_STRING: "string", ParameterType.PARAMETER_BYTE_ARRAY: "byte array",
    ParameterType.PARAMETER_BOOL_ARRAY: "bool array",
    ParameterType.PARAMETER_INTEGER_ARRAY: "integer array",
    ParameterType.PARAMETER_DOUBLE_ARRAY: "double array",
    ParameterType.PARAMETER_STRING_ARRAY: "string array",
}


def wrong_type_reason(name: str, want: int, param: Parameter) -> str:
    """Why a value of the wrong ROS type is refused, naming both types."""
    got = param.type_.value
    hint = ""
    if want == ParameterType.PARAMETER_DOUBLE and got == ParameterType.PARAMETER_INTEGER:
        hint = f" (write {float(param.value)!r}, not {param.value!r})"
    return (f"Wrong parameter type: {name} must be {TYPE_NAMES.get(want, want)}, got "
            f"{TYPE_NAMES.get(got, got)} {param.value!r}{hint}")


def parameter_descriptor(spec: ParamSpec,
                         limits: Optional[EagleLimits] = None) -> ParameterDescriptor:
    """The ROS descriptor of one parameter of the table.

    The EAGLE tree parameters' ranges end at ``limits`` (the eagle.max_* values) when given.
    """
    d = ParameterDescriptor(name=spec.name, description=spec.description,
                            read_only=spec.read_only)
    constraints = [spec.constraints] if spec.constraints else []
    if spec.configure_time:
        # Not read_only: ROS would then refuse every change, even while
        # unconfigured, and a failed configure could not be retried with a
        # corrected value. The on-set callback refuses changes while configured.
        constraints.append("configure-time: can change only while unconfigured")
    d.additional_constraints = "; ".join(constraints)
    if spec.range is not None:
        lo, hi = spec.range
        if limits is not None and spec.name in LIMITED_BY:
            hi = getattr(limits, LIMITED_BY[spec.name])
        if isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(
                from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    return d


class EdgeLLMNode(LifecycleNode):
    """Lifecycle node owning one engine; see the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        fix_mmap_threshold()
        # What LifecycleNode.__init__ does, but with the lifecycle services in a group of
        # their own: in the node's default group (where the parameter services are) a
        # configure would keep get_state and the parameter services from answering.
        Node.__init__(self, node_name, **kwargs)
        LifecycleNodeMixin.__init__(self, callback_group=ReentrantCallbackGroup())
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
        self._limit_descriptors()
        # Guards _state, _worker and _defaults; /ask queues requests under it.
        self._lock = threading.Lock()
        self._state = "unconfigured"        # what /ask checks; mirrors the lifecycle
        self._engine: Any = None
        self._worker: Optional[GenerationWorker] = None
        self._tokens: Any = None
        self._camera: Optional[LatestFrame] = None
        self._image_age = 2.0
        self._counters = Counters()
        self._ids = itertools.count(1)
        # Calls and goals admitted but not answered yet; close() waits for none.
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._closing = ""                   # why the node is going away ("" = it is not)
        self._closed = threading.Event()     # set with _closing: a configure stops waiting
        self._configure_tried = False
        self._cancel_reason = "the node was cleaned up or shut down"
        #: Done when the node reaches the finalized state (main() then exits).
        self.finalized: Future = Future()
        try:
            self._defaults = settings_from_parameters(self._values()).defaults
        except EdgeLLMError as exc:  # configure will fail with the same reason
            self.get_logger().error(f"invalid parameters: {exc}")
            self._defaults = RequestDefaults()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        group = ReentrantCallbackGroup()
        self._ask = self.create_service(Ask, ASK_SERVICE, self._on_ask, qos_profile=ASK_QOS,
                                        callback_group=group)
        deliver_retrying(self._ask, self.get_logger().warning)   # a caller still being discovered
        # Running and waiting requests -> whether their caller is still there.
        self._callers: Dict[TokenStream, CallerWatch] = {}
        self._generate = GenerateServer(
            self, lambda goal: self._admit(goal, self._goal_watch), self._cancel_job,
            self._goal_rejected,
            finished=self._answered, cancelled_because=lambda: self._cancel_reason)
        # Reports in every state: a robot monitor sees an unconfigured node too.
        self._status = self.create_publisher(Status, STATUS_TOPIC, STATUS_QOS)
        self._diagnostics = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._rejections = self.create_publisher(GoalRejection, REJECTIONS_TOPIC,
                                                 REJECTIONS_QOS)
        self._report_timer = self.create_timer(REPORT_PERIOD_S, self._report,
                                               callback_group=group)
        self._hint_timer = self.create_timer(HINT_DELAY_S, self._hint_once)
        self._caller_timer = self.create_timer(CHECK_PERIOD_S, self._check_callers,
                                               callback_group=group)
        self._publish_status()

    @property
    def ask_service_name(self) -> str:
        """The resolved name of /ask (``/robot1/ask`` in namespace robot1)."""
        return self.resolve_service_name(ASK_SERVICE)

    @property
    def generate_action_name(self) -> str:
        """The resolved name of ~/generate (``/robot1/edgellm/generate``)."""
        return self.resolve_topic_name(GENERATE_ACTION)

    def _hint_once(self) -> None:
        """Say once, while still unconfigured after start, how to start the node."""
        self._hint_timer.cancel()
        with self._lock:
            state = self._state
        if state == "unconfigured" and not self._closing and not self._configure_tried:
            name = self.get_fully_qualified_name()
            self.get_logger().info(
                f"unconfigured: {self.ask_service_name} answers once the node is configured and "
                f"activated, e.g. `ros2 lifecycle set {name} configure` then "
                f"`ros2 lifecycle set {name} activate` (or start it with "
                "`ros2 launch edgellm_ros llm.launch.py`, which does both)")

    def _not_active_message(self) -> str:
        """NOT_ACTIVE's reason, saying what would make the node take requests (lock held)."""
        name = self.get_fully_qualified_name()
        if self._closing:
            return f"the node is {self._closing}; no request is taken"
        if self._state == "inactive":
            return (f"the node is inactive, not active: activate it "
                    f"(ros2 lifecycle set {name} activate) before asking")
        if self._state == "configuring":
            return "the node is configuring, not active: activate it once configure is done"
        return (f"the node is {self._state}, not active: configure and activate it "
                f"(ros2 lifecycle set {name} configure, then activate) before asking")

    # -- parameters ----------------------------------------------------------
    def _values(self) -> Dict[str, Any]:
        return {name: self.get_parameter(name).value for name in SPECS}

    def _wrong_type(self, params: List[Parameter]) -> Optional[SetParametersResult]:
        """A refusal naming both types when a value's type is not its parameter's, else None.

        rclpy checks the type before any callback and names the types by their enum
        numbers; so set_parameters and set_parameters_atomically (what the parameter
        services call) check first.
        """
        for p in params:
            if p.name in SPECS and p.type_ != Parameter.Type.NOT_SET:
                want = self.describe_parameter(p.name).type
                if p.type_.value != want:
                    return SetParametersResult(successful=False,
                                               reason=wrong_type_reason(p.name, want, p))
        return None

    def set_parameters(self, parameter_list: List[Parameter]) -> List[SetParametersResult]:
        """Set parameters as rclpy does, refusing a wrong type with both types named."""
        return [self._wrong_type([p]) or super(EdgeLLMNode, self).set_parameters([p])[0]
                for p in parameter_list]

    def set_parameters_atomically(self, parameter_list: List[Parameter]) -> SetParametersResult:
        """Set parameters atomically as rclpy does, refusing a wrong type with both types named."""
        return self._wrong_type(parameter_list) or super().set_parameters_atomically(
            parameter_list)

    def _check_parameters(self, params: List[Parameter]) -> SetParametersResult:
        """Refuse a change with the reason; nothing is applied here."""
        changes = {p.name: p.value for p in params if p.name in SPECS}
        if not changes:
            return SetParametersResult(successful=True)
        with self._lock:
            state = self._state
        if state != "unconfigured":
            frozen = sorted(n for n in changes if n in CONFIGURE_TIME
                            and changes[n] != self.get_parameter(n).value)
            if frozen:
                return SetParametersResult(successful=False, reason=(
                    f"{', '.join(frozen)}: configure-time parameter; the node is {state}, "
                    "so the change would not take effect. Deactivate and clean up the node, "
                    "set it, then configure again"))
        try:
            settings = settings_from_parameters({**self._values(), **changes})
            engine = self._engine
            # settings_from_parameters has checked lora and the EAGLE tree against the
            # configure-time values; what configure loaded decides the rest
            if engine is not None:
                if settings.eagle.enabled and engine.drafter is None:
                    return SetParametersResult(successful=False, reason=(
                        "eagle.enabled: no EAGLE draft is loaded. Set eagle.draft ('default' = "
                        "the shipped draft) while the node is unconfigured, then configure"))
        except EdgeLLMError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _limit_descriptors(self) -> None:
        """Make the EAGLE tree parameters' ranges state the eagle.max_* in force."""
        try:
            limits = settings_from_parameters(self._values()).engine.eagle_limits
        except EdgeLLMError:  # configure will say why
            return
        for name in LIMITED_BY:
            try:
                desc = parameter_descriptor(SPECS[name], limits)
                desc.type = self.describe_parameter(name).type
                self.set_descriptor(name, desc)
            except Exception as exc:  # a value beyond the limit: configure will refuse it
                self.get_logger().warning(f"{name}: descriptor range not narrowed: {exc}")

    def _apply_parameters(self, params: List[Parameter]) -> None:
        """Runtime parameters apply to the next request."""
        if any(p.name in ("eagle.max_top_k", "eagle.max_step", "eagle.max_tree")
               for p in params):
            self._limit_descriptors()
        if any(p.name in SPECS for p in params):
            try:
                settings = settings_from_parameters(self._values())
            except EdgeLLMError as exc:  # _check_parameters lets no such change through
                self.get_logger().error(f"parameters not applied: {exc}")
                return
            with self._lock:
                self._defaults = settings.defaults
                self._image_age = settings.max_image_age
            engine = self._engine
            if engine is not None:  # the next request uses them
                engine.set_adapter(settings.lora)
                engine.set_eagle(settings.eagle)
                self._publish_status()

    # -- lifecycle -----------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the engine. SUCCESS -> inactive; FAILURE -> unconfigured (retry possible)."""
        log = self.get_logger()
        self._configure_tried = True      # a lifecycle manager is at work: no start hint
        with self._lock:
            self._state = "configuring"
        try:
            settings = settings_from_parameters(self._values())
            rc = settings.engine.remote
            log.info(f"configuring: backend remote, server {rc.url}, model {rc.model or '(its only one)'}"
                     if settings.engine.backend == "remote" else
                     f"configuring: model={settings.engine.model or '(embedded default)'} "
                     f"backend={settings.engine.backend} "
                     f"max_seq_len={settings.engine.max_seq_len}")
            from ..runtime.engine import open_engine  # heavy imports only when configuring
            # in a thread of its own, so that a signal answers this transition's caller at once
            engine = run_unless(lambda: open_engine(settings.engine, log=log.info), self._closed,
                                discard=lambda late: late.close())
            try:
                engine.set_eagle(settings.eagle)
            except EdgeLLMError:
                engine.close()
                raise
        except Interrupted:
            log.warning(f"configure given up: the node is {self._closing} "
                        "(an export in progress is cut off with the process and leaves nothing)")
            with self._lock:
                self._state = "unconfigured"
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:
            log.error(f"configure failed ({type(exc).__name__}): {exc}")
            with self._lock:
                self._state = "unconfigured"
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            closing = self._closing
            if not closing:
                self._engine = engine
        if closing:     # a signal came while configuring: the process is leaving
            engine.close()
            log.warning(f"configure finished while the node is {closing}; engine closed")
            return TransitionCallbackReturn.FAILURE
        # runtime parameters may have changed while configuring: the values now apply
        settings = settings_from_parameters(self._values())
        engine.set_adapter(settings.lora)
        engine.set_eagle(settings.eagle)
        self._counters.reset()
        self._tokens = self.create_publisher(Token, TOKENS_TOPIC, TOKENS_QOS)
        self._camera = LatestFrame(self, compressed=settings.image_compressed)
        worker = GenerationWorker(engine, lambda: self._defaults.queue_size,
                                  log=log.error, name=f"{self.get_name()}-worker")
        with self._lock:
            self._worker = worker
            self._defaults = settings.defaults
            self._image_age = settings.max_image_age
            self._state = "inactive"
        self._publish_status()
        log.info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start taking requests. SUCCESS -> active."""
        with self._lock:
            self._state = "active"
        self._publish_status()
        self.get_logger().info(f"active: {self.ask_service_name} and "
                               f"{self.generate_action_name} take requests")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking requests; the running one completes. SUCCESS -> inactive."""
        with self._lock:
            self._state = "inactive"
            worker = self._worker
        dropped = worker.drop_waiting(NotActive(
            "the node was deactivated before this request started")) if worker else 0
        self._publish_status()
        self.get_logger().info(
            f"inactive: {self.ask_service_name} and {self.generate_action_name} refuse "
            f"requests; {dropped} waiting request(s) answered NOT_ACTIVE, a running "
            "generation completes")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the engine and everything configure made. SUCCESS -> unconfigured."""
        self._release("cleaned up")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything. SUCCESS -> finalized (edgellm_node then exits)."""
        self._release("shut down")
        self.finalized.set_result(True)
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything after an error. SUCCESS -> unconfigured."""
        self._release("reset after an error")
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._release("destroyed")
        self._generate.destroy()
        super().destroy_node()

    def close(self, why: str = "shutting down", timeout: Optional[float] = None) -> bool:
        """Answer every pending call and goal, then free the engine.

        Call it before the context goes away (edgellm_node does on SIGINT, SIGTERM and
        after shutdown).

        New requests get NOT_ACTIVE ("the node is <why>"), waiting ones too, the running
        generation stops at its next token and is answered CANCELLED with its partial
        text. Returns once every answer has been handed to the executor (which must
        still spin), False if that took longer than ``timeout`` seconds (default
        CLOSE_TIMEOUT_S).
        """
        timeout = CLOSE_TIMEOUT_S if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing = why
        self._closed.set()
        # the worker gets part of the time, so that an abandoned call is still answered in it
        self._release(why, stop_timeout=0.6 * timeout)
        with self._inflight_cond:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.get_logger().error(
                        f"{why}: {self._inflight} call(s) or goal(s) still unanswered after "
                        f"{timeout:.0f} s")
                    return False
                self._inflight_cond.wait(left)
        # The executor sends a response right after its callback returns.
        time.sleep(0.2)
        return True

    def _release(self, why: str, stop_timeout: float = STOP_TIMEOUT_S) -> None:
        with self._lock:
            self._state = "unconfigured"
            self._cancel_reason = f"the node was {why}" if not self._closing \
                else f"the node is {why}"
            worker, self._worker = self._worker, None
        engine, self._engine = self._engine, None
        if worker is not None and not worker.stop(
                NotActive(f"the node was {why} before this request started"),
                timeout=stop_timeout):
            # Closing the engine under a running generation could crash the
            # process: keep it (and say so) rather than free it.
            self.get_logger().error(
                f"the generation did not stop within {stop_timeout:.1f} s; "
                "its engine is left to the garbage collector")
            engine = None
        if self._tokens is not None:
            self.destroy_publisher(self._tokens)
            self._tokens = None
        if self._camera is not None:
            self._camera.destroy()
            self._camera = None
        self._publish_status()
        if engine is not None:
            engine.close()
            del engine
            gc.collect()
            trim_heap()
            self.get_logger().info(f"{why}: engine freed")

    # -- requests: /ask and ~/generate --------------------------------------
    def _admit(self, request: Any, watch: Callable[[], CallerWatch]) -> TokenStream:
        """Check and queue one request (an Ask request or a Generate goal).

        ``watch()`` makes the CallerWatch that stops it if its caller goes away.
        Raises EdgeLLMError when it cannot be queued: nothing was queued then.
        Checked and queued under the lock deactivate/cleanup take: no request
        slips into the queue after the node left the active state.
        """
        executor = self.executor
        with self._lock:
            if self._state != "active" or self._worker is None or self._closing:
                raise NotActive(self._not_active_message())
            check_limits(request, self._defaults.limits)
            engine = self._engine
            if request.lora:
                engine.adapters.check(request.lora)
            images = self._images_for(request) if request.use_image else ()
            job_request = generation_request(request, self._defaults, images)
            stream = TokenStream(next(self._ids), self._publish, Future(executor=executor),
                                 executor, self._record, self.get_logger().warning)
            stream.job = Job(stream.request_id, job_request, stream.on_token, stream.on_done)
            with self._inflight_cond:
                self._inflight += 1
            try:
                self._worker.submit(stream.job)
            except BaseException:
                self._answered()
                raise
        try:
            self._callers[stream] = watch()
        except Exception as exc:  # the graph could not be read: the request runs unwatched
            self.get_logger().warning(f"request {stream.request_id}: caller not watched: {exc!r}")
        return stream

    def _token_subscribers(self) -> int:
        pub = self._tokens
        return pub.get_subscription_count() if pub is not None else 0

    def _ask_watch(self) -> CallerWatch:
        return ask_watch(self, self.ask_service_name, self._token_subscribers)

    def _goal_watch(self) -> CallerWatch:
        return goal_watch(self, self.generate_action_name, self._token_subscribers)

    def _check_callers(self) -> None:
        """Stop each request whose caller has left the graph (callers.py says how it is seen)."""
        for stream, watch in list(self._callers.items()):
            if stream.done.done():
                self._callers.pop(stream, None)
                continue
            try:
                gone = watch.gone()
            except Exception:  # context going away: the node is closing anyway
                continue
            if gone:
                self._callers.pop(stream, None)
                self.get_logger().warning(
                    f"request {stream.request_id}: its caller has left (no client of it and no "
                    f"{TOKENS_TOPIC} subscriber in the graph); stopping its generation")
                self._cancel_job(stream.job)

    def _answered(self) -> None:
        """One admitted call or goal has its answer."""
        with self._inflight_cond:
            self._inflight -= 1
            self._inflight_cond.notify_all()

    def _cancel_job(self, job: Job) -> None:
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.cancel(job)
        else:
            job.cancel.set()

    def _record(self, outcome: Tuple[Optional[GenerationResult], Optional[BaseException]]) -> None:
        """Count one finished request (worker thread) and report it."""
        self._counters.record(*outcome)
        self._publish_status()

    def _goal_rejected(self, goal_id: bytes, exc: BaseException) -> None:
        """Log and publish why a goal of ~/generate was rejected."""
        self._counters.refused()
        if not isinstance(exc, EdgeLLMError):
            self.get_logger().error(f"goal check failed: {exc!r}")
        hex_id = goal_id.hex() if goal_id else "(unknown id)"
        self.get_logger().warning(f"goal {hex_id} rejected: {rejection_text(exc)}")
        msg = GoalRejection(error_code=getattr(Ask.Response, error_code_name(exc)),
                            message=error_message(exc))
        msg.header.stamp = self.get_clock().now().to_msg()
        if len(goal_id) == 16:
            msg.goal_id.uuid = list(goal_id)
        self._safe_publish(self._rejections, msg)

    async def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        """Answer one request; nothing raised here reaches the executor."""
        try:
            stream = self._admit(request, self._ask_watch)
        except Exception as exc:
            self._counters.refused()
            if not isinstance(exc, EdgeLLMError):
                self.get_logger().error(f"{self.ask_service_name} failed: {exc!r}")
            return fill_error(response, exc)
        try:
            response.request_id = stream.request_id
            result, error = await stream.done
            if error is not None:
                if not isinstance(error, EdgeLLMError):
                    self.get_logger().error(
                        f"request {stream.request_id} failed: {error_message(error)}")
                return fill_error(response, error)
            return fill_result(response, result, self._cancel_reason)
        except Exception as exc:
            self.get_logger().error(f"{self.ask_service_name} failed: {exc!r}")
            return fill_error(response, exc)
        finally:
            self._answered()

    def _images_for(self, request: Any) -> Tuple[Any, ...]:
        """The request's images, as RGB uint8 arrays.

        The inline image (else the latest camera frame if young enough), then the
        request's further inline images.
        """
        from ..runtime.vision import image_from_raw
        if self._engine.vision is None:
            raise ImageUnavailable("use_image is set, but this node's model has no vision "
                                   "encoder (text-only); configure a vision model")
        try:
            if len(request.image.data):
                first = request.image
                out = [image_from_raw(first.width, first.height, first.encoding, first.step,
                                      first.data, bool(first.is_bigendian))]
            elif self._camera is None:
                raise ImageUnavailable("no camera subscription (node not configured)")
            else:
                out = [self._camera.image(self.get_clock().now(), self._image_age)]
            for i, img in enumerate(request.images):
                try:
                    out.append(image_from_raw(img.width, img.height, img.encoding, img.step,
                                              img.data, bool(img.is_bigendian)))
                except InvalidRequest as exc:
                    raise InvalidRequest(f"images[{i}]: {exc}") from exc
            return tuple(out)
        except InvalidRequest as exc:  # unknown encoding, bad step... from the converter
            raise ImageUnavailable(str(exc)) from exc

    # -- reports ---------------------------------------------------------------
    def status(self) -> Status:
        """The node's Status now (what ~/status publishes)."""
        with self._lock:
            state, worker, engine = self._state, self._worker, self._engine
            queue_size = self._defaults.queue_size
        msg = fill_status(Status(), state, engine, worker.pending if worker else 0,
                          queue_size, self._counters)
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def _publish_status(self) -> Optional[Status]:
        """Latched msg/Status on ~/status."""
        try:
            msg = self.status()
        except Exception:   # engine freed under us: the next report will do
            return None
        self._safe_publish(self._status, msg)
        return msg

    def _report(self) -> None:
        """Once a second: ~/status and /diagnostics."""
        msg = self._publish_status()
        if msg is None:
            return
        array = DiagnosticArray(status=[diagnostic_status(msg, self.get_fully_qualified_name())])
        array.header.stamp = msg.header.stamp
        self._safe_publish(self._diagnostics, array)

    def _safe_publish(self, pub: Any, msg: Any) -> None:
        """Publish unless the context is already gone (nothing can be sent then)."""
        if pub is None or not self.context.ok():
            return
        try:
            pub.publish(msg)
        except Exception as exc:  # RCLError of a publisher being destroyed
            if self.context.ok():
                self.get_logger().warning(f"publishing on {pub.topic_name} failed: {exc!r}")

    def _publish(self, msg: Token) -> None:
        pub = self._tokens
        if pub is not None:
            msg.header.stamp = self.get_clock().now().to_msg()
            self._safe_publish(pub, msg)


def main(args: Optional[List[str]] = None) -> int:
    """Run ``edgellm_node`` (``ros2 run edgellm_ros edgellm_node``).

    Spins the node until it is finalized or a SIGINT / SIGTERM comes, answering every
    pending call and goal before the context goes (:func:`~edgellm_ros.ros.process.run_node`).
    """
    return run_node(EdgeLLMNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
