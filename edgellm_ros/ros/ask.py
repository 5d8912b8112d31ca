"""The /ask contract: request fields -> GenerationRequest, outcome -> response.

Pure functions over duck-typed objects (anything with the fields of
``edgellm_ros/srv/Ask``), so the rules are testable without ROS:

- zero or empty in an optional field means the node's default;
- ``top_k`` -1 and ``seed`` -1 are the two non-zero specials (no limit, fresh
  entropy), as srv/Ask.srv documents;
- every exception maps to an error-code constant of Ask.Response through its
  ``code`` (the runtime's :class:`~edgellm_ros.errors.EdgeLLMError` family
  plus the node's own refusals below); anything else is INTERNAL.

The Generate action's goal and result have the same fields as the Ask
request and response, so the same functions serve both.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ..runtime.config import ChatMessage, GenerationRequest, SamplingConfig
from ..errors import EdgeLLMError, InvalidRequest
from ..runtime.generation import GenerationResult
from ..runtime.remote import StreamInterrupted
from .params import RequestDefaults, RequestLimits


class NotActive(EdgeLLMError):
    """The node is not in the active state (or left it while the request waited)."""

    code = "not_active"


class QueueFull(EdgeLLMError):
    """One request runs and queue_size more wait."""

    code = "queue_full"


class ImageUnavailable(EdgeLLMError):
    """use_image was set but no image can be used."""

    code = "image"


class Cancelled(EdgeLLMError):
    """The generation was stopped before it finished (a client's cancel, cleanup, shutdown)."""

    code = "cancelled"


#: EdgeLLMError.code -> name of the Ask.Response constant.
ERROR_CODE_NAMES = {
    "invalid_request": "INVALID_REQUEST",
    "config": "INVALID_REQUEST",
    "not_active": "NOT_ACTIVE",
    "queue_full": "QUEUE_FULL",
    "context_full": "CONTEXT_FULL",
    "image": "IMAGE_ERROR",
    "unknown_adapter": "UNKNOWN_ADAPTER",
    "cancelled": "CANCELLED",
    "backend": "BACKEND_ERROR",
    "backend_unavailable": "BACKEND_ERROR",
}


def error_code_name(exc: BaseException) -> str:
    """Name of the Ask.Response error constant for an exception."""
    if isinstance(exc, EdgeLLMError):
        return ERROR_CODE_NAMES.get(exc.code, "INTERNAL")
    return "INTERNAL"


def error_message(exc: BaseException) -> str:
    """The human message of a failed response."""
    if error_code_name(exc) == "INTERNAL":
        return f"internal error ({type(exc).__name__}): {exc}"
    return str(exc)


def chat_messages(ask: Any, n_images: int) -> Tuple[Tuple[str, str, Tuple[int, ...]], ...]:
    """The request's ``messages`` as checked (role, content, image indices) triples.

    ``image_indices`` point into the request's images (``n_images`` of them,
    collected with use_image). Raises InvalidRequest naming the message.
    """
    out = []
    for i, m in enumerate(ask.messages):
        if m.role not in ("system", "user", "assistant"):
            raise InvalidRequest(
                f"messages[{i}].role must be system, user or assistant, got {m.role!r}")
        idx = tuple(int(k) for k in m.image_indices)
        if idx and not ask.use_image:
            raise InvalidRequest(f"messages[{i}].image_indices {list(idx)} need use_image: true")
        bad = [k for k in idx if k >= n_images]
        if bad:
            raise InvalidRequest(f"messages[{i}].image_indices: {bad[0]} is out of range "
                                 f"(the request has {n_images} image(s))")
        out.append((m.role, m.content, idx))
    return tuple(out)


def _new_fields(ask: Any, n_images: int) -> Dict[str, Any]:
    """The GenerationRequest keywords of the conversation and constraint fields that are set."""
    wanted: Dict[str, Any] = {}
    if len(ask.messages):
        if ask.prompt:
            raise InvalidRequest("prompt and messages: give one of the two (the question "
                                 "goes into the last user message)")
        wanted["messages"] = chat_messages(ask, n_images)
    if ask.json_schema:
        wanted["json_schema"] = ask.json_schema
    if ask.grammar:
        wanted["grammar"] = ask.grammar
    if "messages" in wanted:
        wanted["messages"] = tuple(ChatMessage(role=r, content=c, images=i)
                                   for r, c, i in wanted["messages"])
    return wanted


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_limits(ask: Any, limits: RequestLimits) -> None:
    """Raise InvalidRequest when a field of the request is larger than ``limits`` allow.

    Cheap (sizes only), so the node runs it before any other work on the request.
    """
    def refuse(what: str, size: int, unit: str, name: str) -> None:
        raise InvalidRequest(f"{what} is {size}{unit}, more than limits.{name}="
                             f"{getattr(limits, name)}{unit}")

    for field_name in ("prompt", "system_prompt"):
        size = _utf8_bytes(getattr(ask, field_name))
        if size > limits.prompt_bytes:
            refuse(field_name, size, " bytes", "prompt_bytes")
    if len(ask.messages) > limits.messages:
        refuse("messages", len(ask.messages), " messages", "messages")
    size = sum(_utf8_bytes(m.content) for m in ask.messages)
    if size > limits.messages_bytes:
        refuse("messages (contents together)", size, " bytes", "messages_bytes")
    if len(ask.stop) > limits.stop_strings:
        refuse("stop", len(ask.stop), " strings", "stop_strings")
    for i, s in enumerate(ask.stop):
        if _utf8_bytes(s) > limits.stop_bytes:
            refuse(f"stop[{i}]", _utf8_bytes(s), " bytes", "stop_bytes")
    for field_name in ("json_schema", "grammar"):
        size = _utf8_bytes(getattr(ask, field_name))
        if size > limits.constraint_bytes:
            refuse(field_name, size, " bytes", "constraint_bytes")
    if ask.use_image:
        if 1 + len(ask.images) > limits.images:
            refuse("use_image with images", 1 + len(ask.images), " images", "images")
        for what, img in [("image", ask.image)] + [(f"images[{i}]", m)
                                                   for i, m in enumerate(ask.images)]:
            if len(img.data) > limits.image_bytes:
                refuse(f"{what}.data", len(img.data), " bytes", "image_bytes")


def generation_request(ask: Any, defaults: RequestDefaults,
                       images: Tuple[Any, ...] = ()) -> GenerationRequest:
    """Build the runtime request of an Ask request (or Generate goal).

    From its fields, the node's defaults and the images already collected for it.

    Raises InvalidRequest naming the offending field and value.
    """
    base = defaults.sampling
    top_k = int(ask.top_k)
    if top_k < -1:
        raise InvalidRequest(f"top_k must be -1 (no limit), 0 (node default) or > 0, got {top_k}")
    seed = int(ask.seed)
    if seed < -1:
        raise InvalidRequest(
            f"seed must be -1 (fresh entropy), 0 (node default) or > 0, got {seed}")
    if ask.json_schema and ask.grammar:
        raise InvalidRequest("json_schema and grammar: give at most one of the two")
    sampling = SamplingConfig(
        temperature=float(ask.temperature) if ask.temperature != 0 else base.temperature,
        top_k={0: base.top_k, -1: 0}.get(top_k, top_k),
        top_p=float(ask.top_p) if ask.top_p != 0 else base.top_p,
        seed={0: base.seed, -1: None}.get(seed, seed))
    return GenerationRequest(
        prompt=ask.prompt,
        system_prompt=ask.system_prompt or defaults.system_prompt,
        max_new_tokens=int(ask.max_new_tokens) or defaults.max_new_tokens,
        sampling=sampling,
        stop=tuple(ask.stop),
        adapter=ask.lora or None,
        images=tuple(images),
        **_new_fields(ask, len(images)))


def fill_error(response: Any, exc: BaseException) -> Any:
    """Mark ``response`` failed with the code and message of ``exc``.

    A remote stream that broke off (StreamInterrupted) leaves its partial answer
    and statistics in the response too.
    """
    if isinstance(exc, StreamInterrupted):
        _copy_answer(response, exc.partial)
    response.success = False
    response.error_code = getattr(type(response), error_code_name(exc))
    response.message = error_message(exc)
    return response


def fill_result(response: Any, result: GenerationResult,
                cancelled_because: Optional[str] = None) -> Any:
    """Copy the answer and its statistics.

    A cancelled generation is a failure (CANCELLED, ``cancelled_because`` saying who
    stopped it).
    """
    _copy_answer(response, result)
    if result.finish_reason == "cancelled":
        why = cancelled_because or "the node was cleaned up or shut down"
        return fill_error(response, Cancelled(
            f"the generation was cancelled ({why}); "
            f"text holds the {result.generated_tokens} tokens generated before"))
    response.success = True
    response.error_code = type(response).OK
    response.message = ""
    return response


def _copy_answer(response: Any, result: GenerationResult) -> None:
    """The answer's text and statistics into a response (or an action result)."""
    response.text = result.text
    response.finish_reason = result.finish_reason
    response.prompt_tokens = int(result.prompt_tokens)
    response.cached_tokens = int(result.cached_tokens)
    response.generated_tokens = int(result.generated_tokens)
    response.time_to_first_token = float(result.time_to_first_token)
    response.tokens_per_second = float(result.tokens_per_second)
    if result.eagle is not None:
        response.draft_steps = int(result.eagle.drafts)
        response.drafted_tokens = int(result.eagle.drafted_tokens)
        response.accepted_tokens = int(result.eagle.accepted_tokens)
        response.mean_acceptance_length = float(result.eagle.mean_acceptance_length)
