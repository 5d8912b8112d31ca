"""Chat prompts: a request rendered by the model's own chat template, with its cuts.

A request is a conversation: its ``messages``, or ``[system_prompt?, prompt]``
as one user turn. The conversation is rendered whole, generation prompt
included; with a vision model each message's content parts come from
:meth:`VisionPipeline.user_content` (the images a message shows go to that
message) and the images are expanded into their tokens in the order shown.

Cuts are the positions in the prompt's ids where a reusable prefix ends: the
rendered system part (everything before the first user message's text, the
template's default system prompt included) and the end of each user and
assistant message. They depend on the request alone, so the generator's
chunking (the tokens between two cuts prefilled as chunks of their own) is
the same with a prompt cache and without one, and restored rows are the bits
a cold prefill computes. After an answer, :func:`answered_prompt` gives the
conversation with that answer appended as an assistant message, ended at its
own cut: the generator prefills the answer as the chunk a cold prefill of the
next turn would run and caches it, so turn n+1 of a conversation restores
everything up to turn n's answer and computes only its new message.
Each cut carries a salt, the digests of the images shown since the previous
cut, so prefixes with the same tokens but other images never share KV rows.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..contract import TextTokenizer
from ..errors import InvalidRequest, ModelLoadError
from .config import ChatMessage, GenerationRequest
from .vision import ImageLayout, VisionPipeline

#: Marker in a user message used to find where the chat template puts it.
_PROBE = "\u2063edgellm-probe\u2063"


class Prompt(NamedTuple):
    """A request rendered: what the generator prefills."""

    ids: List[int]
    cuts: Tuple["Cut", ...]
    image_rows: Optional[np.ndarray]    # image embeddings [M, H], or None
    layout: Optional[ImageLayout]       # how the images became tokens (vision models)


class Cut(NamedTuple):
    """The end of a reusable prefix of a prompt."""

    pos: int    # prompt tokens before the cut (0 < pos < len(ids))
    salt: str   # digests of the images shown between the previous cut and this one


def conversation(req: GenerationRequest) -> Tuple[ChatMessage, ...]:
    """The messages of a request: its own, or [system_prompt?, prompt] showing all its images."""
    if req.messages:
        return req.messages
    system = () if req.system_prompt is None else (ChatMessage("system", req.system_prompt),)
    return system + (ChatMessage("user", req.prompt, tuple(range(len(req.images)))),)


def image_digest(img: np.ndarray) -> str:
    """A digest of an image's shape and pixels (part of the prompt-cache key)."""
    h = hashlib.sha256(repr(tuple(img.shape)).encode())
    h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()[:32]


def _common(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _render(tok: TextTokenizer, vision: Optional[VisionPipeline], ms: Sequence[ChatMessage],
            generation: bool) -> str:
    # vision templates (SmolVLM) read content parts; text models a string
    turns: List[Dict[str, Any]] = [
        {"role": m.role, "content": vision.user_content(m.content, len(m.images))
         if vision is not None else m.content} for m in ms]
    return tok.apply_chat_template(turns, add_generation_prompt=generation)


def probe_template(tok: TextTokenizer, vision: bool, where: str) -> None:
    """Render one user message at load: a template that fails or passes a bound fails configure.

    ``vision``: the model reads SmolVLM-style content parts. ModelLoadError names ``where``
    (the engine folder holding the template) and the reason.
    """
    content: Any = VisionPipeline.user_content("Hello.", 0) if vision else "Hello."
    try:
        tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    except InvalidRequest as exc:
        raise ModelLoadError(f"{where}: the model's chat template fails a one-message probe render: "
                             f"{exc}") from exc


def render_prompt(tok: TextTokenizer, vision: Optional[VisionPipeline], req: GenerationRequest,
                  max_tokens: int) -> Prompt:
    """The token ids, cuts, image embeddings and image layout of a request.

    ``max_tokens`` bounds a prompt with images before its images are encoded.
    """
    if req.images and vision is None:
        raise InvalidRequest(f"the request has {len(req.images)} image(s) but the model "
                             "has no vision encoder (text-only)")
    if req.raw:
        return Prompt(tok.encode(req.prompt), (), None, None)
    msgs = conversation(req)

    def render(ms: Sequence[ChatMessage], generation: bool) -> str:
        return _render(tok, vision, ms, generation)

    text = render(msgs, True)
    shown = [req.images[i] for m in msgs for i in m.images]
    rows: Optional[np.ndarray] = None
    layout: Optional[ImageLayout] = None
    if vision is not None and shown:
        ids, rows, layout = vision.prepare_with_layout(text, shown, tok, max_tokens=max_tokens)
    else:
        ids = tok.encode(text)
        if vision is not None:
            vision.check_image_tokens(ids, np.zeros((0, 1), np.float32))

    # prefixes (text, images shown in it): the system part, then each message's end
    lead = 0
    while lead < len(msgs) and msgs[lead].role == "system":
        lead += 1
    probe = render(msgs[:lead] + (ChatMessage("user", _PROBE),), True)
    at = max(probe.find(_PROBE), 0)
    at = _common(probe[:at], text)  # SmolVLM writes "User: " before text, "User:" before an image
    prefixes = [(probe[:at], sum(len(m.images) for m in msgs[:lead]))] if at > 0 else []
    for k, m in enumerate(msgs):
        if m.role != "system":
            try:
                prefixes.append((render(msgs[:k + 1], False), sum(len(x.images) for x in msgs[:k + 1])))
            except InvalidRequest:   # a template that renders only complete conversations
                continue
    digests = [image_digest(img) for img in shown] if rows is not None else []
    cuts: List[Cut] = []
    seen = 0  # images shown before the previous cut
    for prefix, n in prefixes:
        if not prefix or not text.startswith(prefix):
            continue
        if layout is not None and vision is not None:
            prefix = vision.expand_prompt(prefix, ImageLayout(layout.grids[:n], layout.image_seq_len))
        pos = _common(tok.encode(prefix), ids)
        if 0 < pos < len(ids) and (not cuts or pos > cuts[-1].pos):
            cuts.append(Cut(pos, "".join(digests[seen:n])))
            seen = max(seen, n)
    return Prompt(ids, tuple(cuts), rows, layout)


def answered_prompt(tok: TextTokenizer, vision: Optional[VisionPipeline], req: GenerationRequest,
                    prompt: Prompt, answer: str) -> Optional[Tuple[List[int], Tuple[Cut, ...]]]:
    """The ids of ``req``'s conversation with ``answer`` as its last (assistant) message.

    With the cuts of ``prompt`` that it shares and a last cut at its end: the prefix the
    conversation's next turn starts with. None when the template renders the answered
    conversation otherwise than as a continuation of the prompt's last cut (then there
    is nothing exact to cache), or for raw requests.
    """
    if req.raw or not prompt.cuts or not answer:
        return None
    msgs = conversation(req) + (ChatMessage("assistant", answer),)
    try:
        text = _render(tok, vision, msgs, False)
    except InvalidRequest:
        return None
    if vision is not None and vision.proc.image_token in answer:
        return None   # the next turn's prefill would take it for an image
    if prompt.layout is not None and vision is not None:
        text = vision.expand_prompt(text, prompt.layout)
    ids = tok.encode(text)
    last = prompt.cuts[-1]
    if len(ids) <= last.pos or ids[:last.pos] != prompt.ids[:last.pos]:
        return None
    return ids, prompt.cuts + (Cut(len(ids), ""),)
