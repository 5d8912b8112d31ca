"""The remote backend's transport: an OpenAI-compatible server, through the ``openai`` client.

Not a graph executor (a server has no logits or KV cache to bind): it lists
the server's models and streams one chat completion as :class:`Piece` objects.
The official ``openai`` client (pinned in requirements/remote.txt, imported
lazily: a missing one is BackendUnavailable) does the HTTP, the server-sent
events and the timeouts; this module adds the bounded retries before the first
token and turns every vendor error into the project's family:

- the server cannot be reached, answers 429/503 more than ``max_retries``
  times, times out, or breaks off or garbles a stream: :class:`BackendError`
  (BackendUnavailable while listing the models at configure);
- it refuses a request (400, 404, 422...): :class:`InvalidRequest` with the
  server's own message.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Generator, List, Optional

from ..contract import Log
from ..errors import BackendError, BackendUnavailable, InvalidRequest

#: The version the backend is written and tested against (requirements pin it).
OPENAI_VERSION = "3.63.0"
#: Statuses retried (with backoff, before the first token): rate limited, overloaded.
RETRY_STATUSES = (429, 503)
#: First backoff; doubles each retry (with up to 25% jitter), never above the timeout.
BACKOFF_S = 0.5


@dataclass(frozen=True)
class Piece:
    """One chunk of a streamed chat completion."""

    text: str                       # the content delta ("" for a chunk without one)
    finish_reason: Optional[str]    # the server's, on the last chunk of the choice
    prompt_tokens: int = -1         # from the usage chunk (-1: not reported)
    completion_tokens: int = -1
    cached_tokens: int = -1


def _openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'remote' needs the openai client: pip install "
            f"'openai=={OPENAI_VERSION}' (or the package's [remote] extra)") from exc
    return openai


def _server_message(exc: Any) -> str:
    """The error text a server put in its body (OpenAI's {"error": {"message"}}, FastAPI's detail)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(getattr(exc, "message", "") or exc)


class RemoteClient:
    """A connection to one OpenAI-compatible server (``url`` ends with /v1)."""

    name = "remote"

    def __init__(self, url: str, api_key_env: str = "", timeout_s: float = 60.0,
                 max_retries: int = 2, log: Log = print):
        openai = _openai()
        key = "EMPTY"   # servers started without a key take any; the client insists on one
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise BackendUnavailable(f"remote.api_key_env names {api_key_env!r}, "
                                         "which is not set in the node's environment")
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._log = log
        self._errors = openai
        # max_retries=0: the retries are ours (429/503 only, bounded by the timeout)
        self._client = openai.OpenAI(base_url=self.url, api_key=key, timeout=self.timeout_s,
                                     max_retries=0)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def served_models(self) -> List[str]:
        """The model ids of GET /v1/models; BackendUnavailable with the reason when it fails."""
        try:
            return [m.id for m in self._call(self._client.models.list, "GET /models").data]
        except (BackendError, InvalidRequest) as exc:
            raise BackendUnavailable(f"{exc} (configure checks that the server answers GET /models)") \
                from exc

    def _call(self, fn: Any, what: str, **kwargs: Any) -> Any:
        """``fn(**kwargs)`` with retries of 429/503 and unreachable servers, vendor errors mapped."""
        openai = self._errors
        for attempt in range(self.max_retries + 1):
            try:
                return fn(**kwargs)
            except openai.APIStatusError as exc:
                status = exc.status_code
                why = f"{what}: HTTP {status}: {_server_message(exc)}"
                if status not in RETRY_STATUSES:
                    if 400 <= status < 500 and status not in (401, 403):
                        raise InvalidRequest(f"the server refused the request ({why})") from exc
                    raise BackendError(f"remote server {self.url}: {why}") from exc
                retry_after = exc.response.headers.get("retry-after")
            except openai.APITimeoutError as exc:
                raise BackendError(f"remote server {self.url}: {what}: no answer within "
                                   f"remote.timeout_s={self.timeout_s:g} s") from exc
            except openai.APIConnectionError as exc:
                why = f"{what}: cannot connect ({exc.__cause__ or exc})"
                retry_after = None
            if attempt == self.max_retries:
                raise BackendError(f"remote server {self.url}: {why}; gave up after "
                                   f"{attempt + 1} attempt(s) (remote.max_retries={self.max_retries})")
            delay = BACKOFF_S * 2 ** attempt * (1 - 0.25 * random.random())
            try:
                delay = float(retry_after) if retry_after else delay
            except ValueError:
                pass
            delay = min(max(delay, 0.0), self.timeout_s)
            self._log(f"remote: {why}; retry {attempt + 1} of {self.max_retries} in {delay:.2f} s")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def stream_chat(self, body: Dict[str, Any], cancel: Optional[threading.Event] = None
                    ) -> Generator[Piece, None, None]:
        """Stream one chat completion of ``body`` (the API's fields; ``stream`` is set here).

        The request is retried (429/503, unreachable) before its stream starts,
        never after. Closing the iterator (or a set ``cancel``, seen between
        chunks) closes the HTTP stream, which tells the server to stop.
        """
        openai = self._errors
        body = dict(body, stream=True, stream_options={"include_usage": True})
        extra = {k: body.pop(k) for k in list(body) if k not in _API_FIELDS}
        stream = self._call(self._client.chat.completions.create, "POST /chat/completions",
                            extra_body=extra or None, **body)
        try:
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    return
                yield _piece(chunk)
        except openai.APITimeoutError as exc:
            raise BackendError(f"remote server {self.url}: no piece of the answer within "
                               f"remote.timeout_s={self.timeout_s:g} s") from exc
        except openai.APIConnectionError as exc:
            raise BackendError(f"remote server {self.url}: the stream broke off "
                               f"({exc.__cause__ or exc})") from exc
        except openai.APIError as exc:
            raise BackendError(f"remote server {self.url}: error in the stream: "
                               f"{_server_message(exc)}") from exc
        except ValueError as exc:   # json.JSONDecodeError: not an SSE JSON chunk
            raise BackendError(f"remote server {self.url}: malformed stream ({exc})") from exc
        finally:
            stream.close()


#: The chat-completions fields the client takes as keywords; others go in extra_body.
_API_FIELDS = frozenset({"messages", "model", "max_tokens", "temperature", "top_p", "seed",
                         "stop", "response_format", "stream", "stream_options"})


def _piece(chunk: Any) -> Piece:
    """A Piece of one ChatCompletionChunk (a choice's delta, usage, or both); BackendError if not one."""
    try:
        choices, usage = chunk.choices, chunk.usage
        if not isinstance(choices, list):
            raise TypeError(f"choices is {type(choices).__name__}")
        text, finish = "", None
        if choices:
            delta = choices[0].delta
            content = delta.content if delta is not None else None
            if content is not None and not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
            text, finish = content or "", choices[0].finish_reason
        if usage is None:
            return Piece(text, finish)
        if not (isinstance(usage.prompt_tokens, int) and isinstance(usage.completion_tokens, int)):
            raise TypeError(f"usage {usage!r}")
        details = usage.prompt_tokens_details
        cached = details.cached_tokens if details is not None and details.cached_tokens else -1
        return Piece(text, finish, usage.prompt_tokens, usage.completion_tokens, cached)
    except (AttributeError, TypeError) as exc:
        raise BackendError(f"malformed chunk in the server's stream ({exc}): {chunk!r:.200}") from exc
