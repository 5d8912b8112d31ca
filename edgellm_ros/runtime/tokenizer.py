"""Text <-> token ids for byte-level BPE models, built on Hugging Face ``tokenizers``.

Two sources give the same :class:`Tokenizer`:

* a GGUF's ``tokenizer.*`` metadata (:meth:`Tokenizer.from_gguf_metadata`):
  vocabulary, merges, token types and ``tokenizer.ggml.pre``, the name of the
  split regex the merges were learned with;
* a Hugging Face folder (:meth:`Tokenizer.from_hf_folder`): ``tokenizer.json``
  plus ``tokenizer_config.json`` / ``chat_template.jinja``.

Pre-tokenizers follow the model's own ``tokenizer.json`` and llama.cpp's
pre-types. In particular ``smollm`` (and ``starcoder``, ``refact``) isolates
every digit before the GPT-2 split, as SmolLM2's tokenizer.json does;
transformers' GGUF loader drops that step, which changes the ids only where
whitespace precedes a digit (``"a  1"``: ``a|ĠĠ|1`` here and in llama.cpp,
``a|Ġ|Ġ|1`` there). ``llama-bpe`` matches whole vocabulary words before
merging (``ignore_merges``), as Llama 3's tokenizer.json and llama.cpp do.

Tokens the GGUF marks as control (type 3) become special added tokens and are
recognised inside text, so ``"<|im_start|>user"`` encodes to ``[1, 4093]``.

:class:`StreamDecoder` turns ids into text one token at a time without ever
emitting half a UTF-8 character.
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend
from tokenizers.models import BPE

from ..errors import InvalidRequest, ModelLoadError, UnsupportedModelError
from ..loaders.files import regular_size
from .chat_template import TemplateRenderer, compile_template

#: GPT-2's split (also what ByteLevel(use_regex=True) applies).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: Llama 3's split: numbers in groups of up to three, newlines kept with punctuation.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2's split: like Llama 3's but one digit per piece.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: ``tokenizer.ggml.pre`` value -> pre-tokenizer family.
PRE_TOKENIZER_FAMILIES: Dict[str, str] = {
    **dict.fromkeys(("default", "gpt2", "gpt-2"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact"), "digits"),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "smaug-bpe"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), "qwen2"),
}

#: Tokens that end an assistant turn in the chat formats we know.
CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>", "<|end|>")

#: The template used when a model brings none (ChatML, as SmolLM2 and Qwen use).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CONTROL = 3  # llama.cpp token types
_USER_DEFINED = 4


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


_CHAR_OF_BYTE: Dict[int, str] = _bytes_to_unicode()
_BYTE_OF_CHAR: Dict[str, int] = {c: b for b, c in _CHAR_OF_BYTE.items()}
_ALPHABET: FrozenSet[str] = frozenset(_BYTE_OF_CHAR)


def _pre_tokenizer(pre: str) -> Any:
    """The ``tokenizers`` pre-tokenizer for a ``tokenizer.ggml.pre`` value."""
    family = PRE_TOKENIZER_FAMILIES.get(pre)
    if family is None:
        raise ModelLoadError(
            f"unknown tokenizer.ggml.pre {pre!r}: supported are {', '.join(sorted(PRE_TOKENIZER_FAMILIES))}"
        )
    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if family == "digits":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    split = _LLAMA3_SPLIT if family == "llama3" else _QWEN2_SPLIT
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _typed_list(md: Mapping[str, Any], key: str, kind: type) -> List[Any]:
    """A list-valued metadata key whose items all have one type."""
    value = md.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) for v in value):
        raise ModelLoadError(f"GGUF key {key!r} must be a list of {kind.__name__}, got {type(value).__name__}")
    return list(value)


def _optional_id(md: Mapping[str, Any], key: str, size: int) -> Optional[int]:
    """A token id key, checked against the vocabulary size; None when absent."""
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ModelLoadError(f"GGUF key {key!r} = {value!r} is not a token id below {size}")
    return value


def _token_text(value: Any) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A byte-level BPE tokenizer with the model's chat template and stop tokens."""

    def __init__(self, backend: _Backend, bos_token: Optional[str], eos_token: Optional[str],
                 chat_template: Optional[str], extra_stop_ids: Iterable[int] = ()) -> None:
        """Wrap a ready ``tokenizers.Tokenizer``; prefer the ``from_*`` constructors."""
        self._backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_id: Optional[int] = backend.token_to_id(bos_token) if bos_token else None
        self.eos_id: Optional[int] = backend.token_to_id(eos_token) if eos_token else None
        added = backend.get_added_tokens_decoder()
        self.special_ids: FrozenSet[int] = frozenset(i for i, t in added.items() if t.special)
        stops = {i for i in extra_stop_ids if 0 <= i < self.vocab_size} | {self.eos_id}
        stops.update(backend.token_to_id(t) for t in CHAT_END_TOKENS)
        self.stop_ids: FrozenSet[int] = frozenset(i for i in stops if i is not None)
        #: True when the template is our ChatML fallback rather than the model's own.
        self.chat_template_is_fallback = not chat_template
        self.chat_template: str = chat_template or CHATML_TEMPLATE
        try:   # compiled here so a template that does not parse fails at load
            compile_template(self.chat_template)
        except Exception as exc:   # jinja2.TemplateError, RecursionError on absurd nesting
            raise ModelLoadError(f"chat template does not compile ({type(exc).__name__}: {exc})") from exc
        self._renderer = TemplateRenderer(self.chat_template)
        self._byte_level = isinstance(backend.decoder, decoders.ByteLevel)
        self._bytes_cache: Dict[int, bytes] = {}

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any]) -> "Tokenizer":
        """Build from GGUF ``tokenizer.*`` keys (values as ``ReaderField.contents()`` gives them)."""
        model = md.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedModelError(f"tokenizer.ggml.model {model!r} is not supported (only byte-level 'gpt2')")
        pre = md.get("tokenizer.ggml.pre", "default")
        if not isinstance(pre, str):
            raise ModelLoadError(f"tokenizer.ggml.pre must be a string, got {pre!r}")
        pre_tok = _pre_tokenizer(pre)
        tokens = _typed_list(md, "tokenizer.ggml.tokens", str)
        types = _typed_list(md, "tokenizer.ggml.token_type", int) if "tokenizer.ggml.token_type" in md else []
        if types and len(types) != len(tokens):
            raise ModelLoadError(f"{len(types)} token types for {len(tokens)} tokens")
        merges = [tuple(m.split(" ")) for m in _typed_list(md, "tokenizer.ggml.merges", str)]
        for m in merges:
            if len(m) != 2:
                raise ModelLoadError(f"malformed merge {' '.join(m)!r} (want two tokens separated by one space)")
        # A token spelled outside GPT-2's byte alphabet is stored as raw text: respell it.
        vocab = {
            t if _ALPHABET.issuperset(t) else "".join(_CHAR_OF_BYTE[b] for b in t.encode()): i
            for i, t in enumerate(tokens)
        }
        try:  # the Rust side rejects merges naming unknown tokens
            ignore_merges = PRE_TOKENIZER_FAMILIES[pre] == "llama3"  # match whole words first, as Llama 3 does
            backend = _Backend(BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore_merges))
        except Exception as exc:
            raise ModelLoadError(f"GGUF tokenizer is inconsistent: {exc}") from exc
        if PRE_TOKENIZER_FAMILIES[pre] == "qwen2":
            backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tok
        backend.decoder = decoders.ByteLevel()
        # Control tokens are matched whole inside text; one spelled outside the byte alphabet
        # is a llama.cpp mislabel (transformers skips those too).
        specials = [t for t, k in zip(tokens, types) if k == _CONTROL and _ALPHABET.issuperset(t)]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED]
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        size = len(tokens)
        bos_id = _optional_id(md, "tokenizer.ggml.bos_token_id", size)
        eos_id = _optional_id(md, "tokenizer.ggml.eos_token_id", size)
        bos = tokens[bos_id] if bos_id is not None else None
        if md.get("tokenizer.ggml.add_bos_token") is True and bos is not None and bos_id is not None:
            backend.post_processor = _prepend_bos(bos, bos_id)
        template = md.get("tokenizer.chat_template")
        if template is not None and not isinstance(template, str):
            raise ModelLoadError(f"tokenizer.chat_template must be a string, got {type(template).__name__}")
        return cls(backend, bos, tokens[eos_id] if eos_id is not None else None, template)

    @classmethod
    def from_hf_folder(cls, folder: "os.PathLike[str] | str") -> "Tokenizer":
        """Build a tokenizer from a model folder.

        From ``tokenizer.json`` and, when present, ``tokenizer_config.json``,
        ``chat_template.jinja`` (which wins over the config's template) and
        ``generation_config.json`` (its ``eos_token_id`` list adds stop ids).
        """
        folder = os.fspath(folder)
        path = os.path.join(folder, "tokenizer.json")
        if os.path.lexists(path):
            regular_size(path, "tokenizer file")   # tokenizers would read a FIFO or /dev/zero forever
        try:
            backend = _Backend.from_file(path)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load tokenizer ({type(exc).__name__}: {exc})") from exc
        config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja_path = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as fh:
                template = fh.read()
        if template is not None and not isinstance(template, str):
            raise ModelLoadError(f"{folder}: chat_template must be a string, got {type(template).__name__}")
        bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        bos_id = backend.token_to_id(bos) if bos else None
        if config.get("add_bos_token") is True and bos and bos_id is not None and backend.post_processor is None:
            backend.post_processor = _prepend_bos(bos, bos_id)
        gen_eos = _read_json(os.path.join(folder, "generation_config.json")).get("eos_token_id")
        extra = gen_eos if isinstance(gen_eos, list) else [gen_eos] if isinstance(gen_eos, int) else []
        return cls(backend, bos, eos, template, [i for i in extra if isinstance(i, int)])

    def save_hf_folder(self, folder: "os.PathLike[str] | str") -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` that :meth:`from_hf_folder` reads back."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self._backend.save(os.path.join(folder, "tokenizer.json"))
        config = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "chat_template": None if self.chat_template_is_fallback else self.chat_template,
        }
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh, ensure_ascii=False, indent=1)

    # -- text <-> ids ---------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        """Token ids of ``text``; special tokens written in it are recognised.

        BOS is prepended only when the model asks for it (``add_bos_token``)
        and ``add_special_tokens`` is true. Chat prompts already hold their
        markers, so the default is False.
        """
        if not isinstance(text, str):
            raise InvalidRequest(f"text must be a str, got {type(text).__name__}")
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; bytes that do not form UTF-8 become U+FFFD."""
        ids = [self._check_id(i) for i in ids]
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of ``token_id`` (byte-level spelling, e.g. ``'Ġworld'``)."""
        token = self._backend.id_to_token(self._check_id(token_id))
        if token is None:  # a hole in the id space
            raise InvalidRequest(f"token id {token_id} has no vocabulary entry")
        return token

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of a vocabulary entry, or None."""
        return self._backend.token_to_id(token)

    def byte_token_ids(self) -> List[int]:
        """Ids of the single-byte tokens (256 in a byte-level BPE; none otherwise)."""
        if not self._byte_level:
            return []
        ids = (self._backend.token_to_id(_CHAR_OF_BYTE[b]) for b in range(256))
        return sorted(i for i in ids if i is not None)

    def stream(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        """A fresh incremental decoder for one generation."""
        return StreamDecoder(self, skip_special_tokens)

    @property
    def backend(self) -> _Backend:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    def _check_id(self, token_id: int) -> int:
        if isinstance(token_id, bool) or not 0 <= int(token_id) < self.vocab_size:
            raise InvalidRequest(f"token id {token_id!r} is outside the vocabulary (size {self.vocab_size})")
        return int(token_id)

    def _token_bytes(self, token_id: int) -> bytes:
        """The bytes a token contributes to the text, as the ByteLevel decoder maps them."""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            token = self.id_to_token(token_id)
            try:
                cached = bytes(_BYTE_OF_CHAR[c] for c in token)
            except KeyError:  # like the Rust decoder: a token outside the alphabet stays as it is
                cached = token.encode("utf-8")
            self._bytes_cache[token_id] = cached
        return cached

    # -- chat -----------------------------------------------------------------------

    def apply_chat_template(self, messages: List[Dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` with the model's chat template (ChatML when it has none).

        The template runs in jinja2's immutable sandbox with transformers'
        settings (``trim_blocks``, ``lstrip_blocks``, ``raise_exception``,
        ``bos_token``/``eos_token``), in a worker process that bounds its
        time, output and memory (runtime/chat_template.py). Malformed
        messages and errors the template raises become
        :class:`~edgellm_ros.errors.InvalidRequest`; a bound passed,
        :class:`~edgellm_ros.errors.TemplateLimitExceeded`.
        """
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest(f"messages must be a non-empty list, got {messages!r}")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise InvalidRequest(f"each message needs a 'role' string and a 'content', got {m!r}")
        return self._renderer.render({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "tools": None,
            "documents": None,
        })

    def close(self) -> None:
        """End the chat template's worker process (a later render starts it again)."""
        self._renderer.close()


class StreamDecoder:
    """Incremental detokenizer: :meth:`push` returns each token's new text.

    Byte-level vocabularies are decoded byte-exactly: each token's bytes go
    through an incremental UTF-8 decoder, so an emoji split over several
    tokens is held back until its last byte arrives, the work per token is
    constant, and the concatenated deltas plus :meth:`flush` equal
    :meth:`Tokenizer.decode` of all ids. Other decoders (e.g. sentencepiece
    ``Metaspace``) fall back to decoding a short window of recent ids.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        """Start an empty stream over ``tokenizer``."""
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._window: List[int] = []  # fallback only: ids since the last emitted boundary
        self._read = 0  # fallback only: how many of _window are already emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a character is unfinished)."""
        token_id = self._tok._check_id(token_id)
        if self._skip and token_id in self._tok.special_ids:
            return ""
        if self._tok._byte_level:
            return self._utf8.decode(self._tok._token_bytes(token_id), final=False)
        self._window.append(token_id)
        before = self._tok.decode(self._window[: self._read])
        after = self._tok.decode(self._window)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # wait: the last token ends inside a character
        self._window = self._window[self._read:]
        self._read = len(self._window)
        return after[len(before):]

    def flush(self) -> str:
        """The text still held back (U+FFFD for an incomplete character) and reset."""
        if self._tok._byte_level:
            return self._utf8.decode(b"", final=True)
        before = self._tok.decode(self._window[: self._read])
        rest = self._tok.decode(self._window)[len(before):]
        self._window, self._read = [], 0
        return rest


def _prepend_bos(bos: str, bos_id: int) -> Any:
    """A post-processor that puts BOS before the text (used when add_special_tokens is true)."""
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])


def _read_json(path: str) -> Dict[str, Any]:
    """A JSON object file, or {} when absent; corrupt files raise ModelLoadError."""
    from ..loaders.jsonfile import read_json_object
    return read_json_object(path, required=False)
