"""Chat prompts: a request rendered by the model's own chat template, with its cuts.

A request is a conversation: its ``messages``, or ``[system_prompt?, prompt]``
as one user turn. The conversation is rendered whole, generation prompt
included; with a vision model each message's content parts come from
:meth:`VisionPipeline.user_content` (the images a message shows go to that
message) and the images are expanded into their tokens in the order shown.

Cuts are the positions in the prompt's ids where a reusable prefix ends: the
rendered system part (everything before the first user message's text, the
template's default system prompt included) and the end of each user message.
They depend on the request alone, so the generator's chunking (the tokens
between two cuts prefilled as chunks of their own) is the same with a prompt
cache and without one, and restored rows are the bits a cold prefill
computes. Turn n+1 of a conversation starts with turn n's prompt up to its
last user message, one of its own cuts: that is its longest cached prefix.
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
                  max_tokens: int) -> Tuple[List[int], Tuple[Cut, ...], Optional[np.ndarray]]:
    """(token ids, cuts, image embeddings [M, H] or None) of a request.

    ``max_tokens`` bounds a prompt with images before its images are encoded.
    """
    if req.images and vision is None:
        raise InvalidRequest(f"the request has {len(req.images)} image(s) but the model "
                             "has no vision encoder (text-only)")
    if req.raw:
        return tok.encode(req.prompt), (), None
    msgs = conversation(req)

    def render(ms: Sequence[ChatMessage], generation: bool) -> str:
        # vision templates (SmolVLM) read content parts; text models a string
        turns: List[Dict[str, Any]] = [
            {"role": m.role, "content": vision.user_content(m.content, len(m.images))
             if vision is not None else m.content} for m in ms]
        return tok.apply_chat_template(turns, add_generation_prompt=generation)

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

    # prefixes (text, images shown in it): the system part, then each user message's end
    lead = 0
    while lead < len(msgs) and msgs[lead].role == "system":
        lead += 1
    probe = render(msgs[:lead] + (ChatMessage("user", _PROBE),), True)
    at = max(probe.find(_PROBE), 0)
    at = _common(probe[:at], text)  # SmolVLM writes "User: " before text, "User:" before an image
    prefixes = [(probe[:at], sum(len(m.images) for m in msgs[:lead]))] if at > 0 else []
    for k, m in enumerate(msgs):
        if m.role == "user":
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
    return ids, tuple(cuts), rows
