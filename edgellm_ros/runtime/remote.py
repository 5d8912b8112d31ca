"""The remote mode: an OpenAI-compatible server answers, the node's interface stays the same.

:class:`RemoteEngine` has the surface of :class:`~.engine.Engine` that the node
and the command line use (``generate(request, on_token, cancel)``, adapters,
``set_adapter``, ``set_eagle``, ``close``) and is chosen by ``backend:
remote`` (:func:`~.engine.open_engine`). No local model, KV cache or engine
folder is loaded: configure checks that the server answers GET /v1/models and
serves the model (and the adapters' model names).

A request maps onto one streamed chat completion (:func:`chat_body`):

- ``messages`` (or ``system_prompt`` + ``prompt``) become chat messages; the
  images a message shows go with it as ``image_url`` parts, JPEG data URLs
  made by OpenCV with the longest side at most ``remote.image_max_side``;
- ``json_schema`` becomes ``response_format`` (type json_schema, or json_object
  with a schema: ``remote.schema_format``); ``grammar``
  goes in the field ``remote.grammar_field`` names (refused when it is "");
- ``lora`` selects the model name the server serves that adapter as
  (``remote.lora_models``, vLLM's ``--lora-modules``);
- max_new_tokens, temperature, top_p, seed as the API's fields; top_k and
  ignore_eos as the extra fields vLLM and llama.cpp's server read.

Stop strings are matched here, on the streamed text, as the local generator
does (the same :class:`~.generation.StopMatcher`): finish_reason says
"stop_string" exactly, and the stream is closed at the match. Time to first
token and tokens/s are measured as locally: from the call to the first piece
of text, and (generated - 1) / (end - first). Token counts are the server's
(its usage chunk); a server that reports none gets the number of pieces.
A failure once text has streamed raises :class:`StreamInterrupted`, which
carries the partial result: the node answers BACKEND_ERROR with that text;
before any text it is the transport's BackendError (or InvalidRequest) as is.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..backends.remote import Piece, RemoteClient
from ..errors import BackendError, ConfigError, InvalidRequest, UnknownAdapter
from .chat import conversation
from .config import EngineConfig, GenerationRequest, RemoteConfig
from .generation import (FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, FINISH_STOP_STRING,
                         FLUSH_ID, PIECE_ID, GenerationResult, StopMatcher, TokenEvent)
from .speculative import EagleConfig, SpecStats

Log = Callable[[str], object]
#: The server's finish reasons -> ours (others, e.g. "content_filter", are kept as they are).
FINISH_REASONS = {"stop": FINISH_STOP, "eos": FINISH_STOP, "length": FINISH_LENGTH}
#: JPEG quality of the images sent to the server.
JPEG_QUALITY = 90


class StreamInterrupted(BackendError):
    """The server failed after part of the answer had streamed; ``partial`` holds that part."""

    def __init__(self, message: str, partial: GenerationResult):
        super().__init__(message)
        self.partial = partial


class RemoteImages:
    """Images as the server takes them: JPEG data URLs, the longest side bounded."""

    def __init__(self, max_side: int):
        self.max_side = max_side

    def data_url(self, rgb: np.ndarray) -> str:
        """``data:image/jpeg;base64,...`` of an RGB uint8 [H, W, 3] image, shrunk to max_side."""
        import cv2
        h, w = rgb.shape[:2]
        scale = self.max_side / max(h, w)
        if scale < 1.0:
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InvalidRequest(f"OpenCV could not encode an image of shape {rgb.shape} as JPEG")
        return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")

    def close(self) -> None:
        """Nothing to free (the node closes an engine's vision part)."""


class RemoteAdapters:
    """The adapters the server serves as model names (what LoraRegistry is to the local engine)."""

    def __init__(self, served: Dict[str, str]):
        self.served = dict(served)

    @property
    def names(self) -> List[str]:
        return sorted(self.served)

    def check(self, name: str) -> str:
        """Return name when it is "" or mapped; else UnknownAdapter listing the mapped ones."""
        if name != "" and name not in self.served:
            raise UnknownAdapter(f"unknown LoRA adapter {name!r}; remote.lora_models names: "
                                 f"{', '.join(self.names) or 'none'}")
        return name


def _set_path(body: Dict[str, Any], path: str, value: Any) -> None:
    """body["a"]["b"] = value for path "a.b"."""
    *parents, last = path.split(".")
    for key in parents:
        body = body.setdefault(key, {})
    body[last] = value


def chat_body(req: GenerationRequest, model: str, remote: RemoteConfig,
              images: RemoteImages) -> Dict[str, Any]:
    """The chat-completions request body of ``req`` (no ``stream``: the client sets it)."""
    if req.raw:
        raise InvalidRequest("raw prompts need the model's own template; the remote backend "
                             "sends chat messages (the server applies its template)")
    messages: List[Dict[str, Any]] = []
    for m in conversation(req):
        if m.images:
            parts: List[Dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": images.data_url(req.images[i])}}
                for i in m.images]
            messages.append({"role": m.role, "content": parts + [{"type": "text", "text": m.content}]})
        else:
            messages.append({"role": m.role, "content": m.content})
    s = req.sampling
    body: Dict[str, Any] = {"model": model, "messages": messages, "max_tokens": req.max_new_tokens,
                            "temperature": s.temperature, "top_p": s.top_p}
    if s.top_k == 1:        # greedy however the temperature is set, as locally
        body["temperature"] = 0.0
    elif s.top_k > 0:
        body["top_k"] = s.top_k
    if s.seed is not None:
        body["seed"] = s.seed
    if req.ignore_eos:
        body["ignore_eos"] = True
    if req.json_schema:
        try:
            schema = json.loads(req.json_schema)
        except ValueError as exc:
            raise InvalidRequest(f"json_schema is not JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise InvalidRequest(f"json_schema must be a JSON object, got {req.json_schema[:60]!r}")
        body["response_format"] = {"type": "json_object", "schema": schema} \
            if remote.schema_format == "json_object" else \
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    if req.grammar:
        if not remote.grammar_field:
            raise InvalidRequest("grammar: this node's remote server takes no grammar "
                                 "(remote.grammar_field is empty); use json_schema")
        _set_path(body, remote.grammar_field, req.grammar)
    return body


class RemoteEngine:
    """Answers requests through an OpenAI-compatible server; see the module docstring."""

    backend = "remote"

    def __init__(self, config: EngineConfig, client: RemoteClient, model: str):
        self.config = config
        self.client = client
        self.model = model                      # the served model name of the base model
        self.adapters = RemoteAdapters(config.remote.served_adapters)
        self._adapter = self.adapters.check(config.lora)
        self.vision = RemoteImages(config.remote.image_max_side)
        self.drafter = None                     # the server does its own speculation
        self.eagle = EagleConfig()
        self.eagle_totals = SpecStats()
        self.eagle_limits = config.eagle_limits
        self._lock = threading.Lock()

    @property
    def model_label(self) -> str:
        """What ~/status shows as the model."""
        return f"{self.model} at {self.client.url}"

    @classmethod
    def load(cls, config: EngineConfig, log: Log = print) -> "RemoteEngine":
        """Connect: the server must answer GET /v1/models and serve the model and the adapters."""
        t0 = time.perf_counter()
        rc = config.remote
        client = RemoteClient(rc.url, rc.api_key_env, rc.timeout_s, rc.max_retries, log)
        try:
            served = client.served_models()
            model = rc.model
            if not model:
                if len(served) != 1:
                    raise ConfigError(f"remote.model is empty and {rc.url} serves {len(served)} "
                                      f"models ({', '.join(served) or 'none'}): name one")
                model = served[0]
            missing = [m for m in [model] + list(rc.served_adapters.values()) if m not in served]
            if missing:
                raise ConfigError(f"{rc.url} does not serve {', '.join(repr(m) for m in missing)}; "
                                  f"it serves: {', '.join(served) or 'none'}")
        except BaseException:
            client.close()
            raise
        log(f"remote server {rc.url} serves {model!r} (adapters: "
            f"{', '.join(f'{k} -> {v}' for k, v in rc.served_adapters.items()) or 'none'}); "
            f"checked in {time.perf_counter() - t0:.2f} s")
        return cls(config, client, model)

    @property
    def adapter(self) -> str:
        """The LoRA adapter the next request uses ("" = the base model)."""
        return self._adapter

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the adapter of the next requests (UnknownAdapter if not mapped)."""
        self._adapter = self.adapters.check(name)

    def set_eagle(self, eagle: EagleConfig) -> None:
        """EAGLE is the server's business: enabling it here is refused with the reason."""
        if eagle.enabled:
            raise ConfigError("eagle.enabled: backend remote runs no local draft (the server "
                              "does its own speculative decoding, e.g. vLLM's --speculative-config)")
        self.eagle = eagle

    def generate(self, request: GenerationRequest,
                 on_token: Optional[Callable[[TokenEvent], None]] = None,
                 cancel: Optional[threading.Event] = None) -> GenerationResult:
        """Answer one request through the server (requests run one at a time)."""
        adapter = self._adapter if request.adapter is None else self.adapters.check(request.adapter)
        body = chat_body(request, self.adapters.served.get(adapter, self.model), self.config.remote,
                         self.vision)
        with self._lock:
            return _Answer(request, on_token, cancel).run(self.client, body)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


class _Answer:
    """One request's stream turned into TokenEvents and a GenerationResult."""

    def __init__(self, req: GenerationRequest, on_token: Optional[Callable[[TokenEvent], None]],
                 cancel: Optional[threading.Event]):
        self.on_token = on_token
        self.cancel = cancel
        self.stops = StopMatcher(req.stop)
        self.text = ""
        self.emitted = 0
        self.index = 0
        self.pieces = 0                 # pieces with text
        self.usage: Tuple[int, int, int] = (-1, -1, -1)
        self.t0 = time.perf_counter()
        self.t_first: Optional[float] = None

    def emit(self, upto: int, token_id: int) -> None:
        if self.on_token is not None:
            self.on_token(TokenEvent(self.index, token_id, self.text[self.emitted:upto]))
        self.emitted = upto
        self.index += 1

    def result(self, finish: str) -> GenerationResult:
        t_end = time.perf_counter()
        prompt, generated, cached = self.usage
        generated = generated if generated >= 0 else self.pieces
        first = self.t_first if self.t_first is not None else t_end
        decode_n = max(generated - 1, 0)
        return GenerationResult(
            text=self.text, token_ids=[], finish_reason=finish, prompt_tokens=max(prompt, 0),
            generated_tokens=generated, cached_tokens=max(cached, 0),
            time_to_first_token=first - self.t0,
            tokens_per_second=decode_n / (t_end - first) if decode_n and t_end > first else 0.0,
            total_time=t_end - self.t0)

    def run(self, client: RemoteClient, body: Dict[str, Any]) -> GenerationResult:
        if self.cancel is not None and self.cancel.is_set():
            return self.result(FINISH_CANCELLED)
        pieces = client.stream_chat(body, self.cancel)
        finish: Optional[str] = None
        try:
            for piece in pieces:
                finish = self.take(piece) or finish
                if finish == FINISH_STOP_STRING:
                    break
            if self.cancel is not None and self.cancel.is_set() and finish is None:
                finish = FINISH_CANCELLED
            if finish is None:
                raise BackendError(f"remote server {client.url}: the stream ended without a "
                                   "finish reason (cut off?)")
        except BackendError as exc:
            if not self.text:       # nothing streamed (refused, unreachable, timed out): as it is
                raise
            if self.emitted < len(self.text):   # held back for a stop string that never came
                self.emit(len(self.text), FLUSH_ID)
            raise StreamInterrupted(f"{exc}; the partial answer has {len(self.text)} "
                                    "character(s)", self.result("error")) from exc
        finally:
            pieces.close()      # closes the HTTP stream: the server stops generating
        if self.emitted < len(self.text):
            self.emit(len(self.text), FLUSH_ID)
        return self.result(finish)

    def take(self, piece: Piece) -> Optional[str]:
        """Stream one piece; returns our finish reason when it ends the answer."""
        if piece.completion_tokens >= 0:
            self.usage = (piece.prompt_tokens, piece.completion_tokens, piece.cached_tokens)
        if piece.text:
            if self.t_first is None:
                self.t_first = time.perf_counter()
            self.pieces += 1
            self.text += piece.text
            hit = self.stops.find(self.text, self.emitted) if self.stops.stops else -1
            if hit >= 0:
                self.text = self.text[:hit]
                self.emit(hit, PIECE_ID)
                return FINISH_STOP_STRING
            self.emit(self.stops.safe_end(self.text, self.emitted) if self.stops.stops
                      else len(self.text), PIECE_ID)
        if piece.finish_reason is not None:
            return FINISH_REASONS.get(piece.finish_reason, piece.finish_reason)
        return None
