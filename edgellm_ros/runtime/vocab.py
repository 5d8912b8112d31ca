"""Vocabulary reduction: the token ids a deployment's LM head keeps.

TensorRT-Edge-LLM's technique: the embedding table stays whole (a prompt may
hold any token), the LM head keeps K of the V rows, and the graph writes the
K logits back at their model ids of a [L, V] output whose other entries are
-inf (export/lm_head.py), so sampling, constraints, EAGLE verification, the
tokenizer and the stream all keep working in model ids.

The setting ``vocab_reduction`` names a file of token ids: one JSON list of
integers (``[0, 1, 2, 17, ...]``, any order). ``"shipped"`` names the set that
ships for the embedded default model (vocab/, made by
tools/make_vocab_reduction.py; docs/VOCAB_REDUCTION.md). The set must hold
the tokenizer's end tokens and its 256 byte tokens (so any text can still be
written, and a grammar never meets a dead end). The engine folder keeps a
copy, ``vocab_<digest>.json``, named by the hash of the sorted ids, and one
graph family per set (engine_dir.family_suffix).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional

import numpy as np

from ..errors import ConfigError, ModelLoadError
from ..loaders.jsonfile import read_json
from .resources import share_dir

FIELD = "vocab_reduction"
#: The setting that names the shipped set of the embedded default model.
SHIPPED = "shipped"
#: The shipped set, relative to the package share.
SHIPPED_VOCAB = os.path.join("vocab", "smollm2-135m-instruct.json")
#: The largest id file read (a whole 256k vocabulary as JSON is ~2 MB).
MAX_BYTES = 8 * 2**20


@dataclass(frozen=True)
class VocabReduction:
    """A checked, sorted set of kept token ids."""

    ids: np.ndarray       # [K] int64, ascending model ids
    source: str           # the file it was read from

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of canonical_json(), 16 hex digits."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def size(self) -> int:
        """K, the LM head's rows."""
        return int(self.ids.shape[0])

    @property
    def file_name(self) -> str:
        """Its copy's name in the engine folder."""
        return f"vocab_{self.digest}.json"

    def canonical_json(self) -> str:
        return json.dumps(self.ids.tolist(), separators=(",", ":"))

    def mask(self, vocab_size: int) -> np.ndarray:
        """[V] bool, True on kept ids."""
        m = np.zeros(vocab_size, bool)
        m[self.ids] = True
        return m

    def manifest_entry(self) -> dict:
        """What a graph entry of the manifest records of the set."""
        return {"sha256": self.digest, "kept": self.size, "file": self.file_name}


def resolve_vocab_path(setting: str, model: str) -> str:
    """The id file the ``vocab_reduction`` setting names ("" = no reduction).

    "shipped" is the embedded default model's set (a ConfigError for another model:
    its ids mean other tokens); relative paths resolve against the working folder.
    """
    if not setting:
        return ""
    if setting == SHIPPED:
        if model:
            raise ConfigError(f"{FIELD} {SHIPPED!r} is the embedded default model's set; model "
                              f"{model!r} needs a file of its own token ids")
        return os.path.join(share_dir(), SHIPPED_VOCAB)
    return os.path.abspath(os.path.expanduser(setting))


def read_token_ids(path: str) -> List[int]:
    """The JSON list of integers in ``path``; ConfigError naming the file, the field and the value."""
    where = f"{FIELD} {path!r}"
    try:
        data = read_json(path, MAX_BYTES, "token id file")
    except ModelLoadError as exc:   # missing, not a regular file, too large, not JSON
        raise ConfigError(f"{FIELD}: {exc}; expected one JSON list of token ids") from exc
    if not isinstance(data, list):
        raise ConfigError(f"{where}: expected one JSON list of token ids, got a {type(data).__name__}")
    if not data:
        raise ConfigError(f"{where}: the list of token ids is empty")
    for i, v in enumerate(data):
        if type(v) is not int:
            raise ConfigError(f"{where}: entry {i} = {v!r} is not an integer token id")
    return data


def load_vocab_reduction(path: str, vocab_size: int, required: Iterable[int] = ()) -> VocabReduction:
    """Read and check the id file at ``path`` against a vocabulary of ``vocab_size``.

    Refused (ConfigError naming the file, the field and the value): a missing or
    non-regular file, anything but a non-empty JSON list of integers, an id outside
    [0, vocab_size), an id given twice, a set that lacks one of ``required``
    (the end tokens and byte tokens: :func:`required_ids`), or one that keeps
    the whole vocabulary (nothing to reduce).
    """
    ids = read_token_ids(path)
    where = f"{FIELD} {path!r}"
    arr = np.asarray(ids, np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        raise ConfigError(f"{where}: token id {ids[bad[0]]} (entry {bad[0]}) is outside the model's "
                          f"vocabulary [0, {vocab_size})")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{where}: token id {int(uniq[counts > 1][0])} is listed "
                          f"{int(counts[counts > 1][0])} times")
    missing = sorted(set(int(i) for i in required) - set(uniq.tolist()))
    if missing:
        raise ConfigError(f"{where}: lacks {len(missing)} token(s) the model needs (end tokens and the "
                          f"256 byte tokens), e.g. {missing[:8]}")
    if uniq.size == vocab_size:
        raise ConfigError(f"{where}: keeps all {vocab_size} tokens; leave {FIELD} empty instead")
    return VocabReduction(ids=uniq, source=path)


def required_ids(tokenizer: object) -> List[int]:
    """The ids every kept set must hold: the end tokens and the byte tokens of ``tokenizer``."""
    stop = list(getattr(tokenizer, "stop_ids", ()))
    byte_ids = getattr(tokenizer, "byte_token_ids", None)
    return sorted(set(stop) | set(byte_ids() if byte_ids is not None else ()))


def read_engine_vocab(folder: str, entry: Optional[dict], vocab_size: int) -> Optional[VocabReduction]:
    """The set a manifest graph entry names, read back from the engine folder (None: full head)."""
    if not entry:
        return None
    red = load_vocab_reduction(os.path.join(folder, entry["file"]), vocab_size)
    if red.digest != entry["sha256"]:
        raise ConfigError(f"{FIELD}: {entry['file']} in {folder} holds set {red.digest}, the manifest "
                          f"says {entry['sha256']}")
    return red
