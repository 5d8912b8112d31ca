"""The ``edgellm`` lifecycle node: /ask answers, ~/tokens streams.

Lifecycle (ros2/demos lifecycle_py style: create in configure, destroy in
cleanup; the heavy work happens in configure only):

- configure: validate the parameters, export (when missing or stale) and load
  the engine, allocate the KV cache, create the token publisher and the
  worker thread. Any failure is logged and returns FAILURE: the node stays
  unconfigured and can be configured again.
- activate: /ask starts taking requests.
- deactivate: /ask stops taking requests; requests still waiting in the queue
  are answered NOT_ACTIVE; the running generation completes and is answered
  normally (its tokens keep streaming).
- cleanup / shutdown: waiting requests are answered NOT_ACTIVE, the running
  generation is cancelled (answered CANCELLED with its partial text), the
  worker thread ends and the engine (sessions, KV cache, prompt cache) is freed.

Threading: /ask is an async callback in a reentrant callback group. It
validates the request, hands it to the worker (a bounded queue, one generation
at a time) and awaits a future the worker completes, so any number of queued
requests hold no executor thread. Lifecycle and parameter services stay in the
default mutually exclusive group.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import json
import threading
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from rclpy.task import Future

from ..errors import EdgeLLMError, InvalidRequest
from ..runtime.generation import GenerationResult, TokenEvent
from ..msg import Token
from ..srv import Ask
from .ask import (ImageUnavailable, NotActive, error_message, fill_error, fill_result,
                  generation_request)
from .camera import LatestFrame
from .params import (CONFIGURE_TIME, MAX_QUEUE_SIZE, PARAMETERS, SPECS, ParamSpec,
                     RequestDefaults, settings_from_parameters)
from .worker import GenerationWorker, Job

NODE_NAME = "edgellm"
STATUS_TOPIC = "~/status"     # /edgellm/status: JSON, latched
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


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of one parameter of the table."""
    d = ParameterDescriptor(name=spec.name, description=spec.description)
    constraints = [spec.constraints] if spec.constraints else []
    if spec.configure_time:
        # Not read_only: ROS would then refuse every change, even while
        # unconfigured, and a failed configure could not be retried with a
        # corrected value. The on-set callback refuses changes while configured.
        constraints.append("configure-time: can change only while unconfigured")
    d.additional_constraints = "; ".join(constraints)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(
                from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    return d


def _trim_heap() -> None:
    """Give freed heap pages back to the system.

    glibc keeps freed memory in per-thread arenas, and configure runs on
    whichever executor thread takes the transition: without this, each
    configure/cleanup on a new thread leaves a model-sized heap resident.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve every allocation of ``nbytes`` or more with its own mmap, returned on free.

    glibc raises its mmap threshold each time a large mmapped block is freed
    (up to 32 MiB), after which model-sized buffers (ONNX Runtime's prepacked
    INT4 weights, KV caches) come from the heap and stay resident across
    configure/cleanup cycles. A fixed
    threshold keeps them out of the heap.
    """
    try:
        ctypes.CDLL(None).mallopt(-3, nbytes)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


class EdgeLLMNode(LifecycleNode):
    """Lifecycle node owning one engine; see the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        _fix_mmap_threshold()
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
        # Guards _state, _worker and _defaults; /ask queues requests under it.
        self._lock = threading.Lock()
        self._state = "unconfigured"        # what /ask checks; mirrors the lifecycle
        self._engine: Any = None
        self._worker: Optional[GenerationWorker] = None
        self._tokens: Any = None
        self._status: Any = None
        self._camera: Optional[LatestFrame] = None
        self._image_age = 2.0
        self._served = 0
        self._ids = itertools.count(1)
        #: Done when the node reaches the finalized state (main() then exits).
        self.finalized: Future = Future()
        try:
            self._defaults = settings_from_parameters(self._values()).defaults
        except EdgeLLMError as exc:  # configure will fail with the same reason
            self.get_logger().error(f"invalid parameters: {exc}")
            self._defaults = RequestDefaults()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._ask = self.create_service(Ask, ASK_SERVICE, self._on_ask, qos_profile=ASK_QOS,
                                        callback_group=ReentrantCallbackGroup())

    # -- parameters ----------------------------------------------------------
    def _values(self) -> Dict[str, Any]:
        return {name: self.get_parameter(name).value for name in SPECS}

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
                        "eagle.enabled: no EAGLE draft is loaded (eagle.draft)"))
        except EdgeLLMError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: List[Parameter]) -> None:
        """Runtime parameters apply to the next request."""
        if any(p.name in SPECS for p in params):
            try:
                defaults = settings_from_parameters(self._values()).defaults
            except EdgeLLMError as exc:  # _check_parameters lets no such change through
                self.get_logger().error(f"parameters not applied: {exc}")
                return
            settings = settings_from_parameters(self._values())
            with self._lock:
                self._defaults = defaults
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
        with self._lock:
            self._state = "configuring"
        try:
            settings = settings_from_parameters(self._values())
            log.info(f"configuring: model={settings.engine.model or '(embedded default)'} "
                     f"backend={settings.engine.backend} "
                     f"max_seq_len={settings.engine.max_seq_len}")
            from ..runtime.engine import Engine  # heavy imports only when configuring
            engine = Engine.load(settings.engine, log=log.info)
            try:
                engine.set_eagle(settings.eagle)
            except EdgeLLMError:
                engine.close()
                raise
        except Exception as exc:
            log.error(f"configure failed ({type(exc).__name__}): {exc}")
            with self._lock:
                self._state = "unconfigured"
            return TransitionCallbackReturn.FAILURE
        self._engine = engine
        self._tokens = self.create_publisher(Token, TOKENS_TOPIC, TOKENS_QOS)
        self._status = self.create_publisher(String, STATUS_TOPIC, STATUS_QOS)
        self._camera = LatestFrame(self, compressed=settings.image_compressed)
        if engine.vision is None:
            log.info("text-only model: use_image requests are answered IMAGE_ERROR")
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
        self.get_logger().info("active: /ask takes requests")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking requests; the running one completes. SUCCESS -> inactive."""
        with self._lock:
            self._state = "inactive"
            worker = self._worker
        dropped = worker.drop_waiting(NotActive(
            "the node was deactivated before this request started")) if worker else 0
        self.get_logger().info(
            f"inactive: /ask refuses requests; {dropped} waiting request(s) answered "
            "NOT_ACTIVE, a running generation completes")
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
        super().destroy_node()

    def _release(self, why: str) -> None:
        with self._lock:
            self._state = "unconfigured"
            worker, self._worker = self._worker, None
        engine, self._engine = self._engine, None
        if worker is not None and not worker.stop(
                NotActive(f"the node was {why} before this request started"),
                timeout=STOP_TIMEOUT_S):
            # Closing the engine under a running generation could crash the
            # process: keep it (and say so) rather than free it.
            self.get_logger().error(
                f"the generation did not stop within {STOP_TIMEOUT_S:.0f} s; "
                "its engine is left to the garbage collector")
            engine = None
        if self._tokens is not None:
            self.destroy_publisher(self._tokens)
            self._tokens = None
        if self._status is not None:
            self.destroy_publisher(self._status)
            self._status = None
        if self._camera is not None:
            self._camera.destroy()
            self._camera = None
        if engine is not None:
            engine.close()
            del engine
            gc.collect()
            _trim_heap()
            self.get_logger().info(f"{why}: engine freed")

    # -- /ask ----------------------------------------------------------------
    async def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        """Answer one request; nothing raised here reaches the executor."""
        try:
            return await self._answer(request, response)
        except Exception as exc:
            if not isinstance(exc, EdgeLLMError):
                self.get_logger().error(f"/ask failed: {exc!r}")
            return fill_error(response, exc)

    async def _answer(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        executor = self.executor
        done: Future = Future(executor=executor)
        # Checked and queued under the lock deactivate/cleanup take: no request
        # slips into the queue after the node left the active state.
        with self._lock:
            if self._state != "active" or self._worker is None:
                raise NotActive(f"the node is {self._state}, not active: configure and "
                                "activate it (lifecycle transitions) before asking")
            engine = self._engine
            if request.lora:
                engine.adapters.check(request.lora)
            job_request = generation_request(request, self._defaults)
            if request.use_image:
                job_request = replace(job_request, images=self._images_for(request))
            stream = _TokenStream(self, next(self._ids), done, executor)
            self._worker.submit(Job(stream.request_id, job_request, stream.on_token,
                                    stream.on_done))
        response.request_id = stream.request_id
        result, error = await done
        self._served += 1
        self._publish_status()
        if error is not None:
            if not isinstance(error, EdgeLLMError):
                self.get_logger().error(
                    f"request {stream.request_id} failed: {error_message(error)}")
            return fill_error(response, error)
        return fill_result(response, result)

    def _images_for(self, request: Ask.Request) -> Tuple[Any, ...]:
        """The inline image (else the latest camera frame if young enough) and the
        request's further inline images, as RGB uint8 arrays."""
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

    def _publish_status(self) -> None:
        """Latched JSON on ~/status: state, adapters, EAGLE settings and cumulative metrics."""
        pub, engine = self._status, self._engine
        if pub is None or engine is None:
            return
        status = {
            "state": self._state, "model": engine.config.model or "(embedded default)",
            "backend": engine.backend, "lora": engine.adapter,
            "lora_adapters": engine.adapters.names,
            "vision": engine.vision is not None, "requests_served": self._served,
            "eagle": {"draft_loaded": engine.drafter is not None,
                      "enabled": engine.eagle.enabled,
                      "drafting_top_k": engine.eagle.drafting_top_k,
                      "drafting_step": engine.eagle.drafting_step,
                      "verify_tree_size": engine.eagle.verify_tree_size,
                      "confidence_threshold": engine.eagle.confidence_threshold,
                      **engine.eagle_totals.as_dict()},
        }
        pub.publish(String(data=json.dumps(status)))

    def _publish(self, msg: Token) -> None:
        pub = self._tokens
        if pub is not None:
            msg.header.stamp = self.get_clock().now().to_msg()
            pub.publish(msg)


class _TokenStream:
    """Publishes one request's Token messages from the worker thread.

    Indices are contiguous from 0; the last message has done=true and carries
    whatever part of the final text was not streamed yet, so the texts always
    concatenate to the response text.
    """

    def __init__(self, node: EdgeLLMNode, request_id: int, done: Future, executor: Any):
        self.node = node
        self.request_id = request_id
        self.done = done
        self.executor = executor
        self.index = 0
        self.streamed: List[str] = []

    def _send(self, text: str, done: bool = False, finish_reason: str = "") -> None:
        msg = Token(request_id=self.request_id, index=self.index, text=text, done=done,
                    finish_reason=finish_reason)
        self.index += 1
        self.node._publish(msg)

    def on_token(self, event: TokenEvent) -> None:
        self.streamed.append(event.text)
        self._send(event.text)

    def on_done(self, result: Optional[GenerationResult],
                error: Optional[BaseException]) -> None:
        tail, reason = "", "error"
        if result is not None:
            reason = result.finish_reason
            sent = "".join(self.streamed)
            if result.text.startswith(sent):
                tail = result.text[len(sent):]
            else:
                self.node.get_logger().warning(
                    f"request {self.request_id}: streamed text is not a prefix of the answer")
        try:
            self._send(tail, done=True, finish_reason=reason)
        finally:
            outcome: Tuple[Optional[GenerationResult], Optional[BaseException]] = (result, error)
            self.done.set_result(outcome)
            if self.executor is not None:
                self.executor.wake()  # resume the awaiting /ask callback


def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``edgellm_node`` (``ros2 run edgellm_ros edgellm_node``)."""
    rclpy.init(args=args)
    node = EdgeLLMNode()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin_until_future_complete(node.finalized)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
